"""Lossless record columns and quantised teacher probabilities: numpy in, plain arrays out.

These transforms run before zarr's codecs and are what makes the store small (paper Table 2
spends 8 bytes per (index, probability) pair and 4 bytes per coordinate; dalidr measures about
23 bytes per whole record on disk, see `bench/store.py`).

Records (lossless). A record is split into one column per field, so each column gets a
compressor tuned to its statistics (flip bits and op ids are nearly free once separated from
coordinates). Coordinates are stored in pixels, not in the record's 1/65535 fractions: records
are drawn in integer pixels and then quantised (`dalidr.augment.records`), so the fraction carries
only
log2(image side) bits of information but looks like 16 random bits to a compressor. A crop is
turned back into source pixels with the sample's (and for `p_crop` the partner's) image size,
an erase or CutMix box with the recipe's output size. The code is exact by construction: a
value whose pixel round trip does not reproduce it is stored as `ESCAPE + value` instead, so
any record, however it was made, comes back bit for bit.

Probabilities (lossy). Each view's top-k is sorted by probability; q = round(sqrt(p) * L),
clamped to 1..L so no entry becomes zero (KL stays finite), and stored as the gaps between
consecutive levels (L - q_0, q_0 - q_1, ...), small non-negative numbers that compress well.
Uniform steps in sqrt(p) spread KL(p || q) evenly over the entries; with L = 127 and k = 10
the mean KL between renormalised top-k distributions is about 1e-4 nats (`topk_kl`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import numpy as np

from dalidr.augment.recipe import Recipe
from dalidr.augment.records import COORD_SCALE, record_dtype
from dalidr.errors import StoreError

if TYPE_CHECKING:
    from store.manifest_view import LazyColumn

# (height, width) indexed by sample: the manifest's array, or its column read per block.
ImageSizes = Union[np.ndarray, "LazyColumn"]

__all__ = [
    "ESCAPE",
    "ColumnSpec",
    "record_columns",
    "encode_records",
    "decode_records",
    "sort_topk",
    "quantise_probs",
    "dequantise_probs",
    "topk_kl",
]

# Coordinate codes at or above this hold the raw 16-bit value (ESCAPE + value), not pixels.
ESCAPE = 1 << 16

# Coordinate fields (y, x, h, w) and what they are fractions of: the sample's own image,
# the mixing partner's image, or the output (a square of recipe.output_size).
_COORDINATES = {"crop": "source", "p_crop": "partner", "erase": "output",
                "p_erase": "output", "box": "output"}


@dataclass(frozen=True)
class ColumnSpec:
    """One stored column of the records: a record field, possibly re-coded."""

    # Record field name (also the zarr array's name under `records/`).
    name: str
    # Dtype stored on disk.
    dtype: np.dtype
    # Per-record shape of the field (e.g. (4,) for a box).
    shape: tuple[int, ...]
    # What coordinates are fractions of ("source", "partner", "output"), or None: stored as is.
    extent: str | None


def record_columns(recipe: Recipe) -> list[ColumnSpec]:
    """The columns records of `recipe` are stored as, in record field order."""
    dtype = record_dtype(recipe)
    columns = []
    for name in dtype.names or ():
        base, shape = dtype.fields[name][0].base, dtype.fields[name][0].shape  # type: ignore[index]
        extent = _COORDINATES.get(name)
        stored = base.newbyteorder("<") if base.itemsize > 1 else base
        stored = np.dtype("<u4") if extent else stored
        columns.append(ColumnSpec(name, np.dtype(stored), tuple(shape), extent))
    return columns


def _extents(spec: ColumnSpec, recipe: Recipe, records: np.ndarray, samples: np.ndarray,
             image_hw: ImageSizes) -> np.ndarray:
    """Float extents broadcastable against the field: [..., 4] for (y, x, h, w)."""
    if spec.extent == "output":
        return np.full((1,) * records.ndim + (4,), float(recipe.output_size))
    if spec.extent == "partner":
        owners = records["partner"].astype(np.int64)
        if owners.size and owners.max() >= len(image_hw):
            raise StoreError(f"a record's partner {int(owners.max())} is outside the "
                             f"{len(image_hw)} samples of the manifest")
    else:
        owners = np.broadcast_to(samples.reshape((-1,) + (1,) * (records.ndim - 1)), records.shape)
    hw = image_hw[owners].astype(np.float64)
    return hw[..., [0, 1, 0, 1]]


def _to_pixels(values: np.ndarray, extents: np.ndarray) -> np.ndarray:
    return np.rint(values.astype(np.float64) * extents / COORD_SCALE)


def _to_fraction(pixels: np.ndarray, extents: np.ndarray) -> np.ndarray:
    # The same expression as dalidr.augment.records._quantise, so the round trip is exact.
    return np.rint(pixels / extents * COORD_SCALE)


def encode_records(records: np.ndarray, recipe: Recipe, samples: np.ndarray,
                   image_hw: np.ndarray) -> dict[str, np.ndarray]:
    """Columns of `records` ([n, ...] of record_dtype; row i belongs to sample samples[i])."""
    samples = np.asarray(samples, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    for spec in record_columns(recipe):
        values = records[spec.name]
        if spec.extent is None:
            out[spec.name] = np.ascontiguousarray(values.astype(spec.dtype))
            continue
        extents = _extents(spec, recipe, records, samples, image_hw)
        pixels = _to_pixels(values, extents)
        exact = _to_fraction(pixels, extents) == values
        codes = np.where(exact, pixels, ESCAPE + values.astype(np.float64))
        out[spec.name] = codes.astype(spec.dtype)
    return out


def decode_records(columns: dict[str, np.ndarray], recipe: Recipe, samples: np.ndarray,
                   image_hw: ImageSizes) -> np.ndarray:
    """Records of record_dtype(recipe) from the columns made by `encode_records`."""
    samples = np.asarray(samples, dtype=np.int64)
    specs = record_columns(recipe)
    first = columns[specs[0].name]
    shape = first.shape[: first.ndim - len(specs[0].shape)]
    records = np.empty(shape, dtype=record_dtype(recipe))
    # Plain fields first: the partner column is needed to decode partner crops.
    for spec in sorted(specs, key=lambda s: s.extent is not None):
        codes = columns[spec.name]
        if spec.extent is None:
            records[spec.name] = codes
            continue
        extents = _extents(spec, recipe, records, samples, image_hw)
        raw = codes.astype(np.int64)
        escaped = raw >= ESCAPE
        values = np.where(escaped, raw - ESCAPE, _to_fraction(raw.astype(np.float64), extents))
        if (values > COORD_SCALE).any() or (values < 0).any():
            raise StoreError(f"records/{spec.name} holds a code that decodes outside 0..65535")
        records[spec.name] = values.astype(np.uint16)
    return records


def sort_topk(classes: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each view's top-k ordered by decreasing probability (ties keep the given order)."""
    order = np.argsort(-np.asarray(probs, dtype=np.float64), axis=-1, kind="stable")
    return np.take_along_axis(classes, order, -1), np.take_along_axis(probs, order, -1)


def quantise_probs(probs: np.ndarray, levels: int) -> np.ndarray:
    """Sorted probabilities -> uint8 gaps between consecutive sqrt levels (see module doc)."""
    q = np.clip(np.rint(np.sqrt(np.clip(probs, 0.0, 1.0)) * levels), 1, levels).astype(np.int16)
    gaps = np.empty(q.shape, dtype=np.uint8)
    gaps[..., 0] = levels - q[..., 0]
    gaps[..., 1:] = q[..., :-1] - q[..., 1:]
    return gaps


def dequantise_probs(gaps: np.ndarray, levels: int) -> np.ndarray:
    """float32 probabilities from `quantise_probs` gaps; StoreError if they are not valid gaps."""
    q = levels - np.cumsum(gaps.astype(np.int32), axis=-1)
    if q.size and q.min() < 1:
        raise StoreError(f"topk_probs holds gaps that sum past the {levels} levels")
    return ((q.astype(np.float32) / levels) ** 2).astype(np.float32)


def topk_kl(reference: np.ndarray, approx: np.ndarray) -> float:
    """Mean KL(reference || approx) in nats over views, each top-k renormalised to sum to 1."""
    p = np.asarray(reference, dtype=np.float64)
    q = np.asarray(approx, dtype=np.float64)
    p = p / p.sum(-1, keepdims=True)
    q = q / q.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    return float(terms.sum(-1).mean())
