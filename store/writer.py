"""Writing a reinforcement store: create once, then fill sample blocks from any process.

The teacher pass (paper Sec. 2.2) labels every slot of a block of samples and hands the block to
`StoreWriter.write_block`, which writes the block's shard of every data array (records, top-k
and skip marks) and only then its commit entry (a digest of the block). A block is therefore
visible to readers only when complete: a writer killed at any point leaves at most uncommitted
shards, which readers ignore.

No locks. `create_store` writes all metadata up front, so writers never touch a shared object:
each block's shards and its commit chunk are its own files. Any number of processes, on one
machine or many, can fill disjoint blocks (`pending(worker, num_workers)` deals them round
robin). Restarting skips committed blocks; a block rewritten after a crash gets exactly the bytes
an uninterrupted run would have written, because its inputs are deterministic in (seed, sample,
slot) and the codecs are too, so the final store is byte-identical whatever the interruptions.
Once every block is committed, `finish` (each writer calls it after its last block) writes the
commit summary that lets readers start without reading one object per block
(`store.commit_summary`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from dalidr.augment.records import record_dtype, validate_records
from dalidr.errors import StoreError
from store.commit_summary import remove_commit_summary, write_commit_summary
from store.config import ATTRS_KEY, StoreConfig
from store.encoding import encode_records, quantise_probs, record_columns, sort_topk
from store.layout import (
    CLASSES,
    COMMIT,
    PROB_GAPS,
    SKIPPED,
    StoreLayout,
    block_digest,
    create_layout,
    group_digest,
    open_layout,
)
from store.location import locate
from store.manifest import Manifest
from store.write_errors import human_bytes, writing

__all__ = ["StoreWriter", "create_store", "resume_or_create", "interrupted_creation",
           "BlockProducer", "commit_row"]

# Given a block's samples, returns its records [n, slots], classes [n, slots, k] and
# probabilities [n, slots, k] (the teacher's top-k, in any order).
BlockProducer = Callable[[range], "tuple[np.ndarray, np.ndarray, np.ndarray]"]


def create_store(url: str, manifest: Manifest, config: StoreConfig,
                 overwrite: bool = False) -> StoreWriter:
    """Create an empty store for `manifest` (run once, before any writer starts).

    A write that fails (full disk, ...) raises StoreWriteError naming the store; the
    creation cut short is redone by `resume_or_create` (see `interrupted_creation`)."""
    location = locate(url, read_only=False)
    # The manifest's columns plus a few kB of JSON per array: an upper bound of the bytes.
    needed = (manifest.paths.data.nbytes + manifest.paths.offsets.nbytes
              + 49 * len(manifest) + 4096 * (16 + len(record_columns(config.recipe))))
    with writing(location, "the store's metadata and manifest", needed):
        layout = create_layout(url, manifest, config, overwrite=overwrite)
    return StoreWriter(url, layout)


def interrupted_creation(url: str, config: StoreConfig) -> bool:
    """Whether `url` holds a store of exactly `config` that cannot be opened and has no
    committed block: a creation cut short (killed, or a write that failed), safe to redo."""
    import zarr

    try:
        group = zarr.open_group(locate(url, read_only=True).store, mode="r")
        saved = group.attrs.get(ATTRS_KEY) or {}
        if not isinstance(saved, Mapping):
            return False
        attrs = dict(saved)
        found = StoreConfig.from_attrs({k: v for k, v in attrs.items()
                                        if k not in ("num_samples", "fingerprint", "digest")},
                                       url)
        try:
            commit = group[COMMIT]
            committed = isinstance(commit, zarr.Array) and bool(np.asarray(commit[...]).any())
        except KeyError:
            committed = False
    except (ValueError, KeyError, OSError, StoreError):
        return False
    return found == config and not committed


def resume_or_create(url: str, config: StoreConfig,
                     manifest: Callable[[], Manifest]) -> StoreWriter:
    """A writer of the store at `url`: the existing one (to resume; the caller checks its
    config), else a new one for `manifest()`, also over a creation cut short."""
    if not locate(url, read_only=False).exists("zarr.json"):
        return create_store(url, manifest(), config)
    try:
        return StoreWriter(url)
    except (StoreError, ValueError, KeyError, OSError) as exc:
        if not interrupted_creation(url, config):
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"{url}: a store exists but cannot be opened: {exc}") from exc
    return create_store(url, manifest(), config, overwrite=True)


class StoreWriter:
    """Fills the blocks of an existing store; safe to run in many processes at once."""

    def __init__(self, url: str, layout: StoreLayout | None = None) -> None:
        # `layout`: the store just created and opened for writing (`create_store`), which also
        # holds the manifest in hand, so it is not read back.
        self.layout: StoreLayout = layout or open_layout(url, read_only=False)

    @property
    def config(self) -> StoreConfig:
        return self.layout.config

    @property
    def num_blocks(self) -> int:
        return self.layout.num_blocks

    def block_range(self, block: int) -> range:
        return self.layout.block_range(block)

    def committed(self) -> np.ndarray:
        """Per block, whether it is complete."""
        return self.layout.commits() != 0

    def pending(self, worker: int = 0, num_workers: int = 1) -> list[int]:
        """Uncommitted blocks of `worker` (of `num_workers`), dealt round robin."""
        if not 0 <= worker < num_workers:
            raise StoreError(f"writer {worker} is not in 0..{num_workers - 1}")
        done = self.committed()
        return [b for b in range(worker, self.num_blocks, num_workers) if not done[b]]

    def fill(self, produce: BlockProducer, worker: int = 0, num_workers: int = 1) -> list[int]:
        """Produce and write every pending block of `worker`, then `finish`; returns the
        blocks written."""
        written = []
        for block in self.pending(worker, num_workers):
            self.write_block(block, *produce(self.block_range(block)))
            written.append(block)
        self.finish()
        return written

    def finish(self) -> bool:
        """Whether every block is committed; if so, the commit summary is written (once:
        `store.commit_summary`). Every writer calls it after its last block: the last one
        to commit always finds the store complete."""
        if not self.committed().all():
            return False
        write_commit_summary(self.layout)
        return True

    def encode_block(self, block: int, records: np.ndarray, classes: np.ndarray,
                     probs: np.ndarray, skipped: np.ndarray | None = None
                     ) -> dict[str, np.ndarray]:
        """Validate one block and return the arrays `write_block` stores, by array name.
        `skipped` [n, slots] (bool) marks the views the teacher could not make (None: none)."""
        cfg, samples = self.config, self.block_range(block)
        where = f"block {block} (samples {samples.start}..{samples.stop - 1}) of {self.layout.url}"
        shape = (len(samples), cfg.slots)
        records = np.asarray(records)
        if records.shape != shape or records.dtype != record_dtype(cfg.recipe):
            raise StoreError(f"{where}: records are {records.dtype}{list(records.shape)}, the "
                             f"store needs {record_dtype(cfg.recipe)}{list(shape)}")
        names = _RecordNames(f"{where}, sample", samples.start, cfg.slots)
        validate_records(records, cfg.recipe, self.layout.num_samples, names=names)
        classes, probs = np.asarray(classes), np.asarray(probs, dtype=np.float64)
        for name, values in (("classes", classes), ("probs", probs)):
            if values.shape != shape + (cfg.k,):
                raise StoreError(f"{where}: {name} have shape {list(values.shape)}, expected "
                                 f"{list(shape + (cfg.k,))}")
        _check_topk(classes, probs, cfg.num_classes, where, cfg.slots)
        classes, probs = sort_topk(classes, probs)
        index = np.arange(samples.start, samples.stop)
        arrays = {f"records/{name}": column for name, column in
                  encode_records(records, cfg.recipe, index, self.layout.image_hw).items()}
        arrays[CLASSES] = classes.astype("<u2")
        arrays[PROB_GAPS] = quantise_probs(probs, cfg.prob_levels)
        marks = np.zeros(shape, np.uint8) if skipped is None else np.asarray(skipped)
        if marks.shape != shape:
            raise StoreError(f"{where}: skip marks have shape {list(marks.shape)}, expected "
                             f"{list(shape)}")
        arrays[SKIPPED] = (marks != 0).astype(np.uint8)
        return arrays

    def write_block(self, block: int, records: np.ndarray, classes: np.ndarray,
                    probs: np.ndarray, skipped: np.ndarray | None = None) -> None:
        """Write one complete block: every data shard first, its commit entry last.
        `skipped` [n, slots] (bool): views the teacher pass could not make (None: none)."""
        self.write_encoded(block, self.encode_block(block, records, classes, probs, skipped))

    def write_encoded(self, block: int, arrays: dict[str, np.ndarray]) -> None:
        """Write arrays made by `encode_block` (or copied from another store), commit last."""
        samples = self.block_range(block)
        for name in self.layout.data_names:
            array = self.layout.array(name)
            expected = (len(samples),) + array.shape[1:]
            if name not in arrays or arrays[name].shape != expected:
                got = arrays[name].shape if name in arrays else "nothing"
                raise StoreError(f"{self.layout.url}: block {block} of array {name!r} must be "
                                 f"{list(expected)}, got {got}")
        location, where = self.layout.location, f"block {block} (samples {samples.start}.."
        where += f"{samples.stop - 1})"
        with writing(location, f"{where}: removing the partial objects of an earlier run"):
            for name in self.layout.data_names + [COMMIT]:
                location.remove_partials(self.layout.shard_key(name, block))
            # A summary describes the committed blocks as they are: not this block's new data.
            remove_commit_summary(self.layout)
        for name in self.layout.data_names:
            key = self.layout.shard_key(name, block)
            with writing(location, f"{where} of array {name!r} (object {key})",
                         _block_bytes(arrays, [name]), lambda: self._remaining(arrays)):
                self.layout.array(name)[samples.start:samples.stop] = arrays[name]
        row = commit_row(self.config, arrays, block)
        key = self.layout.shard_key(COMMIT, block)
        with writing(location, f"the commit entry of {where} (object {key})", row.nbytes,
                     lambda: self._remaining(arrays)):
            self.layout.array(COMMIT)[block] = row

    def _remaining(self, arrays: dict[str, np.ndarray]) -> str:
        """"; N blocks (this one included) are still to write, up to X each", for messages."""
        try:
            left = int((~self.committed()).sum())
        except (StoreError, OSError):
            return ""
        return (f"; {left} block(s) of the store, this one included, are still to write, up "
                f"to {human_bytes(_block_bytes(arrays))} each")


def _block_bytes(arrays: dict[str, np.ndarray], names: Sequence[str] | None = None) -> int:
    """Uncompressed bytes of a block's arrays (all, or `names`), plus a shard index each."""
    chosen = arrays if names is None else {name: arrays[name] for name in names}
    return sum(a.nbytes + 4096 for a in chosen.values())


def commit_row(config: StoreConfig, arrays: dict[str, np.ndarray], block: int) -> np.ndarray:
    """A block's commit-map row: its digest, the digest of every slot group's slice, then
    the derived digest, 0 (`store.derived` fills it in when the difficulty is written)."""
    row = np.zeros(2 + config.num_groups, dtype=np.uint64)
    row[0] = block_digest(arrays)
    for group in range(config.num_groups):
        slots = config.group_slots(group)
        row[1 + group] = group_digest({name: values[:, slots.start:slots.stop]
                                       for name, values in arrays.items()}, block, group)
    return row


class _RecordNames(Sequence[str]):
    """Lazy culprit names for validate_records: flat record index -> sample and slot."""

    def __init__(self, prefix: str, start: int, slots: int) -> None:
        self.prefix, self.start, self.slots = prefix, start, slots

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, index):
        sample, slot = divmod(int(index), self.slots)
        return f"{self.prefix} {self.start + sample}, slot {slot}"


def _check_topk(classes: np.ndarray, probs: np.ndarray, num_classes: int, where: str,
                slots: int) -> None:
    def fail(mask: np.ndarray | np.bool_, what: str) -> None:
        flat = int(np.flatnonzero(mask.reshape(-1))[0])
        sample, slot = divmod(flat, slots)
        raise StoreError(f"{where}: sample {sample} of the block, slot {slot}: {what}")

    if not np.issubdtype(classes.dtype, np.integer):
        raise StoreError(f"{where}: classes have dtype {classes.dtype}, need integers")
    bad = ((classes < 0) | (classes >= num_classes)).any(-1)
    if bad.any():
        fail(bad, f"a class index is outside 0..{num_classes - 1}")
    bad = ~np.isfinite(probs).all(-1) | (probs < 0).any(-1) | (probs > 1 + 1e-6).any(-1)
    if bad.any():
        fail(bad, "a probability is not in [0, 1]")
    ordered = np.sort(classes, axis=-1)
    bad = (ordered[..., 1:] == ordered[..., :-1]).any(-1)
    if bad.any():
        fail(bad, "a class appears twice in one top-k")
