"""Skip marks: which stored views the teacher pass could not make, so no loader serves them.

`dalidr reinforce --skip-bad` records an unreadable image (unreadable file, not a JPEG,
truncated, undecodable) instead of stopping, and so every view of it is skipped; with mixing
recipes a view whose partner image is unreadable is skipped too. The store's schema (`store/`)
has no field for this, so the marks live beside it in the same Zarr group, as one extra array
that the store's readers and tools ignore:

    /dalidr_skipped    [N, slots] uint8, 1: skipped; chunk = one block, written before commit

Its chunks follow the store's blocks and are written whole before the block's commit entry, so
the marks are as crash-safe and byte-reproducible as the block itself. The top-k of a skipped
view is stored as classes 0..k-1 with probability 0 (quantised to the lowest level, which a
real teacher's top-1 practically never is), a second, schema-level sign; loaders must use
`skipped_views` (or `skipped_samples`) to leave such views out. Trade-off: a separate array
keeps the schema unchanged at the cost of readers having to ask for it; a schema field would
make the store readers enforce it (proposed to the store's owner). The array and its helpers
are `store.skip_marks`, re-exported here.
"""

from __future__ import annotations

# The marks and their helpers live on the store's floor (store/skip_marks.py), so that store
# tools such as `dalidr subset` carry them; this module keeps the teacher pass's import path.
from store.skip_marks import (
    SKIPPED,
    create_skip_marks,
    has_skip_marks,
    read_skip_marks,
    skipped_samples,
    skipped_views,
    write_skip_marks,
)

__all__ = ["SKIPPED", "create_skip_marks", "has_skip_marks", "write_skip_marks",
           "read_skip_marks", "skipped_views", "skipped_samples"]
