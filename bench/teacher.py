"""Teacher-pass throughput: the full `dalidr reinforce` pass against the bare ensemble forward.

Dataset Reinforcement's one-time cost is the teacher pass (paper Sec. 2.2: 2205 A100-hours for
ImageNet+). Its data path (read, decode once per image, replay every view at each member's
size) should hide behind the teacher's forward, and the forward should run near the device's
peak. Measured in one run, on real JPEGs (`dalidr.data.sample_data.make_corpus`):

1. full pass: `dalidr.teacher.reinforce.reinforce` into a fresh store, in steady state (views
   labelled after the first batch over the time they took: no graph building, no
   torch.compile, no first-batch latency);
2. bare forward: the same `Labeller` (normalise, forward, fused top-k) on pre-made tensors of
   the same batch size and view sizes, under the same torch settings (`forward_settings`);
3. FLOPs per view of the ensemble (`torch.utils.flop_counter`, on the meta device), and on a
   GPU the achieved fraction of its dense bf16 peak;
4. the projected cost of the paper's ImageNet+ (1.28 M images x 400 views; the paper's four
   IG-ResNeXt-101 teachers 32x8d/16d/32d/48d, and four 32x8d) in H100-hours, at the fraction
   measured here (GPU), at the paper's ~12 % and at the 40 % target.

Each throughput is the median over `--repeats` runs after one untimed warm-up run. On CPU the
data path and the forward share the cores, so the ratio says how much the data path costs
there rather than whether it hides. Run from the repository root: `python bench/teacher.py`
(`--quick` for a smoke test); the JSON goes to bench/results/teacher-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.machine import describe_machine, summary
from dalidr.augment.recipe import load_recipe
from dalidr.data.sample_data import make_corpus
from dalidr.teacher import build_teacher, parse_teacher
from dalidr.teacher.reinforce import (
    CompileMode,
    Labeller,
    ReinforceConfig,
    forward_settings,
    reinforce,
)

# Dense bf16 tensor-core peak, FLOP/s, by a substring of the device name (no sparsity).
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12, "L40S": 362e12,
             "A10G": 70e12, "L4": 121e12, "B200": 2250e12}
# ImageNet+ (paper Sec. 3): images, views per image, the paper's wall-clock cost.
IMAGENET_IMAGES, IMAGENET_VIEWS, PAPER_A100_HOURS = 1_281_167, 400, 2205
PAPER_TEACHERS = ("resnext101_32x8d", "resnext101_32x16d", "resnext101_32x32d",
                  "resnext101_32x48d")
PAPER_FRACTION, TARGET_FRACTION = 0.12, 0.40

_DEFAULTS = {
    "cpu": {"teacher": "resnet18,resnet18", "teacher_size": 112, "images": 48, "slots": 4,
            "batch": 32},
    "cuda": {"teacher": ",".join(["resnext101_32x8d"] * 4), "teacher_size": None,
             "images": 512, "slots": 16, "batch": 256},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--teacher", help="ensemble (default: CPU 2x resnet18, GPU 4x "
                        "resnext101_32x8d), random weights")
    parser.add_argument("--teacher-size", type=int, help="view side for every member "
                        "(default: CPU 112, GPU each member's own)")
    parser.add_argument("--recipe", default="rrc+ra/re")
    parser.add_argument("--images", type=int, help="corpus size (CPU 48, GPU 512)")
    parser.add_argument("--slots", type=int, help="views per image (CPU 4, GPU 16)")
    parser.add_argument("--batch", type=int, help="views per batch (CPU 32, GPU 256)")
    parser.add_argument("--threads", type=int, default=None,
                        help="DALI threads (default: 1 on CPU, 8 on GPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--forward-iters", type=int, default=10,
                        help="batches per timed bare-forward run")
    parser.add_argument("--compile", choices=[m.value for m in CompileMode], default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--out", help="JSON result (default: bench/results/teacher-<dev>.json)")
    args = parser.parse_args(argv)
    kind = "cuda" if (args.device == "auto" and torch.cuda.is_available()) or \
        args.device.startswith("cuda") else "cpu"
    args.kind = kind
    for key, value in _DEFAULTS[kind].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads is None:
        args.threads = 1 if kind == "cpu" else 8
    if args.quick:
        args.images, args.slots, args.repeats, args.forward_iters = 16, 2, 1, 2
    args.out = args.out or f"bench/results/teacher-{kind}.json"
    return args


def flops_per_view(names: list[str], sizes: list[int], num_classes: int = 1000) -> float:
    """Forward FLOPs of one view through every member (meta device: no memory, no time)."""
    import timm

    total = 0
    for name, size in zip(names, sizes, strict=True):
        with torch.device("meta"):
            if timm.is_model(name):
                model = timm.create_model(name, pretrained=False, num_classes=num_classes)
            else:  # e.g. resnext101_32x48d, which timm no longer registers
                model = _resnext(name, num_classes)
            with FlopCounterMode(display=False) as counter:
                model(torch.empty(1, 3, size, size))
        total += counter.get_total_flops()
    return float(total)


def _resnext(name: str, num_classes: int) -> torch.nn.Module:
    from timm.models.resnet import Bottleneck, ResNet

    width = int(name.rsplit("x", 1)[1].rstrip("d"))  # resnext101_32x48d -> 48
    return ResNet(block=Bottleneck, layers=(3, 4, 23, 3), cardinality=32, base_width=width,
                  num_classes=num_classes)


def bf16_peak(device: torch.device) -> tuple[str | None, float | None]:
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    for key in sorted(BF16_PEAK, key=len, reverse=True):
        if key in name:
            return name, BF16_PEAK[key]
    return name, None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_pass(config: ReinforceConfig, work: Path, repeats: int) -> dict[str, Any]:
    """Steady-state views/s of the full pass: one untimed warm-up run, then the median."""
    runs = []
    for i in range(repeats + 1):
        out = work / f"store-{i}"
        report = reinforce(ReinforceConfig(**{**config.__dict__, "out": str(out)}), 0, 1)
        shutil.rmtree(out)
        if i:
            runs.append(report.steady_views / report.steady_seconds)
    return {"runs": runs, "views_per_s": statistics.median(runs),
            "views_per_run": report.views, "seconds_last_run": report.seconds}


def measure_forward(config: ReinforceConfig, device: torch.device, iters: int,
                    repeats: int) -> dict[str, Any]:
    """Views/s of the bare Labeller on pre-made normalised tensors (same batch, same sizes)."""
    ensemble = build_teacher(config.teacher, 3, size=config.recipe.teacher_size,
                             random_seed=config.seed)
    labeller = Labeller(ensemble, device, config.k, config.batch_size, config.compile)
    g = torch.Generator(device="cpu").manual_seed(0)
    views = []
    for view in ensemble.views:
        x = torch.randn(config.batch_size, 3, view.size, view.size, generator=g).to(device)
        views.append(x.contiguous(memory_format=torch.channels_last) if device.type == "cuda"
                     else x)
    runs = []
    with forward_settings(device):
        for _ in range(3):  # warm-up (and compilation)
            labeller.label(views)
        _sync(device)
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(iters):
                classes, _probs = labeller.label(views)
            classes.cpu()
            _sync(device)
            runs.append(iters * config.batch_size / (time.perf_counter() - start))
    return {"runs": runs, "views_per_s": statistics.median(runs),
            "torch_threads_during_pass": _threads_in_pass(device)}


def _threads_in_pass(device: torch.device) -> int:
    with forward_settings(device):
        return torch.get_num_threads()


def projections(fraction_here: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, names in (("paper_4x_ig_resnext101_8d_16d_32d_48d", list(PAPER_TEACHERS)),
                         ("4x_resnext101_32x8d", ["resnext101_32x8d"] * 4)):
        flops = flops_per_view(names, [224] * len(names))
        total = flops * IMAGENET_IMAGES * IMAGENET_VIEWS
        at = {"paper_12pct": PAPER_FRACTION, "target_40pct": TARGET_FRACTION}
        if fraction_here is not None:
            at["measured_here"] = fraction_here
        out[label] = {
            "flops_per_view": flops,
            "total_flops": total,
            "h100_hours": {k: total / (f * BF16_PEAK["H100"]) / 3600 for k, f in at.items()},
            "paper_a100_fraction_of_peak": total / (PAPER_A100_HOURS * 3600 * BF16_PEAK["A100"]),
        }
    return out


def print_table(result: dict[str, Any]) -> None:
    r = result["results"]
    print(f"\nteacher pass on {result['device']}: {result['teacher']} "
          f"({', '.join(str(s) for s in result['view_sizes'])} px), recipe {result['recipe']}, "
          f"batch {result['batch']}")
    print(f"{'measure':<44}{'value':>16}")
    print(f"{'full pass (views/s, median)':<44}{r['full_pass']['views_per_s']:>16.1f}")
    print(f"{'bare ensemble forward (views/s, median)':<44}"
          f"{r['bare_forward']['views_per_s']:>16.1f}")
    print(f"{'ratio full / bare (target >= 0.95)':<44}{result['ratio_full_vs_bare']:>16.3f}")
    print(f"{'ensemble GFLOPs per view':<44}{r['flops_per_view'] / 1e9:>16.3f}")
    achieved = r["achieved_flops_per_s"]
    print(f"{'achieved TFLOP/s (full pass)':<44}{achieved / 1e12:>16.4f}")
    if r["fraction_of_bf16_peak"] is not None:
        print(f"{'fraction of bf16 peak (target >= 0.40)':<44}"
              f"{r['fraction_of_bf16_peak']:>16.3f}")
    for label, p in result["projections"].items():
        for at, hours in p["h100_hours"].items():
            print(f"{'ImageNet+ ' + label[:22] + ' @' + at:<44}{hours:>13.0f} H100-h")
        print(f"{'  (paper 2205 A100-h = fraction of peak)':<44}"
              f"{p['paper_a100_fraction_of_peak']:>16.3f}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    machine = describe_machine()
    print(summary(machine))
    device = torch.device("cuda" if args.kind == "cuda" else "cpu")
    recipe = load_recipe(args.recipe)
    if args.teacher_size:
        recipe = recipe.replace(teacher_size=args.teacher_size)
    with tempfile.TemporaryDirectory(prefix="dalidr-bench-teacher-") as tmp:
        work = Path(tmp)
        make_corpus(work / "images", args.images, seed=0)
        config = ReinforceConfig(
            data=work / "images", teacher=args.teacher, recipe=recipe, slots=args.slots, k=3,
            out="", batch_size=args.batch, block_size=max(args.images // 4, 1),
            device=str(device), num_threads=args.threads, compile=CompileMode(args.compile),
            random_teacher=True, progress=False)
        full = measure_pass(config, work, args.repeats)
        print(f"full pass: {full['views_per_s']:.1f} views/s")
        bare = measure_forward(config, device, args.forward_iters, args.repeats)
        print(f"bare forward: {bare['views_per_s']:.1f} views/s")
    ensemble = build_teacher(args.teacher, 3, size=recipe.teacher_size, random_seed=0)
    sizes = [m.view.size for m in ensemble.members]
    names = [s.name for s in parse_teacher(args.teacher)]
    flops = flops_per_view(names, sizes)
    gpu_name, peak = bf16_peak(device)
    achieved = flops * full["views_per_s"]
    fraction = achieved / peak if peak else None
    result = {
        "benchmark": "teacher",
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "device": gpu_name or "cpu",
        "teacher": args.teacher,
        "view_sizes": sizes,
        "recipe": args.recipe,
        "batch": args.batch,
        "images": args.images,
        "slots": args.slots,
        "dali_threads": args.threads,
        "compile": args.compile,
        "quick": args.quick,
        "timing": {"warmup_runs": 1, "repeats": args.repeats, "statistic": "median",
                   "full_pass": "steady state: views after the first batch / their time",
                   "forward_iters": args.forward_iters},
        "results": {"full_pass": full, "bare_forward": bare, "flops_per_view": flops,
                    "achieved_flops_per_s": achieved, "bf16_peak_flops_per_s": peak,
                    "fraction_of_bf16_peak": fraction},
        "ratio_full_vs_bare": full["views_per_s"] / bare["views_per_s"],
        "projections": projections(fraction),
        "machine": machine,
    }
    print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
