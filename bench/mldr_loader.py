"""The paper's published-reinforcement loading path against dalidr's loader on the imported store.

apple/ml-dr trains on its reinforcements by opening one `{index}.pth.tar` per sample, unpickling
it, picking one stored view, decoding the JPEG with PIL and reapplying the view's parameters
with torchvision on CPU DataLoader workers (its `ReinforcedDataset`). `dalidr import-mldr`
converts the same files into a store that `ReinforcedLoader` replays with DALI. Measured in one
run, on the same machine and the same real JPEGs (ImageNet-like sizes, `make_corpus`):

1. source: a reinforcement directory in the paper's format (`tests/mldr_builder.py`: its
   RandAugment + RandomErasing + MixUp/CutMix config, `--slots` views of top-`--topk` per file,
   by default ImageNet+'s 400 of top-10, plain `torch.save` files as in ImageNet+; building
   it is untimed, about 15 s for 384 images on 2 cores), then `dalidr import-mldr` (timed
   once, reported);
2. paper: a torch `Dataset` that per sample loads its file (with dalidr's restricted unpickler:
   the paper's `torch.load` would trust the file), picks a random view, reapplies it with PIL and
   torchvision (crop-resize, flip, RandAugment, to_tensor, erase, normalise, MixUp, CutMix with
   the partner's own view) and densifies the top-k, through a `DataLoader` with one worker per
   core;
3. dalidr: `ReinforcedLoader` on the imported store (DALI CPU with one thread per core, or the
   GPU with `--device gpu`), dense targets.

Both yield normalised float [B, 3, S, S] images and dense [B, C] targets. The two loaders are
timed in interleaved rounds (the machine may be shared): each round takes `--warmup` batches,
then times `--batches` batches; the result is the median over `--repeats` rounds, with each
round's rate and the CPU share other processes took meanwhile. After each timed run the loader's
queued work (the DataLoader workers' prefetched batches, DALI's queue) drains before the next
loader is timed, so neither is timed while the other's background work takes the cores. Also
reported: source bytes against store bytes.
Run from the repository root: `python bench/mldr_loader.py` (`--quick` for a smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.utils.data import DataLoader, Dataset

from bench.machine import describe_machine, foreign_cpu_share, load_snapshot, summary
from dalidr.augment.replay import IMAGENET_MEAN, IMAGENET_STD
from dalidr.data.dataset import list_dataset
from dalidr.data.sample_data import make_corpus
from dalidr.mldr import ImportConfig, import_mldr, load_file
from dalidr.training.loader import LoaderConfig, ReinforcedLoader
from store.manifest import scan_manifest
from tests.mldr_builder import MldrSpec, write_mldr_dataset
from tests.mldr_reference import reapply

# ImageNet+ as published (paper Sec. 3: "top 10 sparse probabilities for 400 augmentations per
# training sample"): what each sample file holds, so the paper's path unpickles files of the
# real size (about 115 kB each here).
IMAGENET_PLUS_SLOTS = 400
IMAGENET_PLUS_TOPK = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=384, help="dataset size (default 384)")
    parser.add_argument("--size", type=int, default=224, help="output side (ImageNet+: 224)")
    parser.add_argument("--slots", type=int, default=IMAGENET_PLUS_SLOTS,
                        help=f"views per sample file (ImageNet+: {IMAGENET_PLUS_SLOTS})")
    parser.add_argument("--topk", type=int, default=IMAGENET_PLUS_TOPK,
                        help=f"teacher top-k per view (ImageNet+: {IMAGENET_PLUS_TOPK})")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=5, help="timed batches per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per round")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per loader")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="DataLoader workers and DALI threads (default: all cores)")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--workdir", default=None, help="where data is written (default: tmp)")
    parser.add_argument("--out", default=None,
                        help="JSON result (default bench/results/mldr-loader-<device>.json)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.slots, args.batch, args.batches, args.repeats = 48, 6, 16, 2, 1
    args.out = args.out or f"bench/results/mldr-loader-{args.device}.json"
    return args


# ----------------------------------------------------------------------------- the paper's path


class PaperDataset(Dataset):
    """The paper's ReinforcedDataset: a file per sample, one view reapplied with PIL/torchvision."""

    def __init__(self, rdata: Path, paths: list[Path], size: int, num_classes: int,
                 names: list[str], mixing: bool) -> None:
        self.rdata, self.paths, self.size = rdata, paths, size
        self.num_classes, self.names, self.mixing = num_classes, names, mixing
        self.mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
        self.std = torch.tensor(IMAGENET_STD)[:, None, None]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, views = load_file(self.rdata / f"{index}.pth.tar")
        view = views[random.randint(0, len(views) - 1)]
        image = reapply(self.paths, index, view["params"], self.mixing, self.names, self.size)
        image = (image - self.mean) / self.std  # mixing is linear: same as the paper's order
        probs, ids = view["prob"]
        target = torch.full((self.num_classes,), max(0.0, 1 - sum(probs)) / (
            self.num_classes - len(ids)))
        target[torch.tensor(ids)] = torch.tensor(probs)
        return image, target


# ----------------------------------------------------------------------------- timing


_DRAIN_MARGIN = 1.5  # sleep this many times the queued batches' time after a timed run


class _Timed:
    """A loader kept iterating across rounds: `time(n)` takes n batches, returns seconds.

    `queued` is how many batches it keeps preparing after a call returns (DataLoader workers'
    prefetch, DALI's queue): the next loader's round starts only once they are done, so neither
    loader's background work lands in the other's timing."""

    def __init__(self, make_iter, queued: int) -> None:  # type: ignore[no-untyped-def]
        self._make, self._it = make_iter, None
        self.queued = queued
        self.images = 0

    def _next(self) -> torch.Tensor:
        if self._it is None:
            self._it = iter(self._make())
        try:
            images, _ = next(self._it)
        except StopIteration:
            self._it = iter(self._make())
            images, _ = next(self._it)
        return images

    def time(self, count: int, device: str) -> float:
        start = time.perf_counter()
        for _ in range(count):
            images = self._next()
            self.images = len(images)
        if device == "gpu":
            torch.cuda.synchronize()
        return time.perf_counter() - start


_PREFETCH_FACTOR = 4  # batches each DataLoader worker prepares ahead


def _rounds(loaders: dict[str, _Timed], args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[float]] = {name: [] for name in loaders}
    shares: dict[str, list[float | None]] = {name: [] for name in loaders}
    for round_ in range(args.repeats + 1):  # round 0: start-up, untimed
        order = list(loaders)[round_ % len(loaders):] + list(loaders)[:round_ % len(loaders)]
        for name in order:
            loaders[name].time(args.warmup, args.device)
            before = load_snapshot()
            seconds = loaders[name].time(args.batches, args.device)
            if round_:
                runs[name].append(args.batches * loaders[name].images / seconds)
                shares[name].append(foreign_cpu_share(before, load_snapshot()))
            time.sleep(_DRAIN_MARGIN * loaders[name].queued * seconds / args.batches)
    return {name: {"images_per_s": statistics.median(runs[name]), "runs": runs[name],
                   "foreign_cpu_share": shares[name]} for name in loaders}


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    machine = describe_machine()
    print(summary(machine))
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dalidr-bench-mldr-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        make_corpus(workdir / "images", args.images, seed=0)
        listing = list_dataset(workdir / "images")
        manifest = scan_manifest(listing.root, listing.paths, listing.labels)
        spec = MldrSpec(size=args.size, slots=args.slots, topk=args.topk,
                        num_classes=args.num_classes, randaug_p=1.0, erase_p=0.25)
        write_mldr_dataset(workdir / "rdata", listing, manifest.image_hw, spec, seed=0)
        url = str(workdir / "store.zarr")
        start = time.perf_counter()
        report = import_mldr(ImportConfig(workdir / "rdata", workdir / "images", url,
                                          workers=args.workers, block_size=128,
                                          progress=False))
        import_s = time.perf_counter() - start
        names = ["random_resized_crop", "random_horizontal_flip", "rand_augment",
                 "random_erase", "mixup", "cutmix"]
        paper = PaperDataset(workdir / "rdata", [listing.root / p for p in listing.paths],
                             args.size, args.num_classes, names, mixing=True)
        config = LoaderConfig(batch_size=args.batch, num_threads=args.workers,
                              device_id=0 if args.device == "gpu" else None)
        ours = ReinforcedLoader(url, workdir / "images", config, manifest=manifest)
        loaders = {
            "paper": _Timed(lambda: DataLoader(paper, batch_size=args.batch, shuffle=True,
                                               num_workers=args.workers, drop_last=True,
                                               persistent_workers=True,
                                               prefetch_factor=_PREFETCH_FACTOR),
                           queued=args.workers * _PREFETCH_FACTOR),
            "dalidr": _Timed(lambda: ours, queued=config.prefetch_depth),
        }
        rates = _rounds(loaders, args)
        ours.close()
        results = {
            **rates,
            "ratio": rates["dalidr"]["images_per_s"] / rates["paper"]["images_per_s"],
            "source_bytes": report.source_bytes,
            "store_bytes": report.store_bytes,
            "size_ratio": report.source_bytes / max(report.store_bytes or 1, 1),
            "import_s": import_s,
            "import_samples_per_s": report.samples / import_s,
            "setup": {"images": args.images, "size": args.size, "slots": args.slots,
                      "topk": args.topk, "num_classes": args.num_classes,
                      "batch": args.batch, "batches": args.batches, "workers": args.workers,
                      "device": args.device, "recipe": report.recipe.variant.value},
        }
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    payload = {"benchmark": "mldr_loader",
               "command": shlex.join(["python", "bench/mldr_loader.py", *(argv or sys.argv[1:])]),
               "machine": machine, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    r = results
    print(f"\n{'loader':<10}{'images/s':>10}  runs")
    for name in ("paper", "dalidr"):
        print(f"{name:<10}{r[name]['images_per_s']:>10.1f}  "
              f"{[round(v, 1) for v in r[name]['runs']]}")
    print(f"ratio dalidr / paper: {r['ratio']:.2f}x (target >= 3x)")
    print(f"source {r['source_bytes'] / 1e6:.2f} MB -> store {r['store_bytes'] / 1e6:.2f} MB "
          f"({r['size_ratio']:.1f}x smaller); import {r['import_s']:.1f} s "
          f"({r['import_samples_per_s']:.0f} samples/s)")
    print(f"wrote {args.out}")
    return payload


if __name__ == "__main__":
    main()
