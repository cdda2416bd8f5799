"""Reinforcement store: bytes per record, quantisation distortion, epoch plan and read times.

The paper's ImageNet+ (RRC+RA/RE) stores ~73 bytes per (image, augmentation) as one pickled
file per image (37.5 GB for 1.28 M images x 400 views, Table 2). This measures dalidr's store
(`store/`) against that, in one run:

1. compactness: a store of `--samples` x `--slots` records for RRC+RA/RE, k = 10, with records
   from `draw_records` on ImageNet-like image sizes and teacher outputs from
   `store.synthetic.synthetic_teacher` (a few dominant classes repeating across an image's
   views, a varying tail; see its docstring). Bytes per record count every byte of the store
   (manifest and metadata included); the ratio is against the paper's 73 bytes. Both top-k
   compressors (`Compression.ZSTD`, the default, and `LZMA`) are written from the same inputs.
2. distortion: the mean KL(p || q) in nats between the teacher's full-precision top-k
   probabilities p and what the store returns q, each renormalised over its top-k.
3. read amplification: bytes the zarr store fetched while reading an epoch (counted in the
   store's `get`), over the bytes those views occupy on disk (epoch views x data bytes/record).
4. plan time: `plan_epoch` for ImageNet's 1,281,167 samples, 400 slots, pinned to one core.
5. validation cost: per block read, the time `store.validate.decode_views` spends checking the
   values (op ids, bins, crops, boxes, class indices, probability levels) beyond decoding them,
   against the time of reading that block's views (one slot per sample, as an epoch does: chunk
   fetch, decompression, digest verification, decoding, validation), on the compactness store,
   pinned to one core; and the same for a whole block (every slot, what `dalidr inspect` reads).
6. epoch read: planning and reading one epoch's records and targets from a warm local store of
   `--epoch-samples` samples (one slot group of views, cheap stand-in teacher outputs: only the
   time matters), pinned to one core; and how long `EpochPrefetcher.get` blocks, over an
   epoch's pieces, when the training loop spends `--train-s` seconds per epoch (each piece
   its share). Read amplification is also measured reading the epoch in pieces, as the
   prefetcher does (`store.pieces`: each block once, so the same figure).

Setup (drawing records, the synthetic teacher, writing the stores) is outside the timed
regions; each timing is the median of `--repeats` runs after one warm-up run.
Run from the repository root: `python bench/store.py` (`--quick` for a smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench.machine import describe_machine, summary
from dalidr.augment.recipe import recipe
from dalidr.augment.records import draw_records
from store import Compression, Manifest, StoreConfig, StoreReader, create_store, topk_kl
from store.encoding import decode_records, dequantise_probs
from store.guarded import GuardedLocalStore
from store.inspect import inspect_store
from store.layout import CLASSES, PROB_GAPS
from store.pieces import EpochPieces, PieceSizes
from store.plan import PlanSpec, plan_epoch
from store.prefetch import EpochPrefetcher
from store.synthetic import synthetic_teacher
from store.validate import decode_views

PAPER_BYTES_PER_RECORD = 37.5e9 / (1_281_167 * 400)  # ImageNet+ RRC+RA/RE, Table 2: ~73
IMAGENET_SAMPLES = 1_281_167
# Common ImageNet training image sizes (height, width) and rough frequencies.
_SIZES = np.array([(375, 500), (500, 375), (333, 500), (500, 333), (400, 500), (500, 400),
                   (480, 640), (640, 480), (256, 256), (800, 600)])
_SIZE_FREQ = np.array([0.35, 0.15, 0.12, 0.05, 0.08, 0.05, 0.06, 0.04, 0.05, 0.05])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048,
                        help="samples of the compactness store (default 2048: 819 200 records)")
    parser.add_argument("--slots", type=int, default=400, help="views per sample (default 400)")
    parser.add_argument("--k", type=int, default=10, help="teacher top-k (default 10)")
    parser.add_argument("--epoch-samples", type=int, default=IMAGENET_SAMPLES,
                        help="samples of the epoch-read store (default: ImageNet's; 0: skip)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--train-s", type=float, default=0.0,
                        help="simulated training time per epoch for the prefetch test "
                             "(default: 1.5x the measured epoch read time)")
    parser.add_argument("--workdir", default=None, help="where stores are written (default: tmp)")
    parser.add_argument("--out", default="bench/results/store.json", help="JSON result")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--only-validation", action="store_true",
                        help="measure compactness and the validation cost only")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.slots, args.epoch_samples, args.repeats = 64, 40, 20_000, 2
    return args


def _median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


@contextmanager
def _one_core() -> Iterator[int]:
    """Pin this process (and threads it starts) to one core; restore afterwards."""
    before = os.sched_getaffinity(0)
    core = min(before)
    os.sched_setaffinity(0, {core})
    try:
        yield core
    finally:
        os.sched_setaffinity(0, before)


@contextmanager
def _count_fetched_bytes() -> Iterator[list[int]]:
    """Count the bytes the store's local zarr store returns from `get` (what a reader
    fetches; `locate` opens local stores as `store.guarded.GuardedLocalStore`)."""
    counter = [0]
    original = GuardedLocalStore.get

    async def counting_get(self, key, prototype, byte_range=None):  # type: ignore[no-untyped-def]
        buffer = await original(self, key, prototype, byte_range)
        if buffer is not None:
            counter[0] += len(buffer)
        return buffer

    GuardedLocalStore.get = counting_get  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        GuardedLocalStore.get = original  # type: ignore[method-assign]


def _manifest(num_samples: int, seed: int) -> Manifest:
    rng = np.random.default_rng(seed)
    return Manifest(
        paths=tuple(f"n{i % 1000:08d}/n{i % 1000:08d}_{i}.JPEG" for i in range(num_samples)),
        labels=rng.integers(0, 1000, num_samples),
        sizes=rng.integers(20_000, 300_000, num_samples),
        hashes=rng.integers(0, 256, (num_samples, 32)),
        image_hw=_SIZES[rng.choice(len(_SIZES), num_samples, p=_SIZE_FREQ)],
    )


def measure_compactness(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    manifest = _manifest(args.samples, seed=0)
    base = StoreConfig(recipe("rrc+ra/re"), teacher="synthetic ensemble model "
                       "(store.synthetic)", seed=0, slots=args.slots, k=args.k)
    samples = np.arange(args.samples)
    records = draw_records(base.recipe, base.seed, samples, np.arange(args.slots),
                           manifest.image_hw)
    classes, probs = synthetic_teacher(base.seed, samples, args.slots, args.k, 1000,
                                       manifest.labels)
    out: dict[str, Any] = {"samples": args.samples, "slots": args.slots, "k": args.k,
                           "records": args.samples * args.slots,
                           "teacher_stats": {
                               "mean_top1_prob": float(probs[..., 0].mean()),
                               "mean_topk_mass": float(probs.sum(-1).mean()),
                               "mean_distinct_classes_per_sample": float(np.mean(
                                   [len(np.unique(c)) for c in classes]))}}
    for compression in Compression:
        config = StoreConfig(**{**base.__dict__, "compression": compression})
        url = str(workdir / f"compact-{compression.value}")
        writer = create_store(url, manifest, config)
        start = time.perf_counter()
        for block in range(writer.num_blocks):
            r = writer.block_range(block)
            writer.write_block(block, records[r.start:r.stop], classes[r.start:r.stop],
                               probs[r.start:r.stop])
        write_s = time.perf_counter() - start
        report = inspect_store(url, verify=False)
        data_bytes = sum(v for k, v in report.array_bytes.items()
                         if k not in ("manifest", "commit_map", "derived"))
        reader = StoreReader(url, dataset=manifest)
        got = [reader.read_block(b) for b in range(reader.num_blocks)]
        exact = all(g[0].tobytes() == records[writer.block_range(b).start:
                                               writer.block_range(b).stop].tobytes()
                    for b, g in enumerate(got))
        stored_probs = np.concatenate([g[1].probs for g in got])
        stored_classes = np.concatenate([g[1].classes for g in got])
        per_view = _per_view_kl(probs, stored_probs)
        out[compression.value] = {
            "bytes_per_record": report.bytes_per_record,
            "data_bytes_per_record": data_bytes / report.records,
            "array_bytes_per_record": {k: v / report.records for k, v in
                                       report.array_bytes.items()},
            "total_bytes": report.total_bytes,
            "files": report.files,
            "vs_paper_ratio": PAPER_BYTES_PER_RECORD / report.bytes_per_record,
            "records_exact": bool(exact),
            "classes_exact": bool(np.array_equal(stored_classes, classes)),
            "kl_mean_nats": topk_kl(probs, stored_probs),
            "kl_p99_nats": float(np.quantile(per_view, 0.99)),
            "kl_max_nats": float(per_view.max()),
            "write_records_per_s": report.records / write_s,
        }
        if compression is Compression.ZSTD:
            out["read_amplification"] = _read_amplification(url, data_bytes / report.records,
                                                            args.repeats)
            out["read_amplification"]["whole_sample_reads"] = float(args.slots)
    return out


def _per_view_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    p = p / p.sum(-1, keepdims=True)
    q = q / q.sum(-1, keepdims=True)
    return (p * np.log(p / q)).sum(-1).reshape(-1)


def _read_in_pieces(reader: StoreReader, epoch: int, rank: int, world: int) -> int:
    """Read an epoch as a training loop does, piece by piece (`store.pieces`, default sizes),
    in this thread; the views read."""
    pieces = EpochPieces(reader, reader.plan(epoch, rank, world), 0, PieceSizes())
    for k in range(len(pieces)):
        pieces.read_next()
        pieces.piece(k)
    return len(pieces.plan)


def _read_amplification(url: str, data_bytes_per_record: float, repeats: int,
                        world: int = 1, rank: int = 0) -> dict[str, Any]:
    """Bytes fetched to read epochs 1..repeats, over the bytes of the views they use: read
    whole (`StoreReader.epoch`) and in pieces (as the prefetcher reads them)."""
    # Two readers, each warmed the same way (array metadata, the manifest blocks of epoch 0,
    # presence checks), so neither finds manifest blocks the other read in its cache.
    reader, piecewise = StoreReader(url), StoreReader(url)
    reader.epoch(0, rank, world)
    piecewise.epoch(0, rank, world)
    ratios, piece_ratios = [], []
    for epoch in range(1, repeats + 1):
        with _count_fetched_bytes() as fetched:
            data = reader.epoch(epoch, rank, world)
        ratios.append(fetched[0] / (len(data) * data_bytes_per_record))
        with _count_fetched_bytes() as fetched:
            views = _read_in_pieces(piecewise, epoch, rank, world)
        piece_ratios.append(fetched[0] / (views * data_bytes_per_record))
    return {"rank": rank, "world": world, "read_amplification": statistics.median(ratios),
            "per_epoch": ratios, "read_amplification_in_pieces": statistics.median(piece_ratios),
            "per_epoch_in_pieces": piece_ratios}


def measure_validation(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Validation time per block read, against the read itself (see the module docstring)."""
    reader = StoreReader(str(workdir / f"compact-{Compression.ZSTD.value}"))
    layout, cfg = reader.layout, reader.config
    block, group = 0, 1 if cfg.num_groups > 1 else 0
    r = layout.block_range(block)
    samples = np.arange(r.start, r.stop)
    slot_of = cfg.group_slots(group)
    slots = slot_of.start + samples % len(slot_of)  # one slot per sample, as an epoch reads
    reader.read_views(samples, slots)  # warm: metadata, manifest, presence checks
    chunks = {name: reader._read(name, range(block, block + 1), group)
              for name in layout.data_names}
    pick = {name: values[samples - r.start, slots - slot_of.start]
            for name, values in chunks.items()}
    columns = {spec.name: pick[f"records/{spec.name}"] for spec in layout.columns}
    whole = {name: np.asarray(layout.array(name)[r.start:r.stop]) for name in layout.data_names}
    whole_columns = {spec.name: whole[f"records/{spec.name}"] for spec in layout.columns}
    every_slot = np.arange(cfg.slots)

    def decode_only(cols: dict[str, np.ndarray], gaps: np.ndarray) -> None:
        # The image sizes as the reader decodes with them (read per block, `image_sizes`).
        decode_records(cols, cfg.recipe, samples, layout.image_sizes)
        dequantise_probs(gaps, cfg.prob_levels)

    with _one_core():
        read_s, _ = _median_time(lambda: reader.read_views(samples, slots), args.repeats)
        checked_s, _ = _median_time(lambda: decode_views(
            layout, columns, pick[CLASSES], pick[PROB_GAPS], samples, slots), args.repeats)
        decode_s, _ = _median_time(lambda: decode_only(columns, pick[PROB_GAPS]), args.repeats)
        block_s, _ = _median_time(lambda: reader.read_block(block), args.repeats)
        block_checked_s, _ = _median_time(lambda: decode_views(
            layout, whole_columns, whole[CLASSES], whole[PROB_GAPS], samples, every_slot),
            args.repeats)
        block_decode_s, _ = _median_time(
            lambda: decode_only(whole_columns, whole[PROB_GAPS]), args.repeats)
    validation_s = max(checked_s - decode_s, 0.0)
    block_validation_s = max(block_checked_s - block_decode_s, 0.0)
    return {"block_samples": len(samples), "slots": cfg.slots,
            "epoch_block_read_s": read_s, "epoch_block_validation_s": validation_s,
            "epoch_block_validation_share": validation_s / read_s,
            "whole_block_read_s": block_s, "whole_block_validation_s": block_validation_s,
            "whole_block_validation_share": block_validation_s / block_s}


def measure_plan(args: argparse.Namespace) -> dict[str, Any]:
    spec = PlanSpec(IMAGENET_SAMPLES, 400, 5, StoreConfig.__dataclass_fields__[
        "block_size"].default, seed=0)
    with _one_core() as core:
        single, single_runs = _median_time(lambda: plan_epoch(spec, 7), args.repeats)
        rank, _ = _median_time(lambda: plan_epoch(spec, 7, rank=3, world=8), args.repeats)
    return {"samples": IMAGENET_SAMPLES, "slots": 400, "core": core, "plan_s": single,
            "plan_runs_s": single_runs, "plan_rank_of_8_s": rank}


def measure_epoch_read(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    n = args.epoch_samples
    manifest = _manifest(n, seed=1)
    config = StoreConfig(recipe("rrc+ra/re"), teacher="stand-in (timing only)", seed=0,
                         slots=5, k=args.k)
    url = str(workdir / "epoch")
    writer = create_store(url, manifest, config)
    rng = np.random.default_rng(0)

    def produce(r: range) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        index = np.arange(r.start, r.stop)
        records = draw_records(config.recipe, config.seed, index, np.arange(config.slots),
                               manifest.image_hw)
        offsets = np.cumsum(rng.integers(1, 9, (len(index), config.slots, config.k)), -1)
        classes = (manifest.labels[index, None, None] + offsets) % 1000
        probs = np.sort(rng.exponential(1.0, classes.shape) ** 3, -1)[..., ::-1]
        return records, classes, probs / probs.sum(-1, keepdims=True) * 0.95

    start = time.perf_counter()
    writer.fill(produce)
    fill_s = time.perf_counter() - start
    report = inspect_store(url, verify=False)
    data_bytes = sum(v for k, v in report.array_bytes.items()
                     if k not in ("manifest", "commit_map", "derived"))
    amplification = [_read_amplification(url, data_bytes / report.records, args.repeats,
                                          world, rank) for world, rank in ((1, 0), (8, 3))]
    reader = StoreReader(url, dataset=manifest)
    with _one_core():
        epoch_s, runs = _median_time(lambda: reader.epoch(3), args.repeats)
    train_s = args.train_s or 1.5 * epoch_s
    waits, first_piece = [], 0.0
    with _one_core(), EpochPrefetcher(reader, start_epoch=0) as prefetcher:
        for epoch in range(4):  # each piece "trained on" for its share of train_s
            waited, step = 0.0, 0
            while step < n:
                start = time.perf_counter()
                data = prefetcher.get(epoch, 0, step)
                waited += time.perf_counter() - start
                first_piece = first_piece or waited
                time.sleep(train_s * len(data) / n)  # the training loop
                step = data.steps.stop
            waits.append(waited)
    return {"samples": n, "epoch_plan_and_read_s": epoch_s, "runs_s": runs,
            "blocks": reader.num_blocks, "read_amplification": amplification,
            "store_fill_s": fill_s, "train_s_per_epoch": train_s,
            "prefetch_wait_first_piece_s": first_piece,
            "prefetch_wait_first_epoch_s": waits[0],
            "prefetch_wait_later_epochs_max_s": max(waits[1:])}


def print_table(results: dict[str, Any]) -> None:
    compact, plan = results["compactness"], results.get("plan")
    rows = []
    for name in ("zstd", "lzma"):
        c = compact[name]
        rows.append((f"bytes/record ({name})", f"{c['bytes_per_record']:.2f}",
                     f"<= 25; paper {PAPER_BYTES_PER_RECORD:.1f} ({c['vs_paper_ratio']:.1f}x "
                     "smaller)"))
        rows.append((f"mean top-k KL ({name})", f"{c['kl_mean_nats']:.2e} nats", "<= 1e-3"))
    amp = compact["read_amplification"]
    rows.append(("epoch read amplification", f"{amp['read_amplification']:.2f}x",
                 f"<= 8x (whole samples: {amp['whole_sample_reads']:.0f}x)"))
    if "validation" in results:
        v = results["validation"]
        rows.append((f"validation per block read ({v['block_samples']} views)",
                     f"{v['epoch_block_validation_s'] * 1e3:.2f} ms",
                     f"{100 * v['epoch_block_validation_share']:.2f}% of the "
                     f"{v['epoch_block_read_s'] * 1e3:.1f} ms read; <= 1%"))
        rows.append((f"validation per whole block ({v['block_samples']}x{v['slots']})",
                     f"{v['whole_block_validation_s'] * 1e3:.1f} ms",
                     f"{100 * v['whole_block_validation_share']:.2f}% of the "
                     f"{v['whole_block_read_s'] * 1e3:.0f} ms read"))
    if not plan:
        _print_rows(rows)
        return
    rows.append(("epoch plan, 1.28M samples, 1 core", f"{plan['plan_s']:.3f} s", "<= 2 s"))
    if "epoch_read" in results:
        e = results["epoch_read"]
        rows.append((f"plan + read epoch, {e['samples']} samples, 1 core",
                     f"{e['epoch_plan_and_read_s']:.2f} s", "in the background"))
        for entry in e["read_amplification"]:
            rows.append((f"  read amplification, rank {entry['rank']} of {entry['world']}",
                         f"{entry['read_amplification']:.2f}x", "<= 8x"))
            rows.append(("    read in pieces, as the prefetcher does",
                         f"{entry['read_amplification_in_pieces']:.2f}x", "the same"))
        rows.append(("prefetch wait, epoch 0's first piece",
                     f"{e['prefetch_wait_first_piece_s'] * 1e3:.1f} ms",
                     f"epoch 0 in all: {e['prefetch_wait_first_epoch_s'] * 1e3:.1f} ms"))
        rows.append(("prefetch wait, epochs 1-3 (max)",
                     f"{e['prefetch_wait_later_epochs_max_s'] * 1e3:.1f} ms",
                     f"training {e['train_s_per_epoch']:.1f} s/epoch"))
    _print_rows(rows)


def _print_rows(rows: list[tuple[str, str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure':{width}s}  {'value':>16s}  target / reference")
    for name, value, note in rows:
        print(f"{name:{width}s}  {value:>16s}  {note}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    machine = describe_machine()
    print(summary(machine))
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dalidr-bench-store-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        results: dict[str, Any] = {"compactness": measure_compactness(args, workdir)}
        results["validation"] = measure_validation(args, workdir)
        if not args.only_validation:
            results["plan"] = measure_plan(args)
        if args.epoch_samples and not args.only_validation:
            results["epoch_read"] = measure_epoch_read(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    payload = {"benchmark": "store", "command": " ".join(["python", "bench/store.py",
                                                          *(argv or sys.argv[1:])]),
               "machine": machine, "paper_bytes_per_record": PAPER_BYTES_PER_RECORD,
               "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    print_table(results)
    print(f"\nwrote {args.out}")
    return payload


if __name__ == "__main__":
    main()
