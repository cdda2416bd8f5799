"""Skip marks: which stored views the teacher pass could not make, so no loader serves them.

`dalidr reinforce --skip-bad` records an unreadable image (unreadable file, not a JPEG,
truncated, undecodable) instead of stopping, and so every view of it is skipped; with mixing
recipes a view whose partner image is unreadable is skipped too. The marks are a data array of
the store (schema 3), written with each block and sealed by its digest:

    /skipped    [N, slots] uint8, 1: skipped; one shard per block, written before commit

The top-k of a skipped view is stored as classes 0..k-1 with probability 0 (quantised to the
lowest level, which a real teacher's top-1 practically never is), a second sign; loaders use
`skipped_views` (or `skipped_samples`) to leave such views out. The array and its helpers are
`store.skip_marks`, re-exported here.
"""

from __future__ import annotations

# The marks and their helpers live on the store's floor (store/skip_marks.py), where the
# store's tools read them; this module keeps the teacher pass's import path.
from store.skip_marks import SKIPPED, read_skip_marks, skipped_samples, skipped_views

__all__ = ["SKIPPED", "read_skip_marks", "skipped_views", "skipped_samples"]
