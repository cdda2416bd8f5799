"""The teacher pass, `dalidr reinforce`: label every stored view with the ensemble's top-k.

Paper Sec. 2.1-2.2: for each (sample, slot) the augmentation parameters are drawn from
(seed, sample, slot) (`dalidr.augment.records`), the view is replayed with the one augmentation
implementation (`dalidr.augment.replay.replay_graph`, the same graph the training loader uses), the
ensemble (`dalidr.teacher`) labels it and the top-k of its mean softmax (`kernels.topk`) goes
to the store (`store.StoreWriter`), block by block, each block committed when complete.

Data path. One DALI pipeline per process: its source hands over, per batch of views (batches
span samples and slots, sample-major inside one block), the batch's distinct encoded images,
each decoded once (`decoders.image`, `mixed` on GPU) and fanned out to its views with
`permute_batch`, so a light teacher is not capped by the decoder; every member view (size,
mean, std) is rendered from those same decoded pixels. DALI prefetches the next batches while
the teacher runs. On GPU the views come out uint8 HWC (a quarter of the float bytes) and are
normalised in torch, which makes them channels_last for free; the forward runs in bf16
autocast, optionally `torch.compile`d with batches padded to one static shape. On CPU the views
are normalised float CHW from DALI and the forward is float32.

Many processes. Under `torchrun` (or any launcher setting RANK/WORLD_SIZE) rank r takes blocks
r, r + world, ... (`StoreWriter.pending`); rank 0 creates the store, the others wait for it to
appear. A batch never crosses a block and its composition depends only on the block, so a
block's bytes do not depend on which rank made it, nor on how many there were, nor on restarts:
`kill -9` at any point and the same command resumes from the committed blocks, producing a
store byte-identical to an uninterrupted run. Trade-off: the last batch of each block is short
(at most one partly filled batch per block, ~1% of a 2048 x 400-view block at batch 512).
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dalidr.augment.recipe import PRESETS, Recipe, load_recipe
from dalidr.data.data_source import ShardSource
from dalidr.data.dataset import DatasetListing, list_dataset
from dalidr.data.shards import SHARDS_HELP, DataSpec
from dalidr.errors import DatasetError, ImageError, OptionError, StoreError
from dalidr.ranks import local_cuda_index, rank_and_world
from dalidr.teacher.ensemble import Ensemble, build_teacher
from dalidr.teacher.resume import check_resume
from dalidr.teacher.views import ViewSource, decodes, view_pipeline
from kernels.topk import ensemble_topk
from store.config import StoreConfig, block_size_for
from store.derived import write_derived_block
from store.difficulty_pass import block_difficulty
from store.manifest import Manifest, scan_manifest
from store.reader import StoreReader
from store.sources import has_sources, write_sources
from store.writer import StoreWriter, create_store, interrupted_creation

__all__ = ["CompileMode", "Labeller", "ReinforceConfig", "ReinforceReport", "forward_settings",
           "reinforce", "register"]


class CompileMode(enum.Enum):
    """Whether the teacher forward goes through `torch.compile`."""

    AUTO = "auto"  # on GPU only (CPU compile time rarely pays back on a small run)
    ON = "on"
    OFF = "off"


@dataclass(frozen=True)
class ReinforceConfig:
    """One teacher pass, as given on the command line."""

    # Dataset: an ImageFolder tree of JPEGs, the root of `file_list`'s relative paths, or
    # webdataset tar shards (`dalidr.data.shards`).
    data: DataSpec
    # Ensemble, `NAME[@CHECKPOINT][,NAME...]` (timm names, local checkpoints).
    teacher: str
    # Reinforcement recipe (records are drawn with it).
    recipe: Recipe
    # Stored views per sample, and teacher classes kept per view.
    slots: int
    k: int
    # Output store path or fsspec URL; rerunning the same command resumes it.
    out: str
    # Optional `<path> <label>` file list instead of an ImageFolder tree.
    file_list: Path | None = None
    # Seed of the records.
    seed: int = 0
    # Views per teacher batch.
    batch_size: int = 256
    # Store layout (see store.config); block_size None: `block_size_for(N)` (2048 up to 268M
    # samples, then doubled so the store keeps at most 131,072 blocks).
    block_size: int | None = None
    slot_group: int = 5
    # "auto" (GPU of LOCAL_RANK if CUDA is available, else CPU), "cpu", "cuda" or "cuda:N".
    device: str = "auto"
    # DALI worker threads per process.
    num_threads: int = 4
    compile: CompileMode = CompileMode.AUTO
    # Load timm's pretrained weights for members without a checkpoint (needs the model hub).
    pretrained: bool = False
    # Or give them random weights seeded from `seed` and the member's index, the same on every
    # rank and resume (tests, benchmarks). Neither: a member without a checkpoint is refused.
    random_teacher: bool = False
    # Record unreadable images as skipped instead of failing.
    skip_bad: bool = False
    # Show a progress bar (rank 0 only).
    progress: bool = True
    # Seconds a rank other than 0 waits for rank 0 to create the store.
    wait_timeout: float = 3600.0


@dataclass(frozen=True)
class ReinforceReport:
    """What one process did."""

    rank: int
    world: int
    blocks_written: tuple[int, ...]
    views: int
    seconds: float
    committed: int
    num_blocks: int
    skipped_samples: tuple[int, ...] = field(default=())
    # Views labelled after the first batch, and the seconds they took (steady state: without
    # the start-up, i.e. graph building, torch.compile and the first batch's latency).
    steady_views: int = 0
    steady_seconds: float = 0.0


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_cuda_index() or 0}"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise OptionError.choice("device", name, "auto, cpu, cuda, cuda:N") from exc
    if device.type not in ("cpu", "cuda"):
        raise OptionError.choice("device", name, "auto, cpu, cuda, cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


def _num_classes(listing: DatasetListing, file_list: Path | None) -> int:
    return len(listing.classes) if file_list is None else int(listing.labels.max()) + 1


# --- the store: create once (rank 0), open everywhere -------------------------------------

def _scan(listing: DatasetListing, skip_bad: bool, progress: bool) -> Manifest:
    try:
        return scan_manifest(listing.source, listing.paths, listing.labels, skip_bad=skip_bad,
                             progress=progress)
    except (ImageError, DatasetError) as exc:
        raise type(exc)(f"{exc} (rerun with --skip-bad to record it as skipped)") from exc


def _check_listing(manifest: Manifest, listing: DatasetListing, url: str) -> None:
    """Cheap resume check (no hashing): same paths, labels and file sizes as the store's."""
    difference = manifest.check_listing(listing)
    if difference is not None:
        raise DatasetError(f"{url} was made from another dataset than {listing.root}: "
                           f"{difference}; use the same data or another --out")


def _open_writer(url: str, config: StoreConfig, listing: DatasetListing, skip_bad: bool,
                 rank: int, timeout: float, progress: bool = True) -> StoreWriter:
    from store.location import locate

    if rank == 0:
        exists = locate(url, read_only=False).exists("zarr.json")
        if exists and not _openable(url) and interrupted_creation(url, config):
            exists = False
        if not exists:
            create_store(url, _scan(listing, skip_bad, progress), config, overwrite=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            writer = StoreWriter(url)
            break
        except (StoreError, ValueError, KeyError, OSError):
            if rank == 0:
                raise
        if time.monotonic() > deadline:
            raise StoreError(f"rank {rank}: {url} was not created by rank 0 within {timeout:.0f} s")
        time.sleep(0.2)
    check_resume(url, writer.config, config)
    _check_listing(writer.layout.manifest, listing, url)
    if rank == 0:
        _record_sources(writer, listing)
    return writer


def _record_sources(writer: StoreWriter, listing: DatasetListing) -> None:
    """A store made from tar shards records where each sample's member lies (`store.sources`),
    so that loaders need not index the shards: right after creation, or on resume when a kill
    left it unwritten or unsealed (written whole again: it is a function of the listing)."""
    source = listing.source
    if isinstance(source, ShardSource) and not has_sources(writer.layout):
        write_sources(writer.layout, source.for_paths(writer.layout.manifest.paths))


def _openable(url: str) -> bool:
    try:
        StoreWriter(url)
        return True
    except (StoreError, ValueError, KeyError, OSError):
        return False


# --- the teacher side ---------------------------------------------------------------------

class Labeller:
    """Views in, top-k out: normalise (GPU), forward (bf16 autocast, channels_last and
    torch.compile on GPU), fused top-k. `__call__` takes DALI outputs, `label` torch views."""

    def __init__(self, ensemble: Ensemble, device: torch.device, k: int, batch_size: int,
                 compile_mode: CompileMode) -> None:
        self.device, self.k, self.batch_size = device, k, batch_size
        self.gpu = device.type == "cuda"
        ensemble = ensemble.to(device)
        if self.gpu:
            ensemble = ensemble.to(memory_format=torch.channels_last)
        use_compile = compile_mode is CompileMode.ON or (compile_mode is CompileMode.AUTO
                                                         and self.gpu)
        self.forward: Callable[[list[torch.Tensor]], torch.Tensor] = (
            torch.compile(ensemble, dynamic=False) if use_compile else ensemble)
        self.pad = use_compile  # compiled: one static batch shape
        self.norm = [(torch.tensor(v.mean, device=device).view(1, 3, 1, 1) * 255,
                      torch.tensor(v.std, device=device).view(1, 3, 1, 1) * 255)
                     for v in ensemble.views]

    def _tensor(self, output: Any, view: int) -> torch.Tensor:
        if not self.gpu:
            return torch.from_numpy(np.array(output.as_tensor()))
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = output.as_tensor()
        hwc = torch.empty(dense.shape(), dtype=torch.uint8, device=self.device)
        feed_ndarray(dense, hwc, cuda_stream=torch.cuda.current_stream(self.device))
        mean, std = self.norm[view]
        return (hwc.permute(0, 3, 1, 2).float() - mean) / std  # channels_last

    def __call__(self, outputs: tuple[Any, ...]) -> tuple[np.ndarray, np.ndarray]:
        classes, probs = self.label([self._tensor(out, v) for v, out in enumerate(outputs)])
        return classes.cpu().numpy(), probs.cpu().numpy()

    def label(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k classes and probabilities of normalised views, one [B, 3, H, W] per view."""
        count = views[0].shape[0]
        if self.pad and count < self.batch_size:
            views = [torch.cat([x, x[-1:].expand(self.batch_size - count, *x.shape[1:])])
                     for x in views]
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.gpu
                    else contextlib.nullcontext())
        try:
            with torch.inference_mode(), autocast:
                logits = self.forward(views)[:, :count]
            classes, probs = ensemble_topk(logits, self.k)
        except torch.OutOfMemoryError as exc:
            raise _oom(self.batch_size) from exc
        return classes, probs


@contextlib.contextmanager
def forward_settings(device: torch.device) -> Iterator[None]:
    """The torch settings of the teacher forward, restored afterwards.

    On CPU, oneDNN's convolutions may round differently with the number of threads, and a
    block's bytes must not depend on how many processes share the machine. So every process
    runs the forward on exactly one intra-op thread, with oneDNN on (4-5x faster than ATen's
    own CPU convolutions here) and deterministic algorithms: more cores are used through more
    processes (`torchrun --nproc_per_node`), never more threads, and the store is the same
    whatever the world size. One thread also leaves the other cores to DALI (oversubscribed
    OpenMP threads spin and slow the forward a hundredfold). On GPU nothing changes."""
    if device.type != "cpu":
        yield
        return
    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def _oom(batch_size: int) -> OptionError:
    return OptionError(f"out of GPU memory with --batch {batch_size}; lower it, e.g. "
                       f"--batch {max(batch_size // 2, 1)}")


# --- the pass -----------------------------------------------------------------------------

def reinforce(config: ReinforceConfig, rank: int | None = None,
              world: int | None = None) -> ReinforceReport:
    """Run this process's share of the teacher pass; every bad input is refused up front."""
    start = time.perf_counter()
    rank, world = rank_and_world(rank, world)
    if config.batch_size < 1:
        raise OptionError(f"option 'batch' is {config.batch_size}; must be at least 1")
    if config.num_threads < 1:
        raise OptionError(f"option 'threads' is {config.num_threads}; must be at least 1 "
                          "(DALI worker threads per process, e.g. --threads 4)")
    device = _device(config.device)
    listing = list_dataset(config.data, config.file_list)
    num_classes = _num_classes(listing, config.file_list)
    if not 1 <= config.k <= num_classes:
        raise OptionError(f"--topk {config.k} must be in 1..{num_classes} (the dataset's "
                          "number of classes)")
    ensemble = build_teacher(config.teacher, num_classes, config.pretrained,
                             size=config.recipe.teacher_size,
                             random_seed=config.seed if config.random_teacher else None)
    store_config = StoreConfig(config.recipe, ensemble.describe(), config.seed, config.slots,
                               config.k, num_classes,
                               config.block_size or block_size_for(len(listing)),
                               min(config.slot_group, config.slots),
                               teacher_members=ensemble.identity())
    writer = _open_writer(config.out, store_config, listing, config.skip_bad, rank,
                          config.wait_timeout, progress=config.progress)
    blocks = writer.pending(rank, world)
    labeller = Labeller(ensemble, device, config.k, config.batch_size, config.compile)
    manifest = writer.layout.manifest
    data = listing.source.for_paths(manifest.paths)
    known_bad: set[int] = {int(i) for i in np.flatnonzero(manifest.skipped)}
    total = sum(len(writer.block_range(b)) for b in blocks) * config.slots
    bar = _progress(config.progress and rank == 0, total, writer)
    written: list[int] = []
    views = 0
    clock = _Clock()
    scored = _Scorer(writer)
    # A block committed just before a kill may lack its scores: give them before going on.
    rows = writer.layout.commit_rows()
    for block in range(rank, writer.num_blocks, world):
        if rows[block, 0] != 0 and rows[block, -1] == 0:
            scored(block)
    with forward_settings(device):
        try:
            while True:
                todo = [b for b in blocks if b not in written]
                if not todo:
                    break
                source = ViewSource(writer, todo, data, config.batch_size, known_bad,
                                 config.skip_bad)
                try:
                    views += _run_blocks(source, ensemble, labeller, config, device, writer,
                                         written, bar, clock, scored)
                except _BadBatch as bad:
                    known_bad |= bad.samples  # restart from the first unwritten block
        finally:
            bar.close()
    writer.finish()  # the commit summary, once the last block of the store is committed
    steady = time.perf_counter() - clock.first if clock.first is not None else 0.0
    return ReinforceReport(rank, world, tuple(written), views, time.perf_counter() - start,
                           int(writer.committed().sum()), writer.num_blocks,
                           tuple(sorted(known_bad)), views - clock.first_views, steady)


@dataclass
class _Clock:
    """When the first batch was done, and how many views it had."""

    first: float | None = None
    first_views: int = 0


class _BadBatch(Exception):
    def __init__(self, samples: set[int]) -> None:
        super().__init__(f"undecodable samples {sorted(samples)}")
        self.samples = samples


class _Scorer:
    """Each committed block's difficulty (`store.difficulty_pass`), written right after its
    commit from what the block now holds, so a curriculum can use the store as soon as the
    pass ends (a block committed before a crash is scored by `dalidr difficulty`)."""

    def __init__(self, writer: StoreWriter) -> None:
        self.writer = writer
        self._reader: StoreReader | None = None

    def __call__(self, block: int) -> None:
        if self._reader is None:  # opened once the first block is committed
            self._reader = StoreReader(self.writer.layout.url)
        write_derived_block(self.writer.layout, block, *block_difficulty(self._reader, block))


def _run_blocks(source: ViewSource, ensemble: Ensemble, labeller: Labeller,
                config: ReinforceConfig, device: torch.device, writer: StoreWriter,
                written: list[int], bar: Any, clock: _Clock, scored: _Scorer) -> int:
    device_id = device.index if device.type == "cuda" else None
    if device_id is None and device.type == "cuda":
        device_id = torch.cuda.current_device()
    pipe = view_pipeline(config.recipe, ensemble.views, source, config.batch_size,
                          config.num_threads, device_id)
    views = 0
    try:
        while True:
            try:
                outputs = pipe.run()
            except StopIteration:
                break
            except RuntimeError as exc:
                raise _culprits(exc, source, config) from exc
            batch = source.in_flight.popleft()
            classes, probs = labeller(outputs)
            state = source.open[batch.block]
            state.classes.reshape(-1, config.k)[batch.positions] = classes
            state.probs.reshape(-1, config.k)[batch.positions] = probs
            state.remaining -= len(batch.positions)
            views += len(batch.positions)
            if clock.first is None:
                clock.first, clock.first_views = time.perf_counter(), len(batch.positions)
            bar.update(len(batch.positions))
            _flush(source, writer, written, bar, scored)
        _flush(source, writer, written, bar, scored)
    finally:
        del pipe
    return views


def _flush(source: ViewSource, writer: StoreWriter, written: list[int], bar: Any,
           scored: _Scorer) -> None:
    """Write the leading complete blocks (a block with no views is complete at once), each
    scored for curricula once committed."""
    while source.open:
        block, state = next(iter(source.open.items()))
        if state.remaining > 0:
            return
        writer.write_block(block, state.records, state.classes, state.probs, state.skipped)
        scored(block)
        written.append(block)
        del source.open[block]
        _set_blocks(bar, writer)


def _culprits(exc: RuntimeError, source: ViewSource, config: ReinforceConfig) -> Exception:
    text = str(exc)
    if "out of memory" in text.lower():
        return _oom(config.batch_size)
    suspects: set[int] = set()
    for batch in source.in_flight:
        start = source.writer.block_range(batch.block).start
        suspects |= {start + int(r) for r in batch.unique}
        state = source.open[batch.block]
        chosen = state.records.reshape(-1)[batch.positions]
        if config.recipe.has_mix:
            suspects |= {int(r["partner"]) for r in chosen if r["mix"] != 0}
    bad = {s for s in sorted(suspects) if not _decodes(source, s)}
    if not bad:
        return ImageError(f"replaying a batch failed: {text.strip().splitlines()[0]}")
    if not config.skip_bad:
        names = ", ".join(f"sample {s} ({source.data.describe(s)})" for s in sorted(bad))
        return ImageError(f"cannot decode {names}; rerun with --skip-bad to record it as "
                          "skipped")
    return _BadBatch(bad)


def _decodes(source: ViewSource, sample: int) -> bool:
    try:
        return decodes(source.data.read([sample])[0])
    except DatasetError:
        return False


def _progress(enabled: bool, total: int, writer: StoreWriter) -> Any:
    from tqdm import tqdm

    bar = tqdm(total=total, unit="view", unit_scale=True, dynamic_ncols=True, smoothing=0.05,
               disable=not enabled, desc="reinforce")
    _set_blocks(bar, writer)
    return bar


def _set_blocks(bar: Any, writer: StoreWriter) -> None:
    if not bar.disable:
        bar.set_postfix_str(f"blocks {int(writer.committed().sum())}/{writer.num_blocks}")


# --- command line -------------------------------------------------------------------------

def _run(args: argparse.Namespace) -> int:
    config = ReinforceConfig(
        data=args.data, teacher=args.teacher, recipe=load_recipe(args.recipe),
        slots=args.slots, k=args.topk, out=args.out,
        file_list=Path(args.file_list) if args.file_list else None, seed=args.seed,
        batch_size=args.batch, block_size=args.block_size, slot_group=args.slot_group,
        device=args.device, num_threads=args.threads, compile=CompileMode(args.compile),
        pretrained=args.pretrained, random_teacher=args.random_teacher, skip_bad=args.skip_bad,
        progress=not args.no_progress)
    if args.teacher_size is not None:
        config = replace(config, recipe=config.recipe.replace(teacher_size=args.teacher_size))
    report = reinforce(config)
    rate = report.views / max(report.seconds, 1e-9)
    skipped = f", skipped samples {list(report.skipped_samples)}" if report.skipped_samples else ""
    print(f"rank {report.rank}/{report.world}: wrote {len(report.blocks_written)} blocks, "
          f"{report.views} views in {report.seconds:.1f} s ({rate:.1f} views/s){skipped}; "
          f"{config.out}: {report.committed}/{report.num_blocks} blocks committed")
    return 0


def register(subparsers: Any) -> None:
    """Add `dalidr reinforce` to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "reinforce", help="run the teacher pass: label every stored view (resumable)",
        description="Label every (sample, slot) view with the top-k of a timm ensemble's mean "
                    "softmax and write them to a reinforcement store. Rerun the same command "
                    "to resume; under torchrun (e.g. `torchrun --nproc_per_node 8 --no-python "
                    "dalidr reinforce ...`) ranks share the blocks.")
    parser.add_argument("--data", required=True, help="ImageFolder root of JPEGs (or the root "
                        f"of --file-list's paths), {SHARDS_HELP}")
    parser.add_argument("--file-list", help="'<relative path> <label>' lines instead of "
                        "class folders")
    parser.add_argument("--teacher", required=True,
                        help="NAME[@CHECKPOINT][,NAME...]: timm models, local checkpoints")
    parser.add_argument("--recipe", default="rrc+ra/re",
                        help=f"preset ({', '.join(PRESETS)}) or YAML/JSON file")
    parser.add_argument("--slots", type=int, required=True, help="views per sample")
    parser.add_argument("--topk", type=int, required=True, help="teacher classes per view")
    parser.add_argument("--out", required=True, help="store path or URL")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=256, help="views per teacher batch")
    parser.add_argument("--block-size", type=int, default=None,
                        help="samples per store block (default: 2048, doubled until the store "
                             "has at most 131,072 blocks: 16,384 at 1.4 billion samples)")
    parser.add_argument("--slot-group", type=int, default=5, help="slots per store chunk")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=4, help="DALI threads per process")
    parser.add_argument("--teacher-size", type=int, default=None,
                        help="render every member's view at this side instead of its own")
    parser.add_argument("--compile", choices=[m.value for m in CompileMode], default="auto",
                        help="torch.compile the teacher (auto: on GPU)")
    parser.add_argument("--pretrained", action="store_true",
                        help="timm pretrained weights for members without a checkpoint")
    parser.add_argument("--random-teacher", action="store_true",
                        help="random weights, seeded from --seed, for members without a "
                             "checkpoint (tests and benchmarks: the labels mean nothing)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="record unreadable images as skipped instead of failing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run)
