"""Drop-in DALI loaders for PyTorch training loops: the reinforced store, and plain images.

`ReinforcedLoader` is what a training loop iterates instead of a `DataLoader` (paper Sec. 2.2:
training on a reinforced dataset costs what training on the original costs). Per epoch it takes
the store's epoch plan for this rank and its records and top-k in pieces, first batches first
(`store.pieces`; read ahead in a background thread by `store.prefetch.EpochPrefetcher`, which
reads the next epoch while this one's last eighth is served), reads the planned samples' JPEG
bytes with a thread pool a few batches ahead, and replays each stored view through
`dalidr.augment.replay.replay_graph`, the one augmentation implementation, so the student sees
exactly
the pixels the teacher labelled. Each step yields `(images, targets)`: images `[B, 3, H, W]`
normalised (channels_last on request), targets dense `[B, C]` soft labels (`Densify`) or sparse
`SparseTargets(indices, probs)` for the fused loss (`dalidr.training.losses`).

With probability 1 - p a sample is served from the original data instead: a fresh random
resized crop and flip (drawn with `draw_records` from (seed, sample, epoch), replayed by the same
graph with every other augmentation off) and a one-hot label (the paper's `p` option; p = 1 is
pure reinforced data). All draws are pure functions of (seed, epoch, sample), so a resumed epoch
reproduces its batches exactly.

`PlainLoader` (`dalidr/training/plain_loader.py`) is the ERM baseline built from the same machinery
(`dalidr/training/dali_loader.py`), so comparing their train wall-clock compares only what differs:
replaying stored parameters.

Distributed data parallel: the rank and world size are the explicit arguments, else
`torch.distributed`'s when it is initialised, else torchrun's RANK / WORLD_SIZE (a loader made
before `init_process_group` serves its own shard; inconsistent variables are refused,
`dalidr.ranks`). The store's plan gives disjoint shards of equal length, cut as
`DistributedSampler` cuts them: `LastBatch.DROP` leaves the last N mod world samples out of the
epoch (drop_last=True), `LastBatch.PARTIAL` pads with a few repeated samples (`SHARDS`).
"""

from __future__ import annotations

import contextlib
import copy
import enum
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from nvidia.dali.data_node import DataNode

from dalidr.augment.hashing import keyed, unit_interval
from dalidr.augment.recipe import Recipe
from dalidr.augment.records import draw_records, identity_records
from dalidr.augment.replay import Output, ReplaySpec, replay_graph
from dalidr.data.data_source import DataSource, NamedFileSource
from dalidr.data.dataset import DatasetListing, list_dataset, source_for
from dalidr.data.shards import DataSpec, is_shard_spec
from dalidr.errors import OptionError, StoreError
from dalidr.teacher.skips import skipped_samples
from dalidr.training.dali_loader import (
    EpochSource,
    Labels,
    _check_classes,
    _DaliLoader,
    _one_hot_topk,
    _Part,
)
from dalidr.training.loader_config import (
    SHARDS,
    Augment,
    LastBatch,
    LoaderConfig,
    SparseTargets,
    Targets,
    distributed_rank_world,
)
from dalidr.training.plain_loader import PlainLoader
from store.manifest import Manifest
from store.pieces import PieceSizes
from store.plan import rank_length
from store.prefetch import EpochPrefetcher
from store.reader import EpochData, StoreReader
from store.sources import SourcesView

__all__ = [
    "Targets",
    "LastBatch",
    "Augment",
    "LoaderConfig",
    "SparseTargets",
    "ReinforcedLoader",
    "DatasetCheck",
    "PlainLoader",
    "distributed_rank_world",
]

_STREAM_ORIGINAL = 0x5EED_0001  # seeds the p-coin and the original samples' crops
# Manifest blocks a rank keeps beyond its share (mixing partners, a resumed rank's neighbours).
_SPARE_BLOCKS = 16


class DatasetCheck(enum.Enum):
    """How a loader checks, at start, that a store was made from its data root. Neither reads
    the dataset: full content verification is `dalidr verify STORE --data ROOT`."""

    # List the tree (or read the file list): paths, labels and file sizes must match the
    # store's manifest (compared block by block, never held whole); then hash a small
    # deterministic sample of files. The default.
    LISTING = "listing"
    # Take the store's manifest as the listing (no walk of the tree); hash the sample only.
    MANIFEST = "manifest"


class ReinforcedLoader(_DaliLoader):
    """(images, targets) batches of a reinforced store; see the module docstring.

    `data` is the dataset the store was made from (an ImageFolder tree, a root with a
    `file_list`, or webdataset tar shards: `dalidr.data.shards`); `num_classes`, if given, is
    the model's output size and must match the store's. Starting reads no image beyond a
    small sample (`check`, `DatasetCheck`); pass the dataset's fully hashed `manifest`
    instead to compare every file's hash.
    """

    def __init__(self, store: str | StoreReader, data: DataSpec, config: LoaderConfig,
                 *, num_classes: int | None = None, rank: int | None = None,
                 world: int | None = None, file_list: str | Path | None = None,
                 manifest: Manifest | None = None,
                 check: DatasetCheck = DatasetCheck.LISTING) -> None:
        if not isinstance(check, DatasetCheck):
            raise OptionError.choice("check", check, [c.value for c in DatasetCheck])
        shards = SHARDS[config.last_batch] if isinstance(config, LoaderConfig) else None
        reader = store if isinstance(store, StoreReader) else StoreReader(store)
        if shards is not None and reader.uneven is not shards:
            reader = copy.copy(reader)  # the caller's reader keeps its own policy
            reader.uneven = shards
        rank, world = distributed_rank_world(rank, world)
        view = reader.manifest_view if manifest is None else None
        # The data's listing, when one is read (`DatasetCheck.LISTING`); None otherwise.
        self.listing: DatasetListing | None = None
        # Where shard members lie, read per block (`store.sources`); None for a folder, for a
        # listing, and for a store without the table (its shards are then indexed as before).
        self.sources: SourcesView | None = None
        if view is not None and check is DatasetCheck.LISTING:
            self.listing = list_dataset(data, file_list)
            if len(self.listing) != reader.num_samples:
                view = None  # files the teacher pass skipped, deleted since: compared whole
        elif view is not None and is_shard_spec(data):
            self.sources = SourcesView.open(reader.layout)
            view = view if self.sources is not None else None
        if view is not None:
            # The store's manifest read per block, as the rank's samples need it: this rank
            # holds its share of the blocks' rows, never every path (`store.manifest_view`).
            share = -(-reader.num_blocks // world) + _SPARE_BLOCKS
            view.reserve(share)
            source: DataSource
            if self.listing is not None:
                # Compared block by block, streamed (`StoreReader.check_dataset`): the
                # listing then has the store's paths in its order, so it serves sample i.
                reader.check_dataset(self.listing)
                source = self.listing.source
            elif self.sources is None:
                source = NamedFileSource(Path(str(data)), reader.num_samples, view.paths)
                reader.check_sampled_content(source, str(data))
            else:  # shard members located through the store's table, no shard indexed
                self.sources.reserve(share)
                source = self.sources.source(data, view)
                reader.check_sampled_content(source, source.name)
            labels: Labels = view.column("label")
            self.image_hw: Labels = view.column("image_hw")
            unreadable = view.skipped_samples()
        else:
            stored = reader.manifest
            if manifest is not None:
                reader.check_dataset(manifest)
                listing = _served_listing(data, stored, reader.config.num_classes)
            elif check is DatasetCheck.MANIFEST:
                listing = _served_listing(data, stored, reader.config.num_classes)
                reader.check_dataset(listing)
            else:
                listed = self.listing or list_dataset(data, file_list)
                reader.check_dataset(listed)
                listing = _served_listing(data, stored, len(listed.classes), listed.classes,
                                          listed.source.for_paths(stored.paths))
            self.listing, source, labels = listing, listing.source, listing.labels
            self.image_hw = stored.image_hw
            unreadable = np.flatnonzero(stored.skipped)
        _check_classes(num_classes, reader.config.num_classes, f"store {reader.url}")
        super().__init__(source, labels, config, reader.config.num_classes, rank, world)
        self.reader = reader
        self.recipe: Recipe = reader.config.recipe
        self.has_partner = self.recipe.has_mix
        # The original samples' transform: the recipe's crop and flip, nothing else.
        self._original = self.recipe.replace(ra_num_ops=0, erase_prob=0.0, mix_prob=0.0)
        # What grows with the store (the commit map, every view's skip mark) is read in a
        # thread while DALI builds the graph (seconds of tracing and compiling); errors are
        # still raised here.
        with ThreadPoolExecutor(1, thread_name_prefix="dalidr-start") as pool:
            started = pool.submit(self._start, unreadable)
            try:
                self._pipe = self._build(check=False)
            except BaseException:
                with contextlib.suppress(Exception):
                    started.result()[1].close()
                raise
            self._skipped, self._prefetcher = started.result()
        try:
            self._check_not_empty()
        except OptionError:
            self._prefetcher.close()
            raise

    def _start(self, unreadable: np.ndarray) -> tuple[np.ndarray, EpochPrefetcher]:
        """The samples no epoch serves, and the prefetcher reading epoch 0 (StoreError if the
        teacher pass has not finished)."""
        reader = self.reader
        done = reader.committed()
        if not done.all():
            block = int(np.flatnonzero(~done)[0])
            raise StoreError(f"store {reader.url} is incomplete: {int((~done).sum())} of "
                             f"{len(done)} blocks are not committed (first: block {block}); "
                             "finish the teacher pass first")
        # Samples the teacher pass marked skipped (`reinforce --skip-bad`) are never read or
        # served: the plan takes them out of the epoch's order before cutting it among ranks
        # (`store.plan`), so every rank runs the same number of steps and no other sample sits
        # out for them.
        skipped = np.union1d(skipped_samples(reader.layout), unreadable)
        # Pieces of whole batches: the first one batch, so the first batch waits only for
        # the blocks of its own views.
        batch = self.config.batch_size
        sizes = PieceSizes(first=batch, largest=max(batch, PieceSizes.largest))
        return skipped, EpochPrefetcher(reader, self.rank, self.world, start_epoch=0,
                                        skipped=skipped, curriculum=self.config.curriculum,
                                        sizes=sizes)

    def _served(self) -> int:
        return self.reader.num_samples - len(self._skipped)

    def _jumped(self) -> None:
        self._prefetcher.restart(self.epoch, self.start, self.step * self.config.batch_size)

    def _epoch_length(self, start: int = 0) -> int:
        return rank_length(self._served(), start, self.world, self.reader.uneven)

    def _fields(self) -> tuple[str, ...]:
        return ReplaySpec(self.recipe).fields

    def _images(self, jpegs: DataNode, partner_jpegs: DataNode | None,
                inputs: dict[str, DataNode], device: str) -> DataNode:
        return replay_graph(jpegs, partner_jpegs, inputs,
                            ReplaySpec(self.recipe, output=Output.UINT8_HWC), device)

    def original_mask(self, epoch: int, samples: np.ndarray) -> np.ndarray:
        """Which of `samples` are served from the original data in `epoch` (the 1 - p coin)."""
        coins = unit_interval(keyed(self.config.seed, _STREAM_ORIGINAL, epoch, samples))
        return coins >= self.config.p

    def original_records(self, epoch: int, samples: np.ndarray) -> np.ndarray:
        """Records of the original samples' views: a fresh crop and flip, nothing else."""
        drawn = draw_records(self._original, self.config.seed + _STREAM_ORIGINAL, samples,
                             np.array([epoch]), self.image_hw[samples],
                             num_samples=self.reader.num_samples)[:, 0]
        records = identity_records(self.recipe, len(samples))
        records["crop"], records["flip"] = drawn["crop"], drawn["flip"]
        if self.recipe.has_mix:
            records["partner"] = samples
        return records

    def _epoch_data(self, epoch: int, start: int) -> EpochSource:
        return _PiecewiseEpoch(self, epoch, start)

    def _piece(self, epoch: int, start: int, step: int) -> EpochData:
        """The piece of `epoch` (from global position `start`) holding plan step `step`, its
        original samples (the 1 - p coin) made fresh. The piece's arrays are this loader's
        alone (copied out for it by the prefetcher): the original samples are written in
        place."""
        data = self._prefetcher.get(epoch, start, step)
        samples = data.samples
        records, classes, probs = data.records, data.targets.classes, data.targets.probs
        original = np.flatnonzero(self.original_mask(epoch, samples))
        if original.size:
            records[original] = self.original_records(epoch, samples[original])
            classes[original], probs[original] = _one_hot_topk(
                self.labels[samples[original]], self.reader.config.k, self.num_classes)
        return data

    def close(self) -> None:
        self._prefetcher.close()
        super().close()


class _PiecewiseEpoch:
    """One rank's epoch served from the prefetcher's pieces, holding one piece at a time (the
    loader's pieces are whole batches, so a batch never spans two)."""

    def __init__(self, loader: ReinforcedLoader, epoch: int, start: int) -> None:
        self.loader, self.epoch, self.start = loader, epoch, start
        self._piece: EpochData | None = None

    def _holds(self, lo: int) -> bool:
        return self._piece is not None and lo in self._piece.steps

    def ready(self, lo: int) -> bool:
        return self._holds(lo) or self.loader._prefetcher.ready(self.epoch, self.start, lo)

    def part(self, lo: int, hi: int) -> _Part:
        if not self._holds(lo):
            self._piece = self.loader._piece(self.epoch, self.start, lo)
        piece = self._piece
        assert piece is not None and hi <= piece.steps.stop, "a batch spans two pieces"
        a, b = lo - piece.steps.start, hi - piece.steps.start
        return _Part(piece.samples[a:b], piece.records[a:b], piece.targets.classes[a:b],
                     piece.targets.probs[a:b])


def _served_listing(root: DataSpec, manifest: Manifest, num_classes: int,
                    classes: tuple[str, ...] | None = None,
                    source: DataSource | None = None) -> DatasetListing:
    """The store's own samples in `root`: the loader reads them through the manifest's paths
    (files under a folder, or shard members by name)."""
    names = classes if classes is not None else tuple(str(c) for c in range(num_classes))
    if source is None:
        source = source_for(root, manifest.paths)
    return DatasetListing(source.root, manifest.paths, manifest.labels, names,
                          manifest.sizes, source)
