"""Skip marks: which stored views the teacher pass could not make, so no loader serves them.

`dalidr reinforce --skip-bad` records an unreadable image (unreadable file, not a JPEG,
truncated, undecodable) instead of stopping, and so every view of it is skipped; with mixing
recipes a view whose partner image is unreadable is skipped too. The store's schema has no
field for this, so the marks live beside it in the same Zarr group, as one extra array that the
store's readers ignore and its tools carry (`dalidr subset` keeps the marks of the slots it
keeps):

    /dalidr_skipped    [N, slots] uint8, 1: skipped; chunk = one block, written before commit

Its chunks follow the store's blocks and are written whole before the block's commit entry, so
the marks are as crash-safe and byte-reproducible as the block itself. The top-k of a skipped
view is stored as classes 0..k-1 with probability 0 (quantised to the lowest level, which a
real teacher's top-1 practically never is), a second, schema-level sign; loaders must use
`skipped_views` (or `skipped_samples`) to leave such views out. Trade-off: a separate array
keeps the schema unchanged at the cost of readers having to ask for it; a schema field would
make the store readers enforce it. The teacher pass writes the marks (`dalidr.teacher.skips`
re-exports this module); they live here, on the store's floor, so store tools can carry them.
"""


from __future__ import annotations

import warnings

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec
from zarr.errors import ZarrUserWarning

from dalidr.errors import StoreError
from store.layout import StoreLayout, open_layout
from store.write_errors import writing

__all__ = ["SKIPPED", "create_skip_marks", "has_skip_marks", "write_skip_marks",
           "read_skip_marks", "skipped_views", "skipped_samples"]

SKIPPED = "dalidr_skipped"


def _array(layout: StoreLayout) -> zarr.Array | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ZarrUserWarning)
        try:
            return layout.group[SKIPPED]  # type: ignore[return-value]
        except KeyError:
            return None


def create_skip_marks(url: str) -> None:
    """Add the (all zero) skip-mark array to a freshly created store."""
    layout = open_layout(url, read_only=False)
    cfg = layout.config
    with warnings.catch_warnings(), writing(layout.location,
                                            f"the metadata of array {SKIPPED!r}", 4096):
        warnings.simplefilter("ignore", ZarrUserWarning)
        layout.group.create_array(
            SKIPPED, shape=(layout.num_samples, cfg.slots), dtype="u1",
            chunks=(cfg.block_size, cfg.slots),
            compressors=[BloscCodec(cname="zstd", clevel=9, shuffle=BloscShuffle.bitshuffle),
                         Crc32cCodec()],
            fill_value=0, dimension_names=("sample", "slot"))


def has_skip_marks(url: str) -> bool:
    return _array(open_layout(url)) is not None


def write_skip_marks(layout: StoreLayout, block: int, marks: np.ndarray) -> None:
    """Write one block's marks [n, slots] (bool); call before the block is committed."""
    array = _array(layout)
    samples = layout.block_range(block)
    marks = np.asarray(marks, dtype=np.uint8)
    if marks.shape != (len(samples), layout.config.slots):
        raise StoreError(f"{layout.url}: skip marks of block {block} have shape "
                         f"{list(marks.shape)}, expected {[len(samples), layout.config.slots]}")
    if array is None:
        if marks.any():
            raise StoreError(f"{layout.url}: the store has no {SKIPPED!r} array to record "
                             "skipped views in (it was not created by `dalidr reinforce`)")
        return
    # A writer killed while writing this chunk left `<key>.<uuid>.partial` behind: remove it.
    key = f"{SKIPPED}/{array.metadata.encode_chunk_key((block, 0))}"
    with writing(layout.location, f"the skip marks of block {block} (samples {samples.start}.."
                 f"{samples.stop - 1}) of array {SKIPPED!r} (object {key})", marks.nbytes):
        layout.location.remove_partials(key)
        array[samples.start:samples.stop] = marks


def read_skip_marks(layout: StoreLayout, rows: range, slots: int) -> np.ndarray | None:
    """[len(rows), slots] bool: the marks of samples `rows`, first `slots` slots; None if the
    store has no skip-mark array (not made by `dalidr reinforce`)."""
    array = _array(layout)
    if array is None:
        return None
    return np.asarray(array[rows.start:rows.stop, :slots]) != 0


def skipped_views(url: str) -> np.ndarray:
    """[N, slots] bool: views the teacher pass skipped (all False if the store has no marks)."""
    layout = open_layout(url)
    array = _array(layout)
    if array is None:
        return np.zeros((layout.num_samples, layout.config.slots), dtype=bool)
    return np.asarray(array[...]) != 0


def skipped_samples(url: str) -> np.ndarray:
    """Indices of samples with at least one skipped view."""
    return np.flatnonzero(skipped_views(url).any(axis=1))
