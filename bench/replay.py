"""Replay throughput: dalidr's replay against plain DALI and a torchvision DataLoader, and the
parameter sampler's rate.

Dataset Reinforcement (paper Sec. 2) trades on-line augmentation for replaying stored
parameters, so replay must cost about what an ordinary loader costs, and drawing the parameters
for a whole dataset must be cheap. Measured in one run, on the same real JPEGs (held in memory),
with the same batch size and the same number of threads/workers:

1. replay: `dalidr.augment.replay.replay_pipeline` for RRC+RA/RE, records drawn outside the timed
   region, float CHW normalised output; on the CPU RandAugment and erasing run as the fused
   numba kernel (`dalidr.augment.cpu`), and `replay_dali_ops` is the same replay through DALI's
   operators (`OpsBackend.DALI`, the path before the kernel): before and after in one run. The
   same pair for the M*+R* recipe (`replay_mix`, `replay_mix_dali_ops`: every view mixed with a
   replayed partner, so two crops decoded per view); and `replay_rrc`, RRC alone (one crop
   decoded, no ops): the floor the others are measured against;
2. plain DALI: the standard DALI ResNet-50 training shape (`decoders.image_random_crop`, resize
   with antialias, random flip, `crop_mirror_normalize`), which does less work (no RandAugment,
   no erasing): the reference replay should nearly match;
3. torchvision: a `torch.utils.data.DataLoader` whose Dataset applies the same records with PIL
   and torchvision (crop, resize, flip, the two RandAugment ops, erase, normalise): what you
   would write without dalidr;
4. sampler: `draw_records` records/s on one core, for every recipe variant;
5. Equalize: seconds per image of replay's Equalize (PIL's table through DALI's numba plugin,
   `dalidr.augment.equalize`) and of DALI's stock `fn.equalize`, over decode + resize alone.

Both DALI pipelines are driven the same way: `prefetch_queue_depth=2`, two batches fed before the
first `run()` and one after each, so the executor always has the next batch. The machine may be
shared, so the three loaders are timed in interleaved rounds (the order rotating each round)
rather than one after the other: contention that comes and goes then hits all three alike. The
cost: after one untimed round (start-up), a loader must settle before each timed run (warm-up
batches, after those it had queued) and its queued work must drain before the next is timed (a
short sleep). Each throughput is the median over the rounds; every run's rate and the share of
the CPUs that other processes took meanwhile (`bench.machine.foreign_cpu_share`) are stored, so
a contended result shows as one.

Run from the repository root: `python bench/replay.py` (or `-m bench.replay`); `--quick` for a
smoke test, `--device gpu` for GPU decode and ops.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.pipeline import Pipeline
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import RandAugment
from torchvision.transforms.v2 import functional as F

from bench.machine import describe_machine, foreign_cpu_share, load_snapshot, summary
from dalidr.augment.ops import OPS
from dalidr.augment.recipe import PRESETS, Recipe, load_recipe
from dalidr.augment.records import COORD_SCALE, draw_records
from dalidr.augment.replay import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OpsBackend,
    Output,
    ReplaySpec,
    replay_pipeline,
)
from dalidr.data.sample_data import make_corpus

__all__ = ["parse_args", "main"]

_REPO = Path(__file__).resolve().parents[1]
_DEFAULT_OUT = {"cpu": "bench/results/replay-cpu.json", "gpu": "bench/results/replay-gpu.json"}

# name, numerator, denominator, threshold: numerator / denominator must reach the threshold.
TARGETS = (
    ("replay >= 0.9x plain DALI", "replay", "plain_dali", 0.9),
    ("replay >= 2x torchvision loader", "replay", "torchvision", 2.0),
    ("M*+R* replay >= 0.6x plain DALI", "replay_mix", "plain_dali", 0.6),
)
MIX_RECIPE = "m*+r*"  # the mixing recipe timed beside the benchmarked one
SAMPLER_TARGET = 1_000_000.0  # records/s on one core, for the benchmarked recipe
_PAIRS = (("replay", "plain_dali"), ("replay", "torchvision"), ("plain_dali", "torchvision"),
          ("replay_mix", "plain_dali"), ("replay", "replay_dali_ops"),
          ("replay_mix", "replay_mix_dali_ops"), ("replay_dali_ops", "plain_dali"),
          ("replay_rrc", "plain_dali"), ("replay_mix", "replay_rrc"))
_PREFETCH_FACTOR = 2  # DataLoader batches prepared ahead per worker (its default)
_DRAIN_MARGIN = 1.5  # sleep this many times the queued batches' time after a timed run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                        help="cpu: everything on the CPU; gpu: mixed decode, ops on GPU 0")
    parser.add_argument("--recipe", default="rrc+ra/re", help="preset name or recipe file")
    parser.add_argument("--batch", type=int, default=64, help="batch size of every loader")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="DALI threads and DataLoader workers")
    parser.add_argument("--corpus", type=int, default=512, help="JPEG files in the corpus")
    parser.add_argument("--corpus-dir", type=Path, default=_REPO / "runs" / "bench-corpus")
    parser.add_argument("--slots", type=int, default=4, help="record slots per file")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed batches before each timed run, after those queued")
    parser.add_argument("--runs", type=int, default=5,
                        help="rounds, each timing every loader once (median reported)")
    parser.add_argument("--batches", type=int, default=10,
                        help="batches per timed run (rounded up to a multiple of --threads)")
    parser.add_argument("--sampler-records", type=int, default=1 << 20)
    parser.add_argument("--sampler-runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="small corpus and few iterations: a smoke test under a minute")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON result (default: bench/results/replay-<device>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.corpus, args.slots, args.warmup, args.runs, args.batches = 128, 2, 1, 3, 4
        args.sampler_records, args.sampler_runs = 1 << 16, 2
    if args.out is None:
        args.out = _REPO / _DEFAULT_OUT[args.device]
    for name in ("batch", "threads", "corpus", "slots", "runs", "batches", "sampler_records",
                 "sampler_runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    # DataLoader workers deliver in turn: a timed run spanning a whole number of turns counts
    # every worker alike, where one of 3 batches with 2 workers would arrive for free.
    args.batches = -(-args.batches // args.threads) * args.threads
    return args


# ----------------------------------------------------------------------------- inputs


def load_corpus(directory: Path, count: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The corpus's encoded files in memory and their (height, width)."""
    paths = make_corpus(directory, count, seed)
    jpegs = [np.fromfile(path, dtype=np.uint8) for path in paths]
    hw = np.array([Image.open(path).size[::-1] for path in paths], dtype=np.int64)
    return jpegs, hw


def plan_items(num_files: int, slots: int, seed: int) -> np.ndarray:
    """(file, slot) of every item in serving order: one shuffled pass over the files per slot."""
    rng = np.random.default_rng(seed)
    passes = [np.stack([rng.permutation(num_files), np.full(num_files, s)], axis=1)
              for s in range(slots)]
    return np.concatenate(passes)


def batch_items(items: np.ndarray, batch: int, count: int) -> list[np.ndarray]:
    """`count` consecutive batches of items, cycling through the plan."""
    return [items[(k * batch + np.arange(batch)) % len(items)] for k in range(count)]


# ----------------------------------------------------------------------------- DALI


def replay_batches(plan: list[np.ndarray], jpegs: list[np.ndarray], records: np.ndarray,
                   spec: ReplaySpec) -> list[dict[str, Any]]:
    """Each planned batch's feeds for a replay pipeline: encoded files (and the partners' for a
    mixing recipe) and every record field."""
    feeds = []
    for chosen in plan:
        batch_records = records[chosen[:, 0], chosen[:, 1]]
        feed: dict[str, Any] = {"jpegs": [jpegs[f] for f in chosen[:, 0]]}
        if spec.recipe.has_mix:
            feed["partner_jpegs"] = [jpegs[p] for p in batch_records["partner"]]
        feed.update({f: np.ascontiguousarray(batch_records[f]) for f in spec.fields})
        feeds.append(feed)
    return feeds


def plain_dali_pipeline(recipe: Recipe, batch: int, threads: int, device_id: int | None,
                        seed: int) -> Pipeline:
    """DALI's ResNet-50 training shape: random-crop decode, resize, flip, normalise to CHW."""
    side = recipe.output_size

    @pipeline_def(exec_dynamic=True)
    def _pipeline() -> Any:
        jpegs = fn.external_source(name="jpegs", dtype=types.UINT8, no_copy=True)
        images = fn.decoders.image_random_crop(
            jpegs,
            device="cpu" if device_id is None else "mixed",
            output_type=types.RGB,
            random_area=list(recipe.crop_scale),
            random_aspect_ratio=list(recipe.crop_ratio),
            num_attempts=10,
        )
        images = fn.resize(images, resize_x=side, resize_y=side, antialias=True,
                           interp_type=types.INTERP_LINEAR)
        return fn.crop_mirror_normalize(
            images,
            dtype=types.FLOAT,
            output_layout="CHW",
            mean=[255.0 * m for m in IMAGENET_MEAN],
            std=[255.0 * s for s in IMAGENET_STD],
            mirror=fn.random.coin_flip(probability=recipe.flip_prob),
        )

    pipe = _pipeline(batch_size=batch, num_threads=threads, device_id=device_id, seed=seed,
                     prefetch_queue_depth=2)
    pipe.build()
    return pipe


class DaliLoader:
    """One batch per `step()` from a DALI pipeline fed ahead: two batches before the first
    `run()` (which prefetches two iterations), then one after each."""

    queued = 1  # iterations still running when `step()` returns

    def __init__(self, pipe: Pipeline, feeds: list[dict[str, Any]]) -> None:
        self.pipe = pipe
        self.feeds = feeds  # cycled through
        self.done = 0
        self.first: np.ndarray | None = None  # the first batch, for the agreement check

    def _feed(self, k: int) -> None:
        for name, value in self.feeds[k % len(self.feeds)].items():
            self.pipe.feed_input(name, value)

    def step(self) -> Any:
        if self.done == 0:
            self._feed(0)
            self._feed(1)
        (images,) = self.pipe.run()
        self.done += 1
        self._feed(self.done + 1)
        batch = images.as_tensor()
        if self.first is None:
            self.first = np.array(batch.as_cpu() if hasattr(batch, "as_cpu") else batch)
        return batch


# ----------------------------------------------------------------------------- torchvision


def _pixels(fractions: np.ndarray, extents: np.ndarray) -> list[int]:
    """Stored fractions to whole pixels, in float32 exactly as `dalidr.augment.replay._pixels`."""
    scale = extents.astype(np.float32) * np.float32(1.0 / COORD_SCALE)
    return [int(v) for v in np.floor(fractions.astype(np.float32) * scale + np.float32(0.5))]


class TorchvisionReplay(Dataset):
    """The same records applied with PIL and torchvision, one sample at a time.

    A benchmark baseline, not a reference: `tests/` holds the reference implementation.
    """

    def __init__(self, jpegs: list[np.ndarray], records: np.ndarray, items: np.ndarray,
                 length: int, recipe: Recipe) -> None:
        self.jpegs = [bytes(j) for j in jpegs]
        self.records = records
        self.items = items
        self.length = length
        self.side = recipe.output_size
        self.has_ra_re = recipe.has_ra_re
        self.erase_fill = torch.tensor(recipe.erase_fill, dtype=torch.uint8)[:, None, None]
        self.augment = RandAugment(num_magnitude_bins=recipe.ra_num_bins, fill=recipe.fill)
        self.magnitudes: dict[str, np.ndarray | None] = {}
        for op in OPS:
            table = RandAugment._AUGMENTATION_SPACE[op.name][0](
                recipe.ra_num_bins, self.side, self.side)
            self.magnitudes[op.name] = None if table is None else table.float().numpy()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        file, slot = self.items[index % len(self.items)]
        record = self.records[file, slot]
        image = Image.open(io.BytesIO(self.jpegs[file])).convert("RGB")
        height, width = image.height, image.width
        extents = np.array([height, width, height, width])
        top, left, crop_h, crop_w = _pixels(record["crop"], extents)
        image = F.resized_crop(image, top, left, crop_h, crop_w, [self.side, self.side],
                               interpolation=InterpolationMode.BILINEAR, antialias=True)
        if record["flip"]:
            image = F.horizontal_flip(image)
        ops = zip(record["ops"], record["mags"], strict=True) if self.has_ra_re else ()
        for op_id, signed_bin in ops:
            name = OPS[int(op_id)].name
            table = self.magnitudes[name]
            magnitude = 0.0 if table is None else float(table[abs(int(signed_bin))])
            if signed_bin < 0:
                magnitude = -magnitude
            image = self.augment._apply_image_or_video_transform(
                image, name, magnitude, interpolation=InterpolationMode.NEAREST,
                fill=self.augment._fill)
        tensor = F.pil_to_tensor(image)
        if self.has_ra_re:
            y, x, h, w = _pixels(record["erase"], np.full(4, self.side))
            if h > 0 and w > 0:
                tensor[:, y:y + h, x:x + w] = self.erase_fill
        tensor = F.to_dtype(tensor, torch.float32, scale=True)
        return F.normalize(tensor, list(IMAGENET_MEAN), list(IMAGENET_STD))


class TorchLoader:
    """One batch per `step()` from a DataLoader with `threads` workers; the workers start at the
    first step, so that their start-up is part of a warm-up, never of another loader's run."""

    def __init__(self, dataset: TorchvisionReplay, batch: int, threads: int, pin_memory: bool,
                 to_device: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.loader = DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=threads,
                                 prefetch_factor=_PREFETCH_FACTOR, drop_last=True,
                                 multiprocessing_context="spawn", pin_memory=pin_memory)
        self.queued = threads * _PREFETCH_FACTOR  # batches the workers prepare ahead
        self.to_device = to_device
        self.batches: Iterator[torch.Tensor] | None = None

    def step(self) -> torch.Tensor:
        if self.batches is None:
            self.batches = iter(self.loader)
        return self.to_device(next(self.batches))

    def close(self) -> None:
        self.batches = None  # stops the workers


# ----------------------------------------------------------------------------- timing


class Loader(Protocol):
    queued: int

    def step(self) -> object: ...


def _timed_run(loader: Loader, args: argparse.Namespace,
               synchronize: Callable[[], None]) -> tuple[float, float | None]:
    """Settle `loader`, time `args.batches` batches, let its queued work drain: (images/s, the
    CPU share other processes took meanwhile)."""
    for _ in range(loader.queued + args.warmup):
        loader.step()
    synchronize()
    before = load_snapshot()
    start = time.perf_counter()
    for _ in range(args.batches):
        loader.step()
    synchronize()
    rate = args.batches * args.batch / (time.perf_counter() - start)
    share = foreign_cpu_share(before, load_snapshot())
    time.sleep(_DRAIN_MARGIN * loader.queued * args.batch / rate)
    return rate, share


def measure(loaders: dict[str, Loader], args: argparse.Namespace,
            synchronize: Callable[[], None]) -> dict[str, dict[str, Any]]:
    """One untimed round (start-up: worker processes, first calls, caches), then `args.runs`
    rounds timing every loader once, in an order rotating each round. Per loader: the median
    images/s, every run's rate and the CPU share other processes took during each run."""
    names = list(loaders)
    for name in names:
        _timed_run(loaders[name], args, synchronize)
    out: dict[str, dict[str, Any]] = {n: {"runs": [], "foreign_cpu_share": []} for n in names}
    for round_ in range(args.runs):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            rate, share = _timed_run(loaders[name], args, synchronize)
            out[name]["runs"].append(rate)
            out[name]["foreign_cpu_share"].append(share)
        print(f"round {round_ + 1}/{args.runs}: " + ", ".join(
            f"{n} {out[n]['runs'][-1]:.0f}" for n in names) + " images/s", flush=True)
    for entry in out.values():
        entry["images_per_s"] = statistics.median(entry["runs"])
    return out


# ----------------------------------------------------------------------------- sampler


def time_sampler(hw: np.ndarray, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Records/s of `draw_records` per preset, on one core (this thread pinned to one CPU)."""
    n = args.sampler_records
    image_hw = np.resize(hw, (n, 2))
    samples = np.arange(n)
    pinned = hasattr(os, "sched_setaffinity")
    if pinned:
        allowed = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(allowed)})
    try:
        out = {}
        for name, preset in PRESETS.items():
            draw_records(preset, args.seed, samples[: min(n, 1 << 16)], [0], image_hw)  # warm-up
            rates, shares = [], []
            for run in range(args.sampler_runs):
                before = load_snapshot()
                start = time.perf_counter()
                draw_records(preset, args.seed + run, samples, [0], image_hw)
                rates.append(n / (time.perf_counter() - start))
                shares.append(foreign_cpu_share(before, load_snapshot()))
            out[name] = {"records_per_s": statistics.median(rates), "runs": rates,
                         "foreign_cpu_share": shares}
    finally:
        if pinned:
            os.sched_setaffinity(0, allowed)
    return out


# ----------------------------------------------------------------------------- report


def agreement(replayed: np.ndarray, dataset: TorchvisionReplay, count: int) -> dict[str, Any]:
    """Per-sample mean |replay - torchvision| in grey levels over the first batch: evidence that
    the baseline does the same work (not a correctness test; `tests/` holds those)."""
    scale = 255.0 * np.array(IMAGENET_STD, dtype=np.float32)[:, None, None]
    diffs = []
    for index in range(count):
        expected = dataset[index].numpy()
        diffs.append(float(np.mean(np.abs(replayed[index] - expected) * scale)))
    worst = int(np.argmax(diffs))
    file, slot = dataset.items[worst % len(dataset.items)]
    record = dataset.records[file, slot]
    return {
        "median_grey_levels": statistics.median(diffs),
        "max_grey_levels": max(diffs),
        "worst_sample": worst,
        "worst_ops": [OPS[int(i)].name for i in record["ops"]] if dataset.has_ra_re else [],
        "worst_mags": [int(m) for m in record["mags"]] if dataset.has_ra_re else [],
    }


def _median_share(entry: dict[str, Any]) -> float | None:
    shares = [v for v in entry["foreign_cpu_share"] if v is not None]
    return statistics.median(shares) if shares else None


def _percent(share: float | None) -> str:
    return "?" if share is None else f"{100 * share:.0f}%"


def progress(name: str, entry: dict[str, Any]) -> None:
    rates = entry["runs"]
    print(f"{name:12s} {entry['images_per_s']:8.1f} images/s (runs {min(rates):.0f}-"
          f"{max(rates):.0f}; other processes took {_percent(_median_share(entry))} of the CPUs)")


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def print_table(results: dict[str, Any], targets: list[dict[str, Any]], args: argparse.Namespace,
                recipe_name: str) -> None:
    plain = results["plain_dali"]["images_per_s"]
    tv = results["torchvision"]["images_per_s"]
    rows = [
        (f"replay ({recipe_name})", results["replay"], "images/s"),
        ("  with DALI's ops (before)", results["replay_dali_ops"], "images/s"),
        ("replay (rrc: one decode, no ops)", results["replay_rrc"], "images/s"),
        (f"replay ({MIX_RECIPE}: two decodes)", results["replay_mix"], "images/s"),
        ("  with DALI's ops (before)", results["replay_mix_dali_ops"], "images/s"),
        ("plain DALI (RRC+flip)", results["plain_dali"], "images/s"),
        (f"torchvision DataLoader ({recipe_name})", results["torchvision"], "images/s"),
    ]
    for name, entry in results["sampler"]["variants"].items():
        rows.append((f"sampler {name} (1 core)", entry, "records/s"))
    print(f"\nbatch {args.batch}, {args.threads} threads/workers, device {args.device}; median of "
          f"{args.runs} interleaved rounds x {args.batches} batches; others: the CPU share other "
          f"processes took")
    print(f"{'':40s} {'rate':>10s} {'unit':9s} {'vs DALI':>7s} {'vs tv':>7s} {'others':>6s}")
    for name, entry, unit in rows:
        others = _percent(_median_share(entry))
        if unit == "images/s":
            rate = entry["images_per_s"]
            print(f"{name:40s} {rate:10.1f} {unit:9s} {ratio(rate, plain):7.2f} "
                  f"{ratio(rate, tv):7.2f} {others:>6s}")
        else:
            rate = entry["records_per_s"]
            print(f"{name:40s} {rate:10.0f} {unit:9s} {'-':>7s} {'-':>7s} {others:>6s}")
    print("targets:")
    for target in targets:
        verdict = "PASS" if target["passed"] else "MISS"
        if target["name"].startswith("sampler"):
            measured = f"{target['measured'] / 1e6:.2f}M records/s"
        else:
            measured = f"{target['measured']:.2f}x"
        print(f"  {target['name']:36s} measured {measured:>18s}  {verdict}")


def time_equalize(jpegs: list[np.ndarray], side: int, args: argparse.Namespace,
                  device_id: int | None) -> dict[str, Any]:
    """Seconds per image of Equalize as replay runs it (PIL's table, `dalidr.augment.equalize`) and
    of
    DALI's stock `fn.equalize` (OpenCV's table), on decoded images at the output side: each
    pipeline's time less that of the same decode + resize alone, in interleaved rounds."""
    from dalidr.augment.equalize import pil_equalize
    from dalidr.augment.replay import DECODE_ARGS

    batch = [jpegs[i % len(jpegs)] for i in range(args.batch)]

    def build(kind: str) -> Pipeline:
        @pipeline_def(batch_size=args.batch, num_threads=args.threads, device_id=device_id,
                      prefetch_queue_depth=1)
        def _pipeline() -> Any:
            data = fn.external_source(name="jpegs", dtype=types.UINT8, no_copy=True)
            images = fn.decoders.image(data, device="cpu" if device_id is None else "mixed",
                                       **DECODE_ARGS)
            images = fn.resize(images, size=[side, side], antialias=True)
            if kind == "pil_table":
                images = pil_equalize(images)
            elif kind == "dali_opencv":
                images = fn.equalize(images)
            return images

        pipe = _pipeline()
        pipe.build()
        return pipe

    kinds = ("decode_resize", "pil_table", "dali_opencv")
    pipes = {kind: build(kind) for kind in kinds}
    runs: dict[str, list[float]] = {kind: [] for kind in kinds}
    for round_ in range(args.runs + 1):
        for kind in kinds[round_ % 3:] + kinds[:round_ % 3]:
            start = time.perf_counter()
            for _ in range(args.batches):
                pipes[kind].feed_input("jpegs", batch)
                (out,) = pipes[kind].run()
                if device_id is not None:
                    out.as_cpu()
            if round_ > 0:  # the first round builds caches and compiles
                runs[kind].append((time.perf_counter() - start) / (args.batches * args.batch))
    base = statistics.median(runs["decode_resize"])
    return {"side": side, "decode_resize_s_per_image": base,
            "pil_table_s_per_image": statistics.median(runs["pil_table"]) - base,
            "dali_opencv_s_per_image": statistics.median(runs["dali_opencv"]) - base,
            "runs": runs}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    machine = describe_machine()
    print(summary(machine))
    recipe = load_recipe(args.recipe)
    if recipe.has_mix:
        raise SystemExit("this benchmark replays single views; pick a recipe without mixing")
    device_id = 0 if args.device == "gpu" else None
    if args.device == "gpu":
        if not torch.cuda.is_available():
            raise SystemExit("--device gpu needs CUDA, and torch sees no GPU")
        synchronize: Callable[[], None] = torch.cuda.synchronize

        def to_device(batch: torch.Tensor) -> torch.Tensor:
            return batch.cuda(non_blocking=True)
    else:
        def synchronize() -> None:
            return None

        def to_device(batch: torch.Tensor) -> torch.Tensor:
            return batch

    # Setup: corpus in memory, records drawn once, every fed batch prepared in advance.
    jpegs, hw = load_corpus(args.corpus_dir, args.corpus, args.seed)
    records = draw_records(recipe, args.seed, np.arange(len(jpegs)), np.arange(args.slots), hw)
    items = plan_items(len(jpegs), args.slots, args.seed)
    plan = batch_items(items, args.batch, -(-len(items) // args.batch))
    spec = ReplaySpec(recipe, output=Output.FLOAT_CHW)
    mix_recipe = load_recipe(MIX_RECIPE).replace(output_size=recipe.output_size)
    mix_spec = ReplaySpec(mix_recipe, output=Output.FLOAT_CHW)
    mix_records = draw_records(mix_recipe, args.seed, np.arange(len(jpegs)),
                               np.arange(args.slots), hw)
    replay_feeds = replay_batches(plan, jpegs, records, spec)
    mix_feeds = replay_batches(plan, jpegs, mix_records, mix_spec)
    rrc_spec = ReplaySpec(load_recipe("rrc").replace(output_size=recipe.output_size),
                          output=Output.FLOAT_CHW)
    rrc_records = draw_records(rrc_spec.recipe, args.seed, np.arange(len(jpegs)),
                               np.arange(args.slots), hw)
    rrc_feeds = replay_batches(plan, jpegs, rrc_records, rrc_spec)
    plain_feeds = [{"jpegs": [jpegs[f] for f in chosen[:, 0]]} for chosen in plan]
    per_run = args.threads * _PREFETCH_FACTOR + args.warmup + args.batches
    length = ((args.runs + 1) * per_run + 1) * args.batch  # never exhausted
    dataset = TorchvisionReplay(jpegs, records, items, length, recipe)
    print(f"corpus: {len(jpegs)} JPEGs, {sum(j.size for j in jpegs) / len(jpegs) / 1024:.0f} KiB "
          f"and {hw[:, 0].mean():.0f}x{hw[:, 1].mean():.0f} px on average; {args.runs} rounds "
          f"of {args.batches} timed batches of {args.batch} per loader")

    def replay_loader(chosen: ReplaySpec, feeds: list[dict[str, Any]]) -> DaliLoader:
        pipe = replay_pipeline(chosen, args.batch, args.threads, device_id,
                               prefetch_queue_depth=2)
        return DaliLoader(pipe, feeds)

    dali_ops = OpsBackend.DALI
    loaders: dict[str, Any] = {
        "replay": replay_loader(spec, replay_feeds),
        "replay_dali_ops": replay_loader(replace(spec, ops_backend=dali_ops), replay_feeds),
        "replay_rrc": replay_loader(rrc_spec, rrc_feeds),
        "replay_mix": replay_loader(mix_spec, mix_feeds),
        "replay_mix_dali_ops": replay_loader(replace(mix_spec, ops_backend=dali_ops), mix_feeds),
        "plain_dali": DaliLoader(
            plain_dali_pipeline(recipe, args.batch, args.threads, device_id, args.seed),
            plain_feeds),
        "torchvision": TorchLoader(dataset, args.batch, args.threads, args.device == "gpu",
                                   to_device),
    }
    results: dict[str, Any] = measure(loaders, args, synchronize)
    loaders["torchvision"].close()
    replayed = loaders["replay"].first
    del loaders
    for name in ("replay", "replay_dali_ops", "replay_rrc", "replay_mix", "replay_mix_dali_ops",
                 "plain_dali", "torchvision"):
        progress(name, results[name])

    if replayed is None:
        raise RuntimeError("the replay loader returned no batch")
    check = agreement(replayed, dataset, args.batch)
    print(f"replay vs torchvision on batch 0: median {check['median_grey_levels']:.2f}, worst "
          f"{check['max_grey_levels']:.2f} grey levels (sample {check['worst_sample']}, ops "
          f"{check['worst_ops']} bins {check['worst_mags']})")

    variants = time_sampler(hw, args)
    key = recipe.variant.value
    results["sampler"] = {"records_per_run": args.sampler_records, "recipe": key,
                          "records_per_s": variants[key]["records_per_s"], "variants": variants}

    results["equalize"] = time_equalize(jpegs, recipe.output_size, args, device_id)
    eq = results["equalize"]
    print(f"Equalize at {eq['side']} px: PIL's table (replay) "
          f"{1e3 * eq['pil_table_s_per_image']:.3f} ms/image, DALI's fn.equalize "
          f"{1e3 * eq['dali_opencv_s_per_image']:.3f} ms/image (decode + resize alone "
          f"{1e3 * eq['decode_resize_s_per_image']:.3f} ms/image)")

    targets = []
    for name, num, den, threshold in TARGETS:
        measured = ratio(results[num]["images_per_s"], results[den]["images_per_s"])
        targets.append({"name": name, "measured": measured, "threshold": threshold,
                        "passed": bool(measured >= threshold)})
    measured = results["sampler"]["records_per_s"]
    targets.append({"name": "sampler >= 1M records/s per core", "measured": measured,
                    "threshold": SAMPLER_TARGET, "passed": bool(measured >= SAMPLER_TARGET)})

    report = {
        "benchmark": "replay",
        "command": shlex.join([sys.executable, sys.argv[0],
                               *(sys.argv[1:] if argv is None else argv)]),
        "device": args.device,
        "batch": args.batch,
        "threads": args.threads,
        "quick": args.quick,
        "recipe": recipe.to_dict(),
        "corpus": {"files": len(jpegs), "slots": args.slots,
                   "mean_bytes": float(np.mean([j.size for j in jpegs])),
                   "mean_height": float(hw[:, 0].mean()), "mean_width": float(hw[:, 1].mean())},
        "timing": {"warmup_rounds": 1, "warmup_batches": args.warmup, "rounds": args.runs,
                   "batches_per_run": args.batches, "statistic": "median over rounds",
                   "interleaved": True, "sampler_runs": args.sampler_runs},
        "results": results,
        "ratios": {f"{a}_vs_{b}": ratio(results[a]["images_per_s"], results[b]["images_per_s"])
                   for a, b in _PAIRS},
        "ratios_per_round": {
            f"{a}_vs_{b}": [ratio(x, y) for x, y in zip(results[a]["runs"], results[b]["runs"],
                                                         strict=True)]
            for a, b in _PAIRS},
        "agreement": check,
        "targets": targets,
        "machine": machine,
        "wall_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    print_table(results, targets, args, recipe.variant.value)
    return report


if __name__ == "__main__":
    main()
