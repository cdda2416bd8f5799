"""Import the paper's published reinforcements into a dalidr store: `dalidr import-mldr`.

Each `{index}.pth.tar` of apple/ml-dr holds `(index, [{"params": ..., "prob": (probs,
class_ids)}, ...])`, one entry per stored view (paper Sec. 2.2: ImageNet+ keeps the top-10
probabilities of 400 views per image). This module is the import's plumbing: it loads every
file with `dalidr.mldr.safe_load` (nothing is ever plainly unpickled), checks its index and
view count, hands each view to `dalidr.mldr.params` (parameters -> records; see there for the
mapping and for views with both MixUp and CutMix), and writes records and top-k block by block
with `store.StoreWriter`, in parallel processes, resumably, with a progress bar. It also
registers the `dalidr import-mldr` command.

Nothing is lost: every file must hold its own index and exactly `slots` views of `k`
probabilities; after writing, each block is read back and compared (records bit for bit,
classes exactly, probabilities within the store's quantisation). Problems are collected per
file and reported together; blocks without problems stay committed, so a rerun after fixing
the files converts only the rest. A write that fails (a full disk) is not a file's problem: it
stops the import with a `StoreWriteError` naming the store, the object and the space needed,
and a rerun after freeing space resumes. Trade-off: the read-back costs about a tenth of the
import and buys a check of every stored value.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dalidr.augment.recipe import Recipe
from dalidr.errors import DatasetError, RecordError, StoreError, StoreWriteError
from dalidr.mldr.params import ParsedViews, convert_block, magnitude_bins, parse_view
from dalidr.mldr.safe_load import load_file
from dalidr.mldr.source import MldrSource, check_op_names, dataset_listing, read_source
from store.config import StoreConfig
from store.manifest import scan_manifest
from store.reader import StoreReader
from store.writer import StoreWriter, resume_or_create

__all__ = ["ImportConfig", "ImportReport", "import_mldr", "register"]

_MAX_PROBLEMS = 20  # problems listed in one error
_PROB_SLACK = 0.02  # probabilities may come back this far off (sqrt quantisation, L >= 15)


# ----------------------------------------------------------------------------- one file


def _parse_file(views: ParsedViews, row: int, index: int, path: Path,
                source: MldrSource) -> None:
    """Fill one sample's views from its file; problems are recorded, not raised."""
    try:
        content = load_file(path)
    except DatasetError as exc:
        views.problems.append(str(exc))
        return
    if not isinstance(content, Sequence) or len(content) != 2:
        views.problem(row, "not an (index, views) pair")
        return
    stored_index, entries = content
    if not isinstance(stored_index, (int, np.integer)) or int(stored_index) != index:
        views.problem(row, f"holds index {stored_index!r}, its name says {index}")
        return
    if not isinstance(entries, Sequence) or len(entries) != views.slots:
        count = len(entries) if isinstance(entries, Sequence) else type(entries).__name__
        views.problem(row, f"holds {count} views; the config's reinforce.num_samples is "
                      f"{views.slots}")
        return
    for slot, entry in enumerate(entries):
        try:
            parse_view(views, row, slot, entry, source)
        except (TypeError, KeyError, ValueError) as exc:
            views.problem(row, f"view {slot}: {exc}")
            return


# ----------------------------------------------------------------------------- one block


@dataclass(frozen=True)
class _Job:
    """What a worker process needs to convert any block."""

    url: str
    source: MldrSource
    k: int


@dataclass(frozen=True)
class _BlockResult:
    block: int
    samples: int
    views: int
    probabilities: int
    problems: tuple[str, ...]


_WORKER: dict[str, Any] = {}


def _init_worker(job: _Job) -> None:
    torch.set_num_threads(1)
    _WORKER.update(job=job, writer=StoreWriter(job.url), tables=magnitude_bins(job.source.recipe))


def _verify(writer: StoreWriter, block: int, records: np.ndarray, classes: np.ndarray,
            probs: np.ndarray, files: list[str]) -> list[str]:
    """Compare a written block with what was converted; problems named by file."""
    stored, targets = StoreReader(writer.layout.url).read_block(block)
    problems = []
    order = np.argsort(-probs, axis=-1, kind="stable")
    for row in range(len(records)):
        if stored[row].tobytes() != records[row].tobytes():
            problems.append(f"{files[row]}: records differ after the store round trip")
            continue
        want = np.take_along_axis(classes[row], order[row], -1)
        got = targets.classes[row]
        if not (np.sort(want, -1) == np.sort(got, -1)).all():
            problems.append(f"{files[row]}: class ids differ after the store round trip")
        sorted_probs = np.take_along_axis(probs[row], order[row], -1)
        if np.abs(targets.probs[row] - sorted_probs).max() > _PROB_SLACK:
            problems.append(f"{files[row]}: probabilities differ after the store round trip")
    return problems


def _convert(block: int) -> _BlockResult:
    job: _Job = _WORKER["job"]
    writer: StoreWriter = _WORKER["writer"]
    source = job.source
    samples = np.arange(writer.block_range(block).start, writer.block_range(block).stop)
    files = [str(source.files[i]) for i in samples]
    views = ParsedViews(len(samples), source.slots, max(source.recipe.ra_num_ops, 1), job.k, files)
    for row, index in enumerate(samples):
        _parse_file(views, row, int(index), source.files[index], source)
    records = convert_block(views, samples, writer.layout.image_hw, source.recipe,
                            _WORKER["tables"])
    a = views.arrays
    if not views.problems:
        try:
            writer.write_block(block, records, a["classes"], a["probs"])
        except StoreWriteError:
            raise  # the disk, not the files: stop, named (a rerun resumes)
        except (StoreError, RecordError) as exc:
            views.problems.append(f"block {block} ({files[0]} .. {files[-1]}): {exc}")
        else:
            views.problems += _verify(writer, block, records, a["classes"], a["probs"], files)
    count = len(samples)
    return _BlockResult(block, count, count * source.slots, count * source.slots * job.k,
                        tuple(views.problems))


# ----------------------------------------------------------------------------- the import


@dataclass(frozen=True)
class ImportConfig:
    """One `dalidr import-mldr` run."""

    # The paper's reinforcement directory ({index}.pth.tar files and config.pth.tar).
    source: Path
    # The dataset the reinforcements were made for (ImageFolder root, or --file-list's root).
    images: Path
    # Store to write (created, or resumed if it exists).
    out: str
    # '<path> <label>' lines in the paper's index order, instead of ImageFolder order.
    file_list: Path | None = None
    # Processes converting blocks (1: in this process).
    workers: int = max(1, os.cpu_count() or 1)
    # Samples per store block (the unit of parallelism and of resuming).
    block_size: int = 1024
    # Slots per store chunk (store.config).
    slot_group: int = 5
    # Label space; None: the source config's num_classes, else the dataset's class count.
    num_classes: int | None = None
    # Seed of the store's epoch plans.
    seed: int = 0
    # Show a progress bar.
    progress: bool = True


@dataclass(frozen=True)
class ImportReport:
    """What an import did and what the store now holds."""

    samples: int
    slots: int
    k: int
    # Views and probability entries converted and verified in this run.
    views_converted: int
    probabilities_converted: int
    blocks_written: int
    blocks_committed: int
    num_blocks: int
    seconds: float
    source_bytes: int
    store_bytes: int | None
    recipe: Recipe
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _first_k(source: MldrSource) -> int:
    content = load_file(source.files[0])
    try:
        probs = content[1][0]["prob"]
        k = len(probs[0])
    except (TypeError, KeyError, IndexError) as exc:
        raise DatasetError(f"{source.files[0]}: no (probabilities, class ids) in its first "
                           "view") from exc
    if source.topk is not None and source.topk != k:
        raise DatasetError(f"{source.files[0]}: {k} probabilities per view; the config's "
                           f"reinforce.topk is {source.topk}")
    return k


def _store_bytes(url: str) -> int | None:
    path = Path(url)
    if not path.is_dir():
        return None
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _open_store(config: ImportConfig, store_config: StoreConfig, listing: Any) -> StoreWriter:
    writer = resume_or_create(config.out, store_config,
                              lambda: scan_manifest(listing.root, listing.paths, listing.labels))
    if writer.config != store_config:
        raise StoreError(f"{config.out} holds a store made with other options "
                         f"({writer.config}); this import asks for {store_config}: use the "
                         "original options or another --out")
    manifest = writer.layout.manifest
    if manifest.paths != listing.paths or list(manifest.labels) != list(listing.labels):
        raise DatasetError(f"{config.out} was made for another listing of images than "
                           f"{listing.root}: use the original --images or another --out")
    return writer


def _run_blocks(job: _Job, blocks: list[int], workers: int, bar: Any) -> list[_BlockResult]:
    results: list[_BlockResult] = []

    def done(result: _BlockResult) -> None:
        results.append(result)
        bar.update(result.samples)

    if workers <= 1 or len(blocks) <= 1:
        _init_worker(job)
        for block in blocks:
            done(_convert(block))
        return results
    with ProcessPoolExecutor(min(workers, len(blocks)), mp_context=get_context("spawn"),
                             initializer=_init_worker, initargs=(job,)) as pool:
        pending: set[Future[_BlockResult]] = {pool.submit(_convert, b) for b in blocks}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                done(future.result())
    return results


def import_mldr(config: ImportConfig) -> ImportReport:
    """Convert a published reinforcement directory into a dalidr store (resumable)."""
    from tqdm import tqdm

    start = time.perf_counter()
    check_op_names()
    listing = dataset_listing(config.images, config.file_list)
    source = read_source(config.source, len(listing))
    k = _first_k(source)
    num_classes = config.num_classes or source.num_classes or len(listing.classes)
    store_config = StoreConfig(recipe=source.recipe, teacher=source.teacher, seed=config.seed,
                               slots=source.slots, k=k, num_classes=num_classes,
                               block_size=config.block_size,
                               slot_group=min(config.slot_group, source.slots))
    writer = _open_store(config, store_config, listing)
    blocks = writer.pending()
    done_samples = len(listing) - sum(len(writer.block_range(b)) for b in blocks)
    job = _Job(config.out, source, k)
    with tqdm(total=len(listing), initial=done_samples, unit="sample", desc="import-mldr",
              disable=not config.progress, dynamic_ncols=True) as bar:
        results = _run_blocks(job, blocks, config.workers, bar)
    problems = [p for r in results for p in r.problems]
    if problems:
        shown = "\n  ".join(problems[:_MAX_PROBLEMS])
        more = f"\n  ... and {len(problems) - _MAX_PROBLEMS} more" if len(
            problems) > _MAX_PROBLEMS else ""
        failed = sum(1 for r in results if r.problems)
        raise DatasetError(f"{len(problems)} problem(s) in {failed} block(s) of {source.root} "
                           f"(other blocks are committed; fix these files and rerun to "
                           f"resume):\n  {shown}{more}")
    ok = [r for r in results if not r.problems]
    writer.finish()  # the commit summary of the complete store
    committed = int(writer.committed().sum())
    return ImportReport(
        samples=len(listing), slots=source.slots, k=k,
        views_converted=sum(r.views for r in ok),
        probabilities_converted=sum(r.probabilities for r in ok),
        blocks_written=len(ok), blocks_committed=committed, num_blocks=writer.num_blocks,
        seconds=time.perf_counter() - start, source_bytes=source.source_bytes,
        store_bytes=_store_bytes(config.out), recipe=source.recipe, mean=source.mean,
        std=source.std)


# ----------------------------------------------------------------------------- command line


def _run(args: argparse.Namespace) -> int:
    config = ImportConfig(
        source=Path(args.rdata_dir), images=Path(args.images), out=args.out,
        file_list=Path(args.file_list) if args.file_list else None, workers=args.workers,
        block_size=args.block_size, slot_group=args.slot_group, num_classes=args.num_classes,
        seed=args.seed, progress=not args.no_progress)
    report = import_mldr(config)
    ratio = report.source_bytes / report.store_bytes if report.store_bytes else math.nan
    print(f"imported {report.samples} samples x {report.slots} views x top-{report.k} "
          f"({report.views_converted} views, {report.probabilities_converted} probabilities "
          f"converted and verified in this run) in {report.seconds:.1f} s; "
          f"{report.blocks_committed}/{report.num_blocks} blocks committed")
    if report.store_bytes:
        print(f"source {report.source_bytes / 1e6:.1f} MB -> store "
              f"{report.store_bytes / 1e6:.1f} MB ({ratio:.1f}x smaller)")
    print(f"recipe {report.recipe.variant.value} at {report.recipe.output_size} px; train with "
          f"LoaderConfig(mean={report.mean}, std={report.std})")
    return 0


def register(subparsers: Any) -> None:
    """Add `dalidr import-mldr` to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "import-mldr", help="import the paper's published reinforcements (apple/ml-dr) safely",
        description="Convert a directory of the paper's {index}.pth.tar reinforcement files "
                    "(ImageNet+, ...) into a dalidr store, loading every file with a "
                    "restricted unpickler. Rerun the same command to resume.")
    parser.add_argument("rdata_dir", help="directory of {index}.pth.tar files and "
                        "config.pth.tar (the extracted reinforced_data.tar.gz)")
    parser.add_argument("--images", required=True, help="the dataset the reinforcements "
                        "index: ImageFolder root (torchvision order) or --file-list's root; "
                        "not tar shards (the paper's stores index ImageFolder order)")
    parser.add_argument("--out", required=True, help="store path or URL")
    parser.add_argument("--file-list", help="'<relative path> <label>' lines in the paper's "
                        "index order")
    parser.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1),
                        help="converting processes (default: all cores)")
    parser.add_argument("--block-size", type=int, default=1024, help="samples per store block")
    parser.add_argument("--slot-group", type=int, default=5, help="slots per store chunk")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="label space (default: the config's, else the dataset's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the epoch plans")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run)

