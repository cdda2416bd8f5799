"""Skip marks: which stored views the teacher pass could not make, so no loader serves them.

`dalidr reinforce --skip-bad` records an unreadable image (unreadable file, not a JPEG,
truncated, undecodable) instead of stopping, and so every view of it is skipped; with mixing
recipes a view whose partner image is unreadable is skipped too. Since schema 3 the marks are a
data array of the store, cut and written like the records and the top-k:

    /skipped    [N, slots] uint8, 1: skipped; one shard per block, chunks of `slot_group` slots

`StoreWriter.write_block` writes a block's marks with its other shards, before its commit
entry, and the block's digest and its slot groups' digests cover them: a mark added or removed
after the fact fails the digest check of every read of that block (`StoreReader`, `dalidr
inspect`), as a changed record would. (Schema 2 kept them beside the schema, in an array no
digest covered: `dalidr upgrade` moves them here.) The top-k of a skipped view is stored as
classes 0..k-1 with probability 0, a second sign; loaders use `skipped_views` (or
`skipped_samples`) to leave such views out. The teacher pass re-exports this module
(`dalidr.teacher.skips`).
"""


from __future__ import annotations

import numpy as np

from dalidr.errors import StoreError
from store.commit_summary import read_commit_summary
from store.layout import CORRUPT_CHUNK_ERRORS, SKIPPED, StoreLayout, open_layout
from store.location import redacted

__all__ = ["SKIPPED", "read_skip_marks", "skipped_views", "skipped_samples"]

_BLOCKS_PER_READ = 64


def read_skip_marks(layout: StoreLayout, rows: range, slots: int) -> np.ndarray:
    """[len(rows), slots] bool: the marks of samples `rows`, first `slots` slots (all False in
    blocks not committed yet)."""
    try:
        return np.asarray(layout.array(SKIPPED)[rows.start:rows.stop, :slots]) != 0
    except CORRUPT_CHUNK_ERRORS as exc:
        raise StoreError(f"{layout.url}: the skip marks of samples {rows.start}.."
                         f"{rows.stop - 1} cannot be read: {redacted(exc)}; run `dalidr "
                         "inspect` on the store") from exc


def skipped_views(url: str) -> np.ndarray:
    """[N, slots] bool: views the teacher pass skipped."""
    layout = open_layout(url)
    return read_skip_marks(layout, range(layout.num_samples), layout.config.slots)


def skipped_samples(store: str | StoreLayout) -> np.ndarray:
    """Indices of samples with at least one skipped view. A complete store's commit summary
    counts them per block, so only blocks that have any are read (`store.commit_summary`);
    otherwise every block is, a run of blocks at a time (memory does not grow with N)."""
    layout = open_layout(store) if isinstance(store, str) else store
    slots = layout.config.slots
    summary = read_commit_summary(layout)
    if summary is None:
        n, step = layout.num_samples, layout.config.block_size * _BLOCKS_PER_READ
        found = [start + np.flatnonzero(read_skip_marks(
            layout, range(start, min(start + step, n)), slots).any(axis=1))
            for start in range(0, n, step)]
        return np.concatenate(found).astype(np.int64)
    found = [np.zeros(0, np.int64)]
    for block in (int(b) for b in np.flatnonzero(summary.skipped_views)):
        rows = layout.block_range(block)
        marks = read_skip_marks(layout, rows, slots)
        if int(marks.sum()) != int(summary.skipped_views[block]):
            raise StoreError(f"{layout.url}: block {block} has {int(marks.sum())} skipped "
                             f"views, its commit summary says {summary.skipped_views[block]}; "
                             "run `dalidr inspect` on the store")
        found.append(rows.start + np.flatnonzero(marks.any(axis=1)))
    return np.concatenate(found).astype(np.int64)
