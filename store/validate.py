"""The one validation path for everything read from a store: metadata, manifest and block values.

A store may come from anyone (a download) or have been damaged (a disk, a copy, a half-finished
sync), so nothing read from it is trusted. `dalidr inspect`, `StoreReader` and the loaders all go
through this module, so inspect never calls a store intact that the loader would refuse:

- `check_layout` (from `store.layout.open_layout`, before anything is allocated): every array's
  metadata opens (no raw `JSONDecodeError`), has the schema's dtype and shape for the store's
  sample count and slots, and chunks no larger than the array; the sample count itself is
  justified by the store's objects (every chunk of `manifest/path_offsets`, [N + 1] int64, must
  exist), so a sample count of 2**40 is refused by name instead of allocating terabytes. Its
  manifest part (`check_manifest_layout`) and per-array check (`checked_array`) also guard
  `dalidr upgrade`, which reads a schema 2 store whose other arrays this schema does not know.
- `checked_manifest` (the layout's `manifest`): `store.manifest.read_manifest` (columns of the
  right shapes, relative paths inside the data root, the fingerprint over every column) with
  any damage reported as a StoreError, then labels in -1..num_classes - 1, sizes >= 0.
- `decode_views` (from `StoreReader` and `inspect`): decodes the stored columns of a set of views
  into records and top-k targets, validating op ids, magnitude bins, crops, erase and CutMix
  boxes, mix modes, partners (`dalidr.augment.records.validate_records`), class indices and
  probability levels, vectorised over the views, and names the store, array, block, sample and
  slot of the first bad value. A class repeated within one top-k is refused too (densified, it
  would give a target that does not sum to 1): every pair of the k positions is compared at
  once on the transposed [k, views] classes (`_repeated_class`), long contiguous rows rather
  than a sort of every top-k, which would cost more than all the other checks together.

Trade-off: values are validated where they are decoded, for exactly the views read (an epoch's
one slot per sample, or a whole block for inspect), so the cost follows the data served; it is
a few vectorised numpy passes over arrays already in memory (`bench/store.py` measures it per
block read against the read itself).
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import zarr
from zarr.errors import ZarrUserWarning

from dalidr.augment.ops import NUM_OPS
from dalidr.augment.recipe import Recipe
from dalidr.augment.records import COORD_SCALE, MixMode, validate_records
from dalidr.errors import DalidrError, RecordError, StoreError
from store.encoding import decode_records, dequantise_probs
from store.location import redacted
from store.manifest_view import ManifestBlockError

if TYPE_CHECKING:
    from store.layout import StoreLayout
    from store.manifest import Manifest

__all__ = [
    "READ_ERRORS",
    "open_array",
    "read_array",
    "check_layout",
    "check_manifest_layout",
    "checked_array",
    "checked_manifest",
    "check_manifest",
    "decode_views",
]

# What zarr, its codecs and the JSON parser raise on damaged objects or metadata (a checksum
# mismatch, a truncated stream, an invalid zarr.json, a node of the wrong type).
READ_ERRORS = (ValueError, RuntimeError, IndexError, TypeError, OSError, EOFError, KeyError,
               AttributeError, NotImplementedError, ArithmeticError, json.JSONDecodeError,
               UnicodeDecodeError)

_MANIFEST = "manifest"
_OFFSETS = f"{_MANIFEST}/path_offsets"
_PATH_BYTES = f"{_MANIFEST}/path_bytes"


def open_array(layout: StoreLayout, name: str) -> zarr.Array:
    """`layout.array(name)`, with damaged metadata reported as a StoreError naming the array."""
    try:
        array = layout.array(name)
        if not isinstance(array, zarr.Array):
            raise TypeError(f"the node is a {type(array).__name__}, not an array")
        return array
    except DalidrError:
        raise
    except READ_ERRORS as exc:
        raise StoreError(f"{layout.url}: array {name!r}: its metadata cannot be read: "
                         f"{type(exc).__name__}: {exc}") from exc


def read_array(layout: StoreLayout, name: str, selection: object = Ellipsis,
               where: str = "") -> np.ndarray:
    """`array[selection]` with damaged chunks reported as a StoreError naming the array."""
    try:
        return np.asarray(open_array(layout, name)[selection])  # type: ignore[index]
    except DalidrError:
        raise
    except READ_ERRORS as exc:
        raise StoreError(f"{layout.url}: array {name!r}{where} is damaged: "
                         f"{type(exc).__name__}: {redacted(exc)}") from exc


def _open_node(layout: StoreLayout, name: str) -> zarr.Array:
    """A manifest column, its metadata checked the same way (not cached in the layout)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ZarrUserWarning)
            node = layout.group[name]
        if not isinstance(node, zarr.Array):
            raise TypeError(f"the node is a {type(node).__name__}, not an array")
        return node
    except KeyError as exc:
        raise StoreError(f"{layout.url}: array {name!r} is missing") from exc
    except READ_ERRORS as exc:
        raise StoreError(f"{layout.url}: array {name!r}: its metadata cannot be read: "
                         f"{type(exc).__name__}: {exc}") from exc


def _check_chunks(layout: StoreLayout, name: str, array: zarr.Array) -> None:
    """Chunks (and shards) no larger than the array (along samples: than a block, too), so a
    decode allocates at most what the array's own extent justifies."""
    shape = array.shape
    inner = array.chunks
    outer = array.shards or inner
    for dim, (extent, chunk, shard) in enumerate(zip(shape, inner, outer, strict=True)):
        most = max(extent, 1, layout.config.block_size if dim == 0 else 1)
        padded = -(-extent // chunk) * chunk if chunk else 0
        if not 1 <= chunk <= most or not chunk <= shard <= max(padded, chunk):
            raise StoreError(f"{layout.url}: array {name!r} has chunks {list(inner)} and shards "
                             f"{list(outer)} for shape {list(shape)} (dimension {dim}): the "
                             "metadata is damaged")


def _check_array(layout: StoreLayout, name: str, array: zarr.Array,
                 shape: tuple[int, ...] | None = None, dtype: np.dtype | None = None) -> None:
    if shape is not None and tuple(array.shape) != shape:
        raise StoreError(f"{layout.url}: array {name!r} has shape {list(array.shape)}, the "
                         f"schema needs {list(shape)} for {layout.num_samples} samples")
    if dtype is not None and array.dtype != dtype:
        raise StoreError(f"{layout.url}: array {name!r} has dtype {array.dtype}, the schema "
                         f"needs {dtype}")
    _check_chunks(layout, name, array)


def _chunk_objects_present(layout: StoreLayout, name: str, array: zarr.Array) -> None:
    """StoreError unless every chunk object of a 1-d array exists (first missing named)."""
    chunk, location = array.chunks[0], layout.location
    folder = location.key_path(name)
    try:  # one listing (one request on an object store), not one existence check per chunk
        listed = {path[len(folder):].lstrip("/")
                  for path in location.list_folder(name, recursive=True)}
    except (OSError, ValueError) as exc:
        raise StoreError(f"{layout.url}: array {name!r} cannot be listed: {exc}") from exc
    for index in range(-(-array.shape[0] // chunk)):
        relative = array.metadata.encode_chunk_key((index,) + (0,) * (array.ndim - 1))
        key = f"{name}/{relative}"
        if relative not in listed:
            raise StoreError(
                f"{layout.url}: array {name!r} of shape {list(array.shape)} lacks its chunk "
                f"{key!r}: the store's sample count ({layout.num_samples}) or the array's "
                "metadata is not what its objects hold")


def check_layout(layout: StoreLayout) -> None:
    """Check every array's metadata against the schema and the objects (see module doc)."""
    from store.layout import COMMIT, _data_arrays, _derived_arrays

    n, cfg = layout.num_samples, layout.config
    check_manifest_layout(layout)
    for name, (dtype, shape, _, _) in {**_data_arrays(cfg), **_derived_arrays()}.items():
        _check_array(layout, name, open_array(layout, name), (n, cfg.slots) + shape, dtype)
    commit = open_array(layout, COMMIT)
    if commit.ndim < 1 or commit.shape[0] != layout.num_blocks:
        raise StoreError(f"{layout.url}: array {COMMIT!r} has shape {list(commit.shape)}, the "
                         f"schema needs {layout.num_blocks} blocks")
    _check_array(layout, COMMIT, commit)
    _check_extra_arrays(layout)


def checked_array(layout: StoreLayout, name: str, shape: tuple[int, ...],
                  dtype: np.dtype) -> zarr.Array:
    """`layout.array(name)` after checking its metadata: this shape and dtype, chunks and
    shards no larger than the array (for arrays outside the current schema: `dalidr upgrade`)."""
    array = open_array(layout, name)
    _check_array(layout, name, array, shape, dtype)
    return array


def check_manifest_layout(layout: StoreLayout) -> None:
    """The sample count backed by the manifest's objects and every manifest column's metadata
    (the part of `check_layout` that every schema since 2 shares: `dalidr upgrade` runs it on
    a schema 2 store before reading anything of it)."""
    n = layout.num_samples
    if isinstance(n, bool) or not 1 <= n <= 1 << 48:
        raise StoreError(f"{layout.url}: the store's attributes give {n!r} samples")
    # The sample count must be backed by objects before any array of that size is read.
    offsets = _open_node(layout, _OFFSETS)
    _check_array(layout, _OFFSETS, offsets, (n + 1,), np.dtype("int64"))
    _chunk_objects_present(layout, _OFFSETS, offsets)
    path_bytes = _open_node(layout, _PATH_BYTES)
    _check_array(layout, _PATH_BYTES, path_bytes, None, np.dtype("uint8"))
    if path_bytes.ndim != 1:
        raise StoreError(f"{layout.url}: array {_PATH_BYTES!r} has shape "
                         f"{list(path_bytes.shape)}, the schema needs one dimension")
    _chunk_objects_present(layout, _PATH_BYTES, path_bytes)
    for name in _manifest_columns(layout):
        if name in (_OFFSETS, _PATH_BYTES):
            continue
        column = _open_node(layout, name)
        if column.ndim < 1 or column.shape[0] != n or column.ndim > 2:
            raise StoreError(f"{layout.url}: array {name!r} has shape {list(column.shape)}, the "
                             f"schema needs {n} samples")
        _check_array(layout, name, column)


def _manifest_columns(layout: StoreLayout) -> list[str]:
    """Names of the manifest's arrays: the schema's, and any other found beside them."""
    from store.manifest import MANIFEST_COLUMNS

    names = {f"{_MANIFEST}/{name}" for name in MANIFEST_COLUMNS}
    return sorted(names | set(_child_arrays(layout, _MANIFEST)))


def _child_arrays(layout: StoreLayout, prefix: str = "") -> list[str]:
    """Names of the nodes under `prefix` that hold metadata, listed from the objects (not by
    parsing them, so one damaged zarr.json is reported under its own name)."""
    location = layout.location
    try:
        entries = location.list_folder(prefix, recursive=False)
    except (OSError, ValueError) as exc:
        raise StoreError(f"{layout.url}: {prefix or 'the store root'} cannot be listed: "
                         f"{exc}") from exc
    names = []
    for entry in entries:
        name = str(entry).rstrip("/").rsplit("/", 1)[-1]
        key = f"{prefix}/{name}" if prefix else name
        if location.exists(f"{key}/zarr.json"):
            names.append(key)
    return sorted(names)


def _check_extra_arrays(layout: StoreLayout) -> None:
    """Arrays beside the schema's (a user's): per-sample ones must have N rows."""
    known = {_MANIFEST, "records", "topk", "derived"}
    for name in _child_arrays(layout):
        if name in known or name in layout.data_names:
            continue
        try:
            node = layout.group[name]
        except READ_ERRORS as exc:
            raise StoreError(f"{layout.url}: node {name!r}: its metadata cannot be read: "
                             f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(node, zarr.Array):
            continue
        dims = getattr(node.metadata, "dimension_names", None) or ()
        if dims[:1] == ("sample",) and node.shape[0] != layout.num_samples:
            raise StoreError(f"{layout.url}: array {name!r} has shape {list(node.shape)}, the "
                             f"store has {layout.num_samples} samples")
        _check_chunks(layout, name, node)


# ------------------------------------------------------------------------------ manifest


def checked_manifest(layout: StoreLayout, digests: bool = True) -> Manifest:
    """The store's manifest, read with damage reported by name, its values checked; and,
    unless not `digests`, its block digests (`store.manifest_view`) read and their seal
    checked against it, so whatever the store holds is read on every path."""
    from store.manifest import read_manifest

    try:
        manifest = read_manifest(layout.group, layout.url, layout.num_samples,
                                 layout.fingerprint)
    except DalidrError:
        raise
    except READ_ERRORS as exc:
        raise StoreError(f"{layout.url}: the manifest cannot be read (a damaged chunk or "
                         f"metadata under manifest/): {type(exc).__name__}: "
                         f"{redacted(exc)}") from exc
    check_manifest(layout, manifest)
    if digests:
        _ = layout.manifest_view  # StoreError if the digests are damaged, linked or forged
    return manifest


def check_manifest(layout: StoreLayout, manifest: Manifest) -> None:
    """StoreError naming the first sample whose label or size cannot be right (paths are
    checked by `store.manifest.read_manifest`: relative, inside the data root)."""
    url, n = layout.url, layout.num_samples
    if len(manifest) != n:
        raise StoreError(f"{url}: the manifest has {len(manifest)} samples, the store {n}")
    labels = np.asarray(manifest.labels)
    bad = np.flatnonzero((labels < -1) | (labels >= layout.config.num_classes))
    if bad.size:
        i = int(bad[0])
        raise StoreError(f"{url}: manifest sample {i} ({manifest.paths[i]}) has label "
                         f"{int(labels[i])}, outside -1..{layout.config.num_classes - 1}")
    sizes = np.asarray(manifest.sizes)
    # -1: a skipped sample's file could not even be stat'ed (`reinforce --skip-bad`, spec 9).
    bad = np.flatnonzero((sizes < 0) & ~((sizes == -1) & np.asarray(manifest.skipped)))
    if bad.size:
        i = int(bad[0])
        raise StoreError(f"{url}: manifest sample {i} ({manifest.paths[i]}) has byte size "
                         f"{int(sizes[i])}")


# ------------------------------------------------------------------------------ block values


def _inside(boxes: np.ndarray) -> bool:
    """(y, x, h, w) fractions ending inside the image (one unit for independent rounding)."""
    end_y = np.add(boxes[..., 0], boxes[..., 2], dtype=np.int32)
    end_x = np.add(boxes[..., 1], boxes[..., 3], dtype=np.int32)
    return bool(end_y.max() <= COORD_SCALE + 1 and end_x.max() <= COORD_SCALE + 1)


def _records_ok(records: np.ndarray, recipe: Recipe, num_samples: int) -> bool:
    """The checks of `dalidr.augment.records.validate_records` as a few reductions, no masks: True
    if
    every record passes (the usual case); otherwise validate_records names the culprit."""
    if records.size == 0:
        return True
    for prefix in ("", "p_") if recipe.has_mix else ("",):
        crop = records[prefix + "crop"]
        if crop[..., 2:].min() == 0 or not _inside(crop) or records[prefix + "flip"].max() > 1:
            return False
        if recipe.has_ra_re:
            mags = records[prefix + "mags"]
            if (records[prefix + "ops"].max() >= NUM_OPS or mags.max() >= recipe.ra_num_bins
                    or mags.min() <= -recipe.ra_num_bins or not _inside(records[prefix + "erase"])):
                return False
    if recipe.has_mix:
        if (records["mix"].max() > max(MixMode) or records["partner"].max() >= num_samples
                or not _inside(records["box"])):
            return False
    return True



_PIECE = 4096  # views per duplicate-class pass: 4096 x 45 pairs x 2 B x 2 gathers < 1 MB


@functools.cache
def _pairs(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) of top-k positions."""
    return np.triu_indices(k, 1)


def _repeated_class(flat: np.ndarray) -> np.ndarray | None:
    """None if every row of the [views, k] classes is distinct, else the mask of rows that are
    not. Per piece of `_PIECE` views, the k (k - 1) / 2 position pairs are compared in one pass
    over two gathers of the transposed classes (contiguous rows, cache-sized temporaries)."""
    k = flat.shape[-1]
    if k < 2:
        return None
    first, second = _pairs(k)
    for start in range(0, len(flat), _PIECE):
        columns = flat[start:start + _PIECE].T.copy()
        same = np.equal(columns.take(first, 0), columns.take(second, 0))
        if same.any():
            mask = np.zeros(len(flat), dtype=bool)
            mask[start:start + _PIECE] = same.any(0)
            return mask
    return None


class _ViewNames(Sequence[str]):
    """Lazy culprit names: flat view index -> block, sample and slot (nothing is broadcast
    unless an error is raised)."""

    def __init__(self, shape: tuple[int, ...], samples: np.ndarray, slots: np.ndarray,
                 block_size: int) -> None:
        self.shape, self.block_size = shape, block_size
        self.samples = samples.reshape(samples.shape + (1,) * (len(shape) - samples.ndim))
        self.slots = slots

    def __len__(self) -> int:
        return int(np.prod(self.shape))

    def __getitem__(self, index):
        where = np.unravel_index(int(index), self.shape)
        sample = int(np.broadcast_to(self.samples, self.shape)[where])
        slot = int(np.broadcast_to(self.slots, self.shape)[where])
        return f"block {sample // self.block_size}, sample {sample}, slot {slot}"


def decode_views(layout: StoreLayout, columns: dict[str, np.ndarray], classes: np.ndarray,
                 gaps: np.ndarray, samples: np.ndarray, slots: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (records, classes int32, probs float32) of views read from the store.

    `columns` are the stored record columns, `classes` and `gaps` the stored top-k, all with
    leading shape S (e.g. [views] or [samples, slots]); `samples` and `slots` (broadcastable to
    S) say which view each entry is, for the error message."""
    cfg, url = layout.config, layout.url
    shape = np.shape(classes)[:-1]
    given = np.asarray(samples, dtype=np.int64)
    names = _ViewNames(shape, given, np.asarray(slots, dtype=np.int64), cfg.block_size)

    def fail(array: str, flat: np.ndarray, what: str) -> StoreError:
        index = int(np.flatnonzero(flat)[0])
        return StoreError(f"{url}: array {array!r}, {names[index]}: {what}")

    if cfg.recipe.has_mix:
        partner = np.asarray(columns["partner"]).reshape(-1)
        if partner.size and partner.max() >= layout.num_samples:
            bad = partner >= layout.num_samples
            raise fail("records/partner", bad, f"partner {int(partner[bad][0])} is not in "
                       f"0..{layout.num_samples - 1}")
    try:
        records = decode_records(columns, cfg.recipe, given, layout.image_sizes)
        if not _records_ok(records, cfg.recipe, layout.num_samples):  # fast path: reductions
            validate_records(records, cfg.recipe, layout.num_samples, names=names)
            raise RecordError("a record failed the fast check")  # not reached: named above
    except ManifestBlockError:
        raise  # the manifest's damage, named by block: not the records'
    except (StoreError, RecordError) as exc:
        raise StoreError(f"{url}: records of the views read are invalid: {exc}") from exc
    classes = np.asarray(classes)
    flat = classes.reshape(-1, classes.shape[-1])
    if flat.size and flat.max() >= cfg.num_classes:
        bad = np.asarray((flat >= cfg.num_classes).any(-1))
        raise fail("topk/classes", bad, f"a class index is outside 0..{cfg.num_classes - 1}: "
                   f"{flat[bad][0].tolist()}")
    repeated = _repeated_class(flat)
    if repeated is not None:
        row = flat[repeated][0]
        twice = int(row[np.flatnonzero((row[:, None] == row[None, :]).sum(0) > 1)[0]])
        raise fail("topk/classes", repeated, f"class {twice} appears twice in one top-k: "
                   f"{row.tolist()}")
    try:  # dequantising checks every level is >= 1; find the culprit only when one is not
        probs = dequantise_probs(np.asarray(gaps), cfg.prob_levels)
    except StoreError:
        sums = np.asarray(gaps).reshape(flat.shape).sum(-1, dtype=np.int64)
        bad = sums > cfg.prob_levels - 1
        raise fail("topk/prob_gaps", bad, f"the gaps sum to {int(sums[bad][0])}, past the "
                   f"{cfg.prob_levels} quantisation levels") from None
    return records, classes.astype(np.int32), probs
