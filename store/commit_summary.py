"""The commit summary: a finished store's commit map and skip counts in a few objects.

A loader's start needs three things of every block: that it is committed, the digests its
reads are checked against, and whether any of its views is skipped (the plan leaves those
samples out before cutting the epoch among ranks, so every rank needs all of them). The commit
map holds the first two as one object per block, so that concurrent writers never touch the
same object, and the skip marks are one shard per block: reading both whole is
2 x N / block_size objects, 4.6 s at 13.7M samples and minutes at a billion, on every rank. So a
store whose every block is committed also holds

    /commit_summary   [num_blocks, 2 + groups] uint64: each block's commit row without its
                      derived digest (block digest, one digest per slot group), then the
                      number of its views marked skipped

in chunks of 65,536 blocks (six objects at 1.4 billion samples), sealed by its attributes: the
SHA-256 of its values and the manifest fingerprint they belong to. Nothing in it is new
information: it is a pure function of the committed blocks, so two writers that both write it
write the same bytes, and it can be rebuilt at any time from the store (`dalidr upgrade`).

Who writes it: the teacher pass once it finds every block committed (`StoreWriter.finish`, run
by each writer after its last block, so the last one to commit always sees a complete store),
`dalidr upgrade` (older stores), and the other store builders. A write to a committed block
removes it first (`StoreWriter.write_encoded`), so it never describes other data. Who reads it:
`StoreReader` (completeness and digests) and `skipped_samples` (only the blocks that have
skipped views are read). A store without it is read as before (the commit map and skip marks
whole); a damaged one is refused like any damaged object, naming it, and `dalidr upgrade`
rewrites it. `dalidr inspect` checks it against the commit map and the marks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import zarr
import zarr.codecs

from dalidr.errors import StoreError
from store.location import CORRUPT_CHUNK_ERRORS, redacted

if TYPE_CHECKING:
    from store.layout import StoreLayout

__all__ = ["SUMMARY", "CommitSummary", "read_commit_summary", "summarise",
           "write_commit_summary", "remove_commit_summary", "summary_problems"]

SUMMARY = "commit_summary"
_ATTRS = "dalidr_commit_summary"
_CHUNK_BLOCKS = 1 << 16


@dataclass(frozen=True, eq=False)
class CommitSummary:
    """Per block of a complete store: its commit digests and its count of skipped views."""

    # [num_blocks, 1 + groups] uint64: block digest, then one digest per slot group.
    digests: np.ndarray
    # [num_blocks] int64: views of the block marked skipped.
    skipped_views: np.ndarray

    def table(self) -> np.ndarray:
        """The stored form, [num_blocks, 2 + groups] uint64."""
        return np.column_stack([self.digests, self.skipped_views.astype(np.uint64)])


def _seal(table: np.ndarray, fingerprint: str) -> dict[str, str]:
    return {"fingerprint": fingerprint,
            "sha256": hashlib.sha256(np.ascontiguousarray(table, "<u8").tobytes()).hexdigest()}


def summarise(layout: StoreLayout,
              progress: Callable[[int], None] | None = None) -> CommitSummary | None:
    """The summary of `layout` from its commit map and skip marks, None unless every block is
    committed. Reads the marks a run of blocks at a time (`progress(blocks)` after each)."""
    from store.skip_marks import read_skip_marks

    rows = layout.commit_rows()
    if not (rows[:, 0] != 0).all():
        return None
    groups = layout.config.num_groups
    counts = np.zeros(layout.num_blocks, np.int64)
    step = _marks_step(layout)
    for first in range(0, layout.num_blocks, step):
        blocks = range(first, min(first + step, layout.num_blocks))
        samples = range(layout.block_range(blocks.start).start,
                        layout.block_range(blocks.stop - 1).stop)
        marks = read_skip_marks(layout, samples, layout.config.slots).sum(axis=1)
        starts = np.array([layout.block_range(b).start for b in blocks]) - samples.start
        counts[blocks.start:blocks.stop] = np.add.reduceat(marks, starts)
        if progress is not None:
            progress(len(blocks))
    return CommitSummary(rows[:, :1 + groups].copy(), counts)


def _marks_step(layout: StoreLayout) -> int:
    """Blocks of skip marks read at once: about 16 MB of marks."""
    per_block = layout.config.block_size * layout.config.slots
    return max(1, min(64, (16 << 20) // max(1, per_block)))


def write_commit_summary(layout: StoreLayout,
                         summary: CommitSummary | None = None) -> CommitSummary | None:
    """Write `/commit_summary` for a complete store (computed unless given); returns what was
    written, None (nothing written) for a store with uncommitted blocks. A valid summary
    already there is kept."""
    existing = read_commit_summary(layout, quiet=True)
    if existing is not None:
        return existing
    summary = summary if summary is not None else summarise(layout)
    if summary is None:
        return None
    from store.write_errors import writing

    table = summary.table()
    chunk = max(1, min(len(table), _CHUNK_BLOCKS))
    location = layout.location
    with writing(location, f"the commit summary's metadata (object {SUMMARY}/zarr.json)", 4096):
        array = layout.group.create_array(
            SUMMARY, shape=table.shape, dtype="<u8", chunks=(chunk, table.shape[1]),
            compressors=[zarr.codecs.ZstdCodec(level=9), zarr.codecs.Crc32cCodec()],
            fill_value=0, dimension_names=("block", "digest"), overwrite=True,
            attributes={_ATTRS: _seal(table, layout.fingerprint)})
    for i, lo in enumerate(range(0, len(table), chunk)):
        key = f"{SUMMARY}/{array.metadata.encode_chunk_key((i, 0))}"
        last = min(lo + chunk, len(table)) - 1
        with writing(location, f"the commit summary of blocks {lo}..{last} (object {key})",
                     table[lo:lo + chunk].nbytes + 4096):
            array[lo:lo + chunk] = table[lo:lo + chunk]
    return summary


def remove_commit_summary(layout: StoreLayout) -> None:
    """Remove `/commit_summary` if present (before a committed block is rewritten)."""
    location = layout.location
    if not location.exists(f"{SUMMARY}/zarr.json"):
        return
    # Its metadata first: from then on no reader sees a summary, whatever is left of it.
    location.fs.rm(location.key_path(f"{SUMMARY}/zarr.json"))
    location.fs.rm(location.key_path(SUMMARY), recursive=True)


def read_commit_summary(layout: StoreLayout, quiet: bool = False) -> CommitSummary | None:
    """The store's summary; None if it has none (then the caller reads the commit map and the
    skip marks whole). A damaged or forged one is a StoreError naming it (None if `quiet`:
    for whoever is about to rewrite it)."""
    if not layout.location.exists(f"{SUMMARY}/zarr.json"):
        return None
    try:
        return _read(layout)
    except StoreError as exc:
        if quiet:
            return None
        raise StoreError(f"{exc}; `dalidr upgrade {layout.url}` rewrites it from the commit "
                         "map and the skip marks") from exc


def _read(layout: StoreLayout) -> CommitSummary:
    from store.validate import READ_ERRORS

    try:  # opened afresh, not through the layout's cache: a writer may have replaced it
        array = zarr.open_array(layout.location.store, path=SUMMARY, mode="r", zarr_format=3)
    except READ_ERRORS as exc:
        raise StoreError(f"{layout.url}: array {SUMMARY!r}: its metadata cannot be read: "
                         f"{type(exc).__name__}: {exc}") from exc
    groups = layout.config.num_groups
    expected = (layout.num_blocks, 2 + groups)
    if tuple(array.shape) != expected or array.dtype != np.uint64:
        raise StoreError(f"{layout.url}: array {SUMMARY!r} is {array.dtype}{list(array.shape)}, "
                         f"the store's {layout.num_blocks} blocks need uint64{list(expected)}")
    try:
        table = np.asarray(array[...], dtype=np.uint64)
        found = array.attrs.get(_ATTRS)
    except CORRUPT_CHUNK_ERRORS as exc:
        raise StoreError(f"{layout.url}: array {SUMMARY!r} is damaged: {redacted(exc)}") from exc
    if (dict(found) if isinstance(found, dict) else {}) != _seal(table, layout.fingerprint):
        raise StoreError(f"{layout.url}: the commit summary ({SUMMARY!r}) does not match its "
                         "seal or the manifest's fingerprint (edited or damaged on disk)")
    counts = table[:, -1]
    block_views = layout.config.block_size * layout.config.slots
    if not (table[:, 0] != 0).all() or (counts > block_views).any():
        raise StoreError(f"{layout.url}: the commit summary ({SUMMARY!r}) lists a block as "
                         "uncommitted or with more skipped views than it has")
    return CommitSummary(table[:, :1 + groups], counts.astype(np.int64))


def summary_problems(layout: StoreLayout) -> list[str]:
    """What `dalidr inspect` reports of the summary: unreadable, or not the store's."""
    if not layout.location.exists(f"{SUMMARY}/zarr.json"):
        return []
    try:
        stored = _read(layout)
    except StoreError as exc:
        return [f"commit summary: {exc}"]
    actual = summarise(layout)
    if actual is None:
        return ["commit summary: present although some blocks are not committed"]
    bad = np.flatnonzero((stored.digests != actual.digests).any(axis=1))
    if bad.size:
        return [f"commit summary: block {int(bad[0])} differs from its commit row "
                f"({bad.size} block(s))"]
    bad = np.flatnonzero(stored.skipped_views != actual.skipped_views)
    if bad.size:
        return [f"commit summary: block {int(bad[0])} counts {int(stored.skipped_views[bad[0]])} "
                f"skipped views, its marks {int(actual.skipped_views[bad[0]])}"]
    return []
