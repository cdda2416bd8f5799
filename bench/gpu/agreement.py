"""Stored targets against the teacher recomputed on what the training loader serves.

Dataset Reinforcement's premise (paper Sec. 2) is that the stored top-k is what the teacher
would say about the view the student sees. The teacher pass renders its views from images
decoded once (`dalidr.teacher.views`); the training loader replays each view on its own
(`dalidr.training.dali_loader`). On a GPU both decode with nvJPEG and run DALI's GPU operators, so
any
drift between the two paths shows here: a store is made with `dalidr.teacher.reinforce` on the
device, `ReinforcedLoader` serves its views on the same device at the teacher's size and
normalisation, the same teacher (seeded random weights, saved as a checkpoint) labels the
served images through the same `Labeller`, and the two are compared per view:

- top-1 agreement: the stored top-1 class equals the recomputed ensemble's argmax;
- KL(stored || recomputed): the stored sparse target (renormalised top-k, as the loader serves
  it) against the recomputed full mean softmax, in nats, mean and max over views;
- the stored top-k probabilities against the recomputed ones for the same classes (max |diff|).

Run from the repository root: `python bench/gpu/agreement.py --device cuda` (`--quick` for a
CPU smoke run). JSON goes to bench/results/agreement-<cpu|gpu>.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch

from bench.machine import describe_machine, summary
from dalidr.augment.recipe import recipe
from dalidr.data.sample_data import make_corpus
from dalidr.teacher import build_teacher
from dalidr.teacher.reinforce import (
    CompileMode,
    Labeller,
    ReinforceConfig,
    forward_settings,
    reinforce,
)
from dalidr.training.loader import LoaderConfig, ReinforcedLoader, Targets

__all__ = ["parse_args", "main"]

_DEFAULTS = {
    "cuda": {"teacher": "resnet50", "size": 224, "images": 256, "slots": 4, "batch": 128},
    "cpu": {"teacher": "resnet10t", "size": 64, "images": 24, "slots": 2, "batch": 16},
}
TOP1_TARGET = 0.99  # the stored top-1 must be the teacher's top-1 on the served view


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--teacher", help="timm name (seeded random weights): CPU resnet10t, "
                        "GPU resnet50")
    parser.add_argument("--size", type=int, help="view side of the teacher and of the loader")
    parser.add_argument("--images", type=int)
    parser.add_argument("--slots", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--threads", type=int, default=4, help="DALI threads")
    parser.add_argument("--classes", type=int, default=3, help="the corpus has 3 classes")
    parser.add_argument("--quick", action="store_true", help="CPU-sized smoke run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    for key, value in _DEFAULTS[kind].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick:
        args.images, args.slots, args.batch = min(args.images, 24), min(args.slots, 2), 8
    args.kind = kind
    args.out = args.out or Path(f"bench/results/agreement-{'gpu' if kind == 'cuda' else 'cpu'}"
                                ".json")
    return args


def _checkpoint(name: str, classes: int, folder: Path) -> str:
    """A seeded random-weight member saved as safetensors: both passes load the same teacher."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=classes)
    path = folder / f"{name}.safetensors"
    save_file(model.state_dict(), str(path))
    return f"{name}@{path}"


def compare(stored_classes: np.ndarray, stored_probs: np.ndarray,
            recomputed: np.ndarray) -> dict[str, Any]:
    """Per-view agreement of sparse stored targets [N, k] with full recomputed probs [N, C]."""
    rows = np.arange(len(stored_classes))
    top1 = stored_classes[:, 0] == recomputed.argmax(axis=1)
    q = np.clip(recomputed[rows[:, None], stored_classes], 1e-12, None)
    p = np.clip(stored_probs, 0.0, None)
    kl = np.where(p > 0, p * np.log(np.clip(p, 1e-12, None) / q), 0.0).sum(axis=1)
    renorm = q / q.sum(axis=1, keepdims=True)
    return {"views": int(len(rows)), "top1_agreement": float(top1.mean()),
            "kl_mean": float(kl.mean()), "kl_max": float(kl.max()),
            "topk_prob_max_abs_diff": float(np.abs(renorm - p).max())}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    machine = describe_machine()
    print(summary(machine))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs CUDA, and torch sees no GPU")
    chosen = recipe("rrc+ra/re", output_size=args.size, teacher_size=args.size)
    with tempfile.TemporaryDirectory(prefix="dalidr-agreement-") as tmp:
        work = Path(tmp)
        make_corpus(work / "images", args.images, seed=3)
        teacher = _checkpoint(args.teacher, args.classes, work)
        config = ReinforceConfig(
            data=work / "images", teacher=teacher, recipe=chosen, slots=args.slots,
            k=args.classes, out=str(work / "store.zarr"), batch_size=args.batch,
            block_size=max(args.images // 4, 1), device=str(device), num_threads=args.threads,
            compile=CompileMode.OFF, progress=False)
        t0 = time.perf_counter()
        reinforce(config, 0, 1)
        reinforce_s = time.perf_counter() - t0
        ensemble = build_teacher(teacher, args.classes, size=args.size)
        labeller = Labeller(ensemble, device, args.classes, args.batch, CompileMode.OFF)
        device_id = (device.index or 0) if device.type == "cuda" else None
        loader_config = LoaderConfig(batch_size=args.batch, targets=Targets.SPARSE,
                                     device_id=device_id, num_threads=args.threads)
        classes, probs, recomputed = [], [], []
        with ReinforcedLoader(config.out, work / "images", loader_config) as loader, \
                forward_settings(device):
            for images, targets in loader:
                with torch.inference_mode(), torch.autocast(
                        "cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    logits = labeller.forward([images])
                recomputed.append(torch.softmax(logits.float(), dim=-1).mean(0).cpu().numpy())
                classes.append(targets.indices.cpu().numpy())
                probs.append(targets.probs.cpu().numpy())
    result = compare(np.concatenate(classes), np.concatenate(probs), np.concatenate(recomputed))
    result["passed"] = bool(result["top1_agreement"] >= TOP1_TARGET)
    report = {
        "benchmark": "agreement",
        "command": shlex.join([sys.executable, sys.argv[0],
                               *(sys.argv[1:] if argv is None else argv)]),
        "device": str(device), "teacher": f"{args.teacher} (seeded random weights)",
        "size": args.size, "images": args.images, "slots": args.slots, "batch": args.batch,
        "recipe": chosen.to_dict(), "top1_target": TOP1_TARGET, "results": result,
        "reinforce_s": reinforce_s, "wall_s": time.perf_counter() - started, "machine": machine,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"stored vs recomputed on the loader's output ({device}, {result['views']} views): "
          f"top-1 agreement {result['top1_agreement']:.4f} (target >= {TOP1_TARGET}), KL mean "
          f"{result['kl_mean']:.2e} max {result['kl_max']:.2e} nats, top-k prob max |diff| "
          f"{result['topk_prob_max_abs_diff']:.2e} -> {args.out}")
    return report


if __name__ == "__main__":
    main()
