"""Reading a reinforcement store: committed blocks only, one epoch's views at a time.

`StoreReader` opens a store (checking its schema and, given the dataset's manifest, its
fingerprint), sees only committed blocks, and reads an epoch as the plan of `store.plan`
prescribes: per block and array it decodes the single chunk holding the epoch's slot group,
picks each sample's slot, and returns records (of `record_dtype(recipe)`) and top-k targets in
training order. With the default chunking that reads about 5x the bytes the epoch uses, against
400x for reading whole samples, and decodes ImageNet's epoch of metadata in a few seconds.
Training reads an epoch in pieces instead, first batches first, each block once
(`store.pieces`), in a background thread (`store.prefetch.EpochPrefetcher`).

Failures name their culprit: a missing object (array, block and key), a chunk whose checksum or
compression fails (array, block and slot group), a block that is not committed (block and its
samples), a dataset that is not the store's (the first differing sample).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dalidr.augment.records import record_dtype
from dalidr.data.data_source import DataSource
from dalidr.data.dataset import DatasetListing
from dalidr.errors import DatasetError, StoreError
from store.commit_summary import read_commit_summary
from store.config import StoreConfig
from store.curriculum import Curriculum, Measure, Schedule, curriculum_slots
from store.derived import read_derived
from store.gather import read_concurrently
from store.layout import (
    CLASSES,
    COMMIT,
    CORRUPT_CHUNK_ERRORS,
    PROB_GAPS,
    StoreLayout,
    group_digest,
    open_layout,
)
from store.location import redacted
from store.manifest import SAMPLED_HASHES, Manifest, content_differences
from store.manifest_view import ManifestView
from store.plan import EpochPlan, PlanSpec, UnevenShards, plan_epoch
from store.validate import decode_views

__all__ = ["TopKTargets", "EpochData", "StoreReader"]

# Blocks decoded at once (one zarr call per array): bounds memory (about 3 MB of decoded
# chunks per block of 4,096 samples x 5 slots), while scattered blocks still overlap.
_BATCH_BLOCKS = 8
_CURRICULUM_AT_ONCE = 1 << 18  # samples a curriculum weighs at once (~150 MB of temporaries)


@dataclass(frozen=True, eq=False)
class TopKTargets:
    """The teacher's top-k per view, by decreasing probability."""

    # Class indices, [n, k] int32.
    classes: np.ndarray
    # Probabilities as the store returns them (sqrt-quantised), [n, k] float32.
    probs: np.ndarray

    def __len__(self) -> int:
        return len(self.classes)


@dataclass(frozen=True, eq=False)
class EpochData:
    """Everything one rank needs for one epoch, or a piece of it, besides the images, in
    training order: the views of plan steps `steps` (`read_epoch`: every step; a piece from
    `store.pieces`: consecutive steps). Step s is global position start + rank + world * s
    (modulo the samples served) of the epoch's order (`store.plan`)."""

    plan: EpochPlan
    # Parameter records of the views of `steps`, [len(steps)] of record_dtype(recipe).
    records: np.ndarray
    targets: TopKTargets
    # The plan steps (indices into plan.samples) these arrays hold.
    steps: range

    @property
    def samples(self) -> np.ndarray:
        """Sample indices of `steps`, in training order."""
        return self.plan.samples[self.steps.start:self.steps.stop]

    @property
    def slots(self) -> np.ndarray:
        """The stored view (slot) of each of `samples`."""
        return self.plan.slots[self.steps.start:self.steps.stop]

    def __len__(self) -> int:
        return len(self.steps)


class StoreReader:
    """Read access to a store; pass the dataset's manifest to check the store belongs to it."""

    def __init__(self, url: str, dataset: Manifest | None = None,
                 uneven: UnevenShards = UnevenShards.PAD) -> None:
        self.layout: StoreLayout = open_layout(url, read_only=True)
        self.uneven = uneven
        self._present: set[int] = set()  # blocks checked committed (they stay so)
        self._rows: np.ndarray | None = None  # the commit map, read when first needed
        self._complete = False  # whether `_rows` came from the commit summary
        if dataset is not None:
            self.check_dataset(dataset)

    @property
    def config(self) -> StoreConfig:
        return self.layout.config

    @property
    def url(self) -> str:
        return self.layout.url

    @property
    def num_samples(self) -> int:
        return self.layout.num_samples

    @property
    def num_blocks(self) -> int:
        return self.layout.num_blocks

    @property
    def manifest(self) -> Manifest:
        """The store's manifest (read and checked against its fingerprint once)."""
        return self.layout.manifest

    @property
    def manifest_view(self) -> ManifestView | None:
        """The manifest read per block (`store.manifest_view`), None for a store made before
        the manifest's block digests (then `manifest` reads it whole)."""
        return self.layout.manifest_view

    def check_sampled_content(self, source: DataSource, root: str | Path,
                              sampled_hashes: int = SAMPLED_HASHES) -> None:
        """The start check of a loader that trusts the store's manifest as the listing, read
        per block: hash `sampled_hashes` files of `source` (sample i is the store's sample i)
        against it, reading only their blocks. DatasetError naming the first that differs."""
        view = self.layout.manifest_view
        if view is None:
            raise StoreError(f"{self.url}: no manifest block digests; use check_dataset")
        indices = view.sampled_indices(sampled_hashes)
        bad = content_differences(source, indices, view.gather("sha256", indices))
        if bad:
            raise DatasetError(f"store {self.url} was not made from {root}: "
                               f"{self._sampled_differ(bad, len(indices), root)}")

    def _sampled_differ(self, bad: list[str], sampled: int, root: str | Path) -> str:
        return (f"{bad[0]} ({len(bad)} of {sampled} sampled files differ; `dalidr verify "
                f"{self.url} --data {root}` checks all)")

    def check_dataset(self, dataset: Manifest | DatasetListing,
                      sampled_hashes: int = SAMPLED_HASHES) -> None:
        """DatasetError naming the first differing sample unless `dataset` is the store's.

        A `Manifest` (every file hashed) is compared whole. A `DatasetListing` costs metadata
        only: paths, labels and file sizes against the manifest (read per block and not kept,
        when the store has the manifest's block digests), then the content hashes of
        `sampled_hashes` files chosen deterministically (`dalidr verify` hashes them all)."""
        if isinstance(dataset, Manifest):
            if dataset.fingerprint == self.layout.fingerprint:
                return
            difference = self.manifest.first_difference(dataset)
            raise DatasetError(
                f"store {self.url} was made for another dataset (fingerprint "
                f"{self.layout.fingerprint[:12]}, the dataset's is {dataset.fingerprint[:12]}): "
                f"{difference or 'the manifest arrays disagree with the stored fingerprint'}"
            )
        view = self.manifest_view if "manifest" not in self.layout.__dict__ else None
        if view is not None and (len(dataset) == self.num_samples or not view.has_skipped):
            # Per block, streamed: the manifest is never held whole (`ManifestView`). The
            # listing then has the store's paths in its order, so sample i is its sample i.
            difference = view.check_listing(dataset)
            if difference is None:
                if sampled_hashes > 0:
                    self.check_sampled_content(dataset.source, dataset.root, sampled_hashes)
                return
        else:
            difference = self.manifest.check_listing(dataset)
            if difference is None and sampled_hashes > 0:
                bad = self.manifest.check_content(
                    dataset.source.for_paths(self.manifest.paths),
                    self.manifest.sampled_indices(sampled_hashes))
                if bad:
                    difference = self._sampled_differ(bad, sampled_hashes, dataset.root)
        if difference is not None:
            raise DatasetError(f"store {self.url} was not made from {dataset.root}: "
                               f"{difference}")

    def _commit_rows(self, refresh: bool = False) -> np.ndarray:
        """Per block: block digest (0: not committed), then one digest per slot group. From
        the commit summary of a complete store (a few objects), else the commit map (one
        object per block), re-read on `refresh` until the store is complete."""
        if self._rows is not None and (self._complete or not refresh):
            return self._rows
        summary = read_commit_summary(self.layout)
        if summary is not None:
            self._rows, self._complete = summary.digests, True
        else:
            self._rows = self.layout.commit_rows()[:, :1 + self.config.num_groups]
        return self._rows

    def committed(self) -> np.ndarray:
        """Per block, whether it is complete (only complete blocks are ever read)."""
        return self._commit_rows(refresh=True)[:, 0] != 0

    def committed_samples(self) -> np.ndarray:
        """Indices of the samples in committed blocks."""
        blocks = np.flatnonzero(self.committed())
        return np.concatenate([np.arange(self.layout.block_range(int(b)).start,
                                         self.layout.block_range(int(b)).stop) for b in blocks]
                              ) if blocks.size else np.zeros(0, np.int64)

    # ------------------------------------------------------------------ reading

    def _require(self, blocks: np.ndarray) -> None:
        """StoreError unless every block is committed. (Its shard objects are not looked up
        one by one, a request each on object storage: a missing one reads as fill values,
        fails its digest, and `_verify` then names it.)"""
        blocks = np.unique(blocks)
        if all(int(b) in self._present for b in blocks):
            return  # committed blocks stay committed: no need to read the commit map again
        rows = self._commit_rows()
        for b in (int(b) for b in blocks if rows[int(b), 0] == 0):  # committed since: one row
            try:
                rows[b] = np.asarray(self.layout.array(COMMIT)[b],
                                     dtype=np.uint64)[:rows.shape[1]]
            except CORRUPT_CHUNK_ERRORS as exc:
                raise StoreError(f"{self.url}: the commit entry of block {b} is corrupt: "
                                 f"{redacted(exc)}") from exc
        done = rows[:, 0] != 0
        missing = blocks[~done[blocks]]
        if missing.size:
            b = int(missing[0])
            r = self.layout.block_range(b)
            raise StoreError(f"{self.url}: block {b} (samples {r.start}..{r.stop - 1}) is not "
                             f"committed; {missing.size} needed block(s) are incomplete")
        self._present.update(int(b) for b in blocks)

    def _missing_shard(self, block: int) -> StoreError | None:
        """The error naming a shard object of committed `block` that does not exist, if any."""
        for name in self.layout.data_names:
            key = self.layout.shard_key(name, block)
            if not self.layout.location.exists(key):
                return StoreError(f"{self.url}: array {name!r}, chunk of block {block}: object "
                                  f"{key!r} is missing although the block is committed")
        return None

    def _read(self, name: str, blocks: np.ndarray, group: int) -> np.ndarray:
        """[samples of sorted `blocks`, slots of `group`, ...] of array `name` (whole chunks).
        Scattered blocks are fetched and decoded concurrently, in one call on zarr's event
        loop: one round trip's latency for all of them, not one per block."""
        slots = self.config.group_slots(group)
        array = self.layout.array(name)
        ranges = [self.layout.block_range(int(b)) for b in blocks]
        try:
            if int(blocks[-1]) - int(blocks[0]) == len(blocks) - 1:  # consecutive: one slice
                return np.asarray(array[ranges[0].start:ranges[-1].stop, slots.start:slots.stop])
            return np.concatenate(read_concurrently([
                (array, (slice(r.start, r.stop), slice(slots.start, slots.stop)))
                for r in ranges]))
        except CORRUPT_CHUNK_ERRORS as exc:
            for b, r in zip(blocks, ranges, strict=True):  # the culprit chunk, for the message
                try:
                    array[r.start:r.stop, slots.start:slots.stop]
                except CORRUPT_CHUNK_ERRORS as inner:
                    raise StoreError(f"{self.url}: array {name!r}, chunk (block {b}, slot group "
                                     f"{group}) is corrupt: {redacted(inner)}") from inner
            raise StoreError(f"{self.url}: array {name!r} cannot be read: {redacted(exc)}") from exc

    def read_views(self, samples: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, TopKTargets]:
        """Records and targets of the views (samples[i], slots[i]), in the given order.

        Reads whole (block, slot group) chunks, up to `_BATCH_BLOCKS` blocks per zarr call
        (consecutive or not): cheapest when the views share a slot group and cover whole
        blocks, as an epoch plan's do."""
        samples = np.asarray(samples, dtype=np.int64).reshape(-1)
        slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        cfg = self.config
        if samples.shape != slots.shape:
            raise StoreError(f"{samples.size} samples but {slots.size} slots requested")
        if samples.size and (samples.min() < 0 or samples.max() >= self.num_samples):
            raise StoreError(f"{self.url}: a requested sample is outside 0..{self.num_samples - 1}")
        if slots.size and (slots.min() < 0 or slots.max() >= cfg.slots):
            raise StoreError(f"{self.url}: a requested slot is outside 0..{cfg.slots - 1}")
        self._require(samples // cfg.block_size)
        out = (np.empty(samples.size, dtype=record_dtype(cfg.recipe)),
               np.empty((samples.size, cfg.k), dtype=np.int32),
               np.empty((samples.size, cfg.k), dtype=np.float32))
        groups = slots // cfg.slot_group
        for group in np.unique(groups):
            where = np.flatnonzero(groups == group)
            where = where[np.argsort(samples[where], kind="stable")]
            blocks = samples[where] // cfg.block_size
            unique = np.unique(blocks)
            for lo in range(0, len(unique), _BATCH_BLOCKS):
                batch = unique[lo:lo + _BATCH_BLOCKS]
                part = where[np.searchsorted(blocks, batch[0]):
                             np.searchsorted(blocks, batch[-1], side="right")]
                self._read_blocks(batch, int(group), part, samples, slots, out)
        return out[0], TopKTargets(out[1], out[2])

    def _offsets(self, blocks: np.ndarray) -> np.ndarray:
        """Where each of sorted `blocks` starts in what `_read` returns for them."""
        sizes = [len(self.layout.block_range(int(b))) for b in blocks]
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def _read_blocks(self, blocks: np.ndarray, group: int, part: np.ndarray,
                     samples: np.ndarray, slots: np.ndarray,
                     out: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        """Fill out[...][part] from sorted `blocks` (those of samples[part])."""
        cfg = self.config
        offsets = self._offsets(blocks)
        in_block = samples[part] // cfg.block_size
        rows = (offsets[np.searchsorted(blocks, in_block)]
                + samples[part] - in_block * cfg.block_size)
        column = slots[part] - group * cfg.slot_group

        chunks = {name: self._read(name, blocks, group) for name in self.layout.data_names}
        self._verify(chunks, blocks, offsets, group)

        def pick(name: str) -> np.ndarray:
            return chunks[name][rows, column]

        columns = {spec.name: pick(f"records/{spec.name}") for spec in self.layout.columns}
        out[0][part], out[1][part], out[2][part] = decode_views(
            self.layout, columns, pick(CLASSES), pick(PROB_GAPS), samples[part], slots[part])

    def _verify(self, chunks: dict[str, np.ndarray], blocks: np.ndarray | range,
                offsets: np.ndarray, group: int) -> None:
        """StoreError unless every block's slice of `chunks` matches its commit digest (block
        i of `blocks` at rows offsets[i]..offsets[i+1]-1)."""
        rows = self._commit_rows()
        for i, block in enumerate(int(b) for b in blocks):
            r = self.layout.block_range(block)
            part = {name: values[offsets[i]:offsets[i + 1]] for name, values in chunks.items()}
            if group_digest(part, block, group) != int(rows[block, 1 + group]):
                missing = self._missing_shard(block)
                if missing is not None:
                    raise missing
                raise StoreError(f"{self.url}: block {block} (samples {r.start}..{r.stop - 1}), "
                                 f"slot group {group}: the data does not match its commit digest "
                                 "(damaged, or a chunk copied from elsewhere); run `dalidr "
                                 "inspect` on the store")

    def read_block(self, block: int) -> tuple[np.ndarray, TopKTargets]:
        """All views of one committed block: records [n, slots], targets [n, slots, k]."""
        r = self.layout.block_range(block)
        self._require(np.array([block]))
        cfg = self.config
        samples = np.arange(r.start, r.stop)

        def whole(name: str) -> np.ndarray:
            try:
                return np.asarray(self.layout.array(name)[r.start:r.stop])
            except CORRUPT_CHUNK_ERRORS as exc:
                raise StoreError(f"{self.url}: array {name!r}, shard of block {block} is "
                                 f"corrupt: {redacted(exc)}") from exc

        arrays = {name: whole(name) for name in self.layout.data_names}
        for group in range(cfg.num_groups):
            slots = cfg.group_slots(group)
            self._verify({name: values[:, slots.start:slots.stop]
                          for name, values in arrays.items()}, range(block, block + 1),
                         np.array([0, len(r)]), group)
        columns = {spec.name: arrays[f"records/{spec.name}"] for spec in self.layout.columns}
        records, classes, probs = decode_views(self.layout, columns, arrays[CLASSES],
                                               arrays[PROB_GAPS], samples, np.arange(cfg.slots))
        return records, TopKTargets(classes, probs)

    # ------------------------------------------------------------------ epochs

    @property
    def plan_spec(self) -> PlanSpec:
        cfg = self.config
        return PlanSpec(self.num_samples, cfg.slots, cfg.slot_group, cfg.block_size, cfg.seed,
                        self.uneven)

    def plan(self, epoch: int, rank: int = 0, world: int = 1, *, start: int = 0,
             skipped: np.ndarray | None = None,
             curriculum: Curriculum | None = None) -> EpochPlan:
        """The epoch plan of `rank` from global position `start`, leaving out the sorted
        sample indices `skipped`; see `store.plan`. A `curriculum` chooses each sample's view
        within the epoch's slot group by the stored difficulty (`store.curriculum`)."""
        plan = plan_epoch(self.plan_spec, epoch, rank, world, start=start, skipped=skipped)
        if curriculum is None or curriculum.kind is Schedule.NONE:
            return plan
        group = self.config.group_slots(plan.group)
        slots = np.empty(len(plan), np.int32)
        # In sample order, so each piece touches its own few blocks; bounded temporaries.
        by_sample = np.argsort(plan.samples, kind="stable")
        for lo in range(0, len(plan), _CURRICULUM_AT_ONCE):
            part = by_sample[lo:lo + _CURRICULUM_AT_ONCE]
            samples = plan.samples[part]
            confidence, strength = read_derived(self.layout, samples, group)
            stored = confidence if curriculum.measure is Measure.CONFIDENCE else strength
            allowed = np.broadcast_to(np.arange(len(group)), (len(samples), len(group)))
            slots[part] = group.start + curriculum_slots(
                curriculum, self.config.seed, epoch, samples,
                curriculum.measure.difficulty(stored), allowed)
        return dataclasses.replace(plan, slots=slots)

    def read_epoch(self, plan: EpochPlan) -> EpochData:
        """The records and targets a plan needs, in its order (reads only its slot group)."""
        records, targets = self.read_views(plan.samples, plan.slots)
        return EpochData(plan, records, targets, range(len(plan)))

    def epoch(self, epoch: int, rank: int = 0, world: int = 1, *, start: int = 0,
              skipped: np.ndarray | None = None,
              curriculum: Curriculum | None = None) -> EpochData:
        """Plan and read one epoch whole (a training loop reads it in pieces, first batches
        first, in the background: `store.prefetch.EpochPrefetcher`)."""
        return self.read_epoch(self.plan(epoch, rank, world, start=start, skipped=skipped,
                                         curriculum=curriculum))
