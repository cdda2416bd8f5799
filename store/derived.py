"""The derived arrays: a difficulty per view, written after the teacher pass, sealed per block.

    /derived/confidence    [N, slots] uint8   the teacher's confidence (255: sure)
    /derived/strength      [N, slots] uint8   the augmentation's strength (255: strongest)

Both are cut like `skipped` (one shard per block, chunks of `slot_group` slots) and filled with 0
at creation; `store.difficulty` defines the scores, this module only stores and checks them.
They are computed from a committed block's records and top-k, so they are written apart from
the teacher's data: by the teacher pass right after each commit, by `dalidr difficulty` (a
backfill, or `--redo`) and by `dalidr upgrade` (`store.difficulty_pass`). They are outside the
block digest and have their own, the commit row's last column (0: not written).
`write_derived_block` reads and writes only that block's commit row (one object), and writes the
block's two shards and then that column; rewriting a block (`--redo`) zeroes the column first,
so a reader, even after a kill mid-rewrite, sees either no derived digest ("not written") or one
that covers complete shards; `read_derived` checks the digest of every block it reads and
refuses, naming the block and the store, a block whose derived arrays were never written or do
not match. A store without them still trains: only
readers of the difficulty (a curriculum's plan) check it.

Trade-off: the digest covers both arrays of a whole block, so reading the difficulty of a few
views reads their blocks' whole shards (two bytes per view, small next to the records).
"""

from __future__ import annotations

import hashlib

import numpy as np

from dalidr.errors import StoreError
from store.layout import COMMIT, CORRUPT_CHUNK_ERRORS, DERIVED, StoreLayout
from store.location import redacted
from store.write_errors import writing

__all__ = ["CONFIDENCE", "STRENGTH", "derived_digest", "write_derived_block", "read_derived",
           "require_derived"]

CONFIDENCE, STRENGTH = DERIVED


def derived_digest(block: int, confidence: np.ndarray, strength: np.ndarray) -> int:
    """The commit row's last column: a 64-bit BLAKE2b of one block's derived arrays (never 0)."""
    h = hashlib.blake2b(digest_size=8, person=b"dalidr-derived")
    h.update(np.array([block], "<i8").tobytes())
    for name, values in ((CONFIDENCE, confidence), (STRENGTH, strength)):
        values = np.ascontiguousarray(values, dtype=np.uint8)
        h.update(f"{name}:{values.dtype.str}:{values.shape}".encode())
        h.update(values.tobytes())
    return int.from_bytes(h.digest(), "little") or 1


def _block_where(layout: StoreLayout, block: int) -> str:
    r = layout.block_range(block)
    return f"{layout.url}: block {block} (samples {r.start}..{r.stop - 1})"


def write_derived_block(layout: StoreLayout, block: int, confidence: np.ndarray,
                        strength: np.ndarray) -> None:
    """Write one committed block's derived arrays ([n, slots] uint8 each), then its derived
    digest in the commit row. StoreError if the block is not committed or a shape is wrong."""
    where = _block_where(layout, block)
    samples = layout.block_range(block)
    row = _commit_row(layout, block)  # this block's object only, not the whole map
    if row[0] == 0:
        raise StoreError(f"{where} is not committed: its derived arrays are computed from its "
                         "records and top-k, so the teacher pass must finish it first")
    shape = (len(samples), layout.config.slots)
    arrays = {}
    for name, values in ((CONFIDENCE, confidence), (STRENGTH, strength)):
        values = np.asarray(values)
        if values.shape != shape or values.dtype != np.uint8:
            raise StoreError(f"{where}: {name} is {values.dtype}{list(values.shape)}, the store "
                             f"needs uint8{list(shape)}")
        arrays[name] = values
    location = layout.location
    with writing(location, f"{where}: removing the partial objects of an earlier run"):
        for name in (*DERIVED, COMMIT):
            location.remove_partials(layout.shard_key(name, block))
    commit_key = layout.shard_key(COMMIT, block)
    if row[-1] != 0:  # a rewrite: "not written" until the new shards are complete
        row[-1] = 0
        with writing(location, f"the commit entry of {where} (object {commit_key})",
                     row.nbytes):
            layout.array(COMMIT)[block] = row
    for name, values in arrays.items():
        key = layout.shard_key(name, block)
        with writing(location, f"{where} of array {name!r} (object {key})",
                     values.nbytes + 4096):
            layout.array(name)[samples.start:samples.stop] = values
    row[-1] = derived_digest(block, arrays[CONFIDENCE], arrays[STRENGTH])
    with writing(location, f"the commit entry of {where} (object {commit_key})", row.nbytes):
        layout.array(COMMIT)[block] = row


def _commit_row(layout: StoreLayout, block: int) -> np.ndarray:
    """One block's commit row (one object: the commit map's chunks are one row each)."""
    try:
        return np.array(layout.array(COMMIT)[block], dtype=np.uint64)
    except CORRUPT_CHUNK_ERRORS as exc:
        raise StoreError(f"{_block_where(layout, block)}: its commit entry is corrupt: "
                         f"{redacted(exc)}; run `dalidr inspect` on the store") from exc


def require_derived(layout: StoreLayout) -> None:
    """StoreError naming the first committed block without derived arrays, and the command
    that writes them (a cheap check of the commit map, before a curriculum plans)."""
    rows = layout.commit_rows()
    missing = np.flatnonzero((rows[:, 0] != 0) & (rows[:, -1] == 0))
    if missing.size:
        raise StoreError(f"{_block_where(layout, int(missing[0]))} has no derived arrays "
                         f"(difficulty), nor have {missing.size - 1} other block(s); run "
                         f"`dalidr difficulty {layout.url}` first")


def read_derived(layout: StoreLayout, samples: np.ndarray | range,
                 slots: np.ndarray | range) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, strength), each [len(samples), len(slots)] uint8, of the given sample and
    slot indices; every block read is checked against its derived digest first (StoreError
    naming the block and the store if it has none or the arrays do not match it)."""
    samples = np.asarray(samples, dtype=np.int64).reshape(-1)
    slots = np.asarray(slots, dtype=np.int64).reshape(-1)
    n, cfg = layout.num_samples, layout.config
    if samples.size and (samples.min() < 0 or samples.max() >= n):
        raise StoreError(f"{layout.url}: a requested sample is outside 0..{n - 1}")
    if slots.size and (slots.min() < 0 or slots.max() >= cfg.slots):
        raise StoreError(f"{layout.url}: a requested slot is outside 0..{cfg.slots - 1}")
    rows = layout.commit_rows()
    out = (np.empty((samples.size, slots.size), np.uint8),
           np.empty((samples.size, slots.size), np.uint8))
    blocks = samples // cfg.block_size
    by_block = np.argsort(blocks, kind="stable")
    unique, first = np.unique(blocks[by_block], return_index=True)
    for block, lo, hi in zip(unique.tolist(), first.tolist(),
                             first[1:].tolist() + [len(by_block)], strict=True):
        where = _block_where(layout, block)
        if rows[block, 0] == 0:
            raise StoreError(f"{where} is not committed, so it has no difficulty")
        if rows[block, -1] == 0:
            raise StoreError(f"{where} has no derived arrays (difficulty) written yet; run "
                             f"`dalidr difficulty {layout.url}` first")
        r = layout.block_range(block)
        values = []
        for name in DERIVED:
            try:
                values.append(np.asarray(layout.array(name)[r.start:r.stop]))
            except CORRUPT_CHUNK_ERRORS as exc:
                raise StoreError(f"{where}: array {name!r} is corrupt: {redacted(exc)}") from exc
        if derived_digest(block, *values) != int(rows[block, -1]):
            raise StoreError(f"{where}: the derived arrays (difficulty) do not match their "
                             "digest in the commit map: damaged or edited; compute them again "
                             f"with `dalidr difficulty {layout.url} --redo`")
        picked = by_block[lo:hi]
        local = samples[picked] - r.start
        for target, array in zip(out, values, strict=True):
            target[picked] = array[local][:, slots]
    return out
