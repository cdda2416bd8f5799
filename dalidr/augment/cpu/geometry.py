"""The geometric ops of RandAugment on the CPU, per sample, as DALI's CPU operators compute them.

ShearX, ShearY, TranslateX, TranslateY and Rotate of `dalidr.augment.ops`, each a numba function
over one uint8 HWC image with the uniform signature `(src, dst, magnitude, fill)` of this
package: `magnitude` is the signed float32 magnitude DALI's `auto_aug` picks for the stored bin
(the translations': whole pixels), mapped to the op's parameter as its `mag_to_param` does.

Stores labelled through DALI must replay to the same pixels here, so the warps follow DALI's CPU
warp (`WarpCPU` with an affine mapping, nearest neighbour) step by step, in float32 as it does:
- the operator is given the forward (source to destination) matrix and inverts it in float32
  (2x2 part: adjugate over determinant; translation: minus the inverse times it);
- destination pixel (x, y) is taken at its centre, (x + 0.5, y + 0.5), and mapped as
  `m[i][2] + m[i][0] * x + m[i][1] * y`, left to right, once per row; along the row the source
  point then grows by the matrix's first column, an addition per pixel, restarted from the
  row's start plus 256 columns every 256 pixels (DALI's checkpoints against drift);
- the source pixel is the floor of that point; outside the image the pixel is `fill`.
Rotate builds its matrix as DALI's rotate does: radians = degrees * float(pi/180), cosf and sinf
of it, the product translate(size/2) . rotate . translate(-size/2) evaluated as float32 dot
products; the output keeps the input's size. The translations are DALI's padded slice: a whole
pixel shift, exact. `tests/test_cpu_geometry.py` checks every op, bin and sign against DALI.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

__all__ = ["shear_x", "shear_y", "translate_x", "translate_y", "rotate"]

_TILE = 256  # DALI's WarpCPU restarts the running source point every 256 output columns
_BAND = 32  # rows whose source points `_warp` advances together (a schedule, not a result)
_HALF = np.float32(0.5)
_ONE, _TWO, _THREE = np.uint64(1), np.uint64(2), np.uint64(3)
_DEG2RAD = np.float32(math.pi / 180)  # DALI's deg2rad(float): the constant rounded to float


@njit(cache=True, nogil=True)
def _warp(src: Any, dst: Any, m: Any, fill: int) -> None:
    """Fill `dst` from `src` through the destination-to-source float32 affine matrix `m` (2x3).

    DALI's order of float32 operations is kept, since one ulp moves a nearest-neighbour pick.
    Only the schedule differs: `_BAND` rows advance together, one column at a time, so their
    running source points (each its own chain of additions, as in DALI) are computed side by
    side in vector registers; the pixels are then copied row by row.
    """
    out_h, out_w = dst.shape[0], dst.shape[1]
    in_h, in_w = src.shape[0], src.shape[1]
    flat_src, flat_dst = src.reshape(-1), dst.reshape(-1)
    step_x, step_y = m[0, 0], m[1, 0]
    tile_x, tile_y = np.float32(_TILE) * step_x, np.float32(_TILE) * step_y
    value = np.uint8(fill)
    row_x, row_y = np.empty(_BAND, np.float32), np.empty(_BAND, np.float32)
    run_x, run_y = np.empty(_BAND, np.float32), np.empty(_BAND, np.float32)
    # Byte offset of each output pixel's source pixel in the tile, -1 outside the image.
    offsets = np.empty((_TILE, _BAND), np.int32)
    for top in range(0, out_h, _BAND):
        rows = min(_BAND, out_h - top)
        for k in range(_BAND):  # rows past the end are computed and never used
            centre_y = np.float32(top + k) + _HALF
            row_x[k] = m[0, 2] + m[0, 0] * _HALF + m[0, 1] * centre_y
            row_y[k] = m[1, 2] + m[1, 0] * _HALF + m[1, 1] * centre_y
        for start in range(0, out_w, _TILE):
            count = min(_TILE, out_w - start)
            run_x[:] = row_x
            run_y[:] = row_y
            for j in range(count):
                for k in range(_BAND):
                    ix, iy = np.int32(np.floor(run_x[k])), np.int32(np.floor(run_y[k]))
                    inside = (ix >= 0) & (ix < in_w) & (iy >= 0) & (iy < in_h)
                    offsets[j, k] = (iy * in_w + ix) * 3 if inside else -1
                    run_x[k] += step_x
                    run_y[k] += step_y
            for k in range(rows):
                # Unsigned indices: numba then skips its negative-index fix-up per access.
                out = np.uint64(((top + k) * out_w + start) * 3)
                for j in range(count):
                    offset = offsets[j, k]
                    if offset >= 0:
                        at = np.uint64(offset)
                        flat_dst[out] = flat_src[at]
                        flat_dst[out + _ONE] = flat_src[at + _ONE]
                        flat_dst[out + _TWO] = flat_src[at + _TWO]
                    else:
                        flat_dst[out] = value
                        flat_dst[out + _ONE] = value
                        flat_dst[out + _TWO] = value
                    out += _THREE
            row_x += tile_x
            row_y += tile_y


@njit(cache=True, nogil=True)
def _inverse(forward: Any) -> Any:
    """DALI's float32 inverse of a 2x3 affine matrix (`affine_mat_inv`: 2x2 inverse, -m t)."""
    a, b, c, d = forward[0, 0], forward[0, 1], forward[1, 0], forward[1, 1]
    det = a * d - b * c
    inv = np.empty((2, 3), dtype=np.float32)
    inv[0, 0], inv[0, 1] = d / det, -b / det
    inv[1, 0], inv[1, 1] = -c / det, a / det
    tx, ty = forward[0, 2], forward[1, 2]
    for i in range(2):
        # (-m) * t: a row of the negated inverse dotted with t, first term first.
        inv[i, 2] = -inv[i, 0] * tx + -inv[i, 1] * ty
    return inv


@njit(cache=True, nogil=True)
def _shear(src: Any, dst: Any, sx: np.float32, sy: np.float32, fill: int) -> None:
    """`fn.warp_affine` of `fn.transforms.shear(shear=[sx, sy])` (origin at the top-left
    corner), which maps (x, y) forward to (x + sx * y, y + sy * x)."""
    forward = np.zeros((2, 3), dtype=np.float32)
    forward[0, 0], forward[0, 1] = 1.0, sx
    forward[1, 0], forward[1, 1] = sy, 1.0
    _warp(src, dst, _inverse(forward), fill)


@njit(cache=True, nogil=True)
def shear_x(src: Any, dst: Any, magnitude: float, fill: int) -> None:
    # ops._shear_x_param: shear [-m, 0] (torchvision's direction).
    _shear(src, dst, -np.float32(magnitude), np.float32(0.0), fill)


@njit(cache=True, nogil=True)
def shear_y(src: Any, dst: Any, magnitude: float, fill: int) -> None:
    # ops._shear_y_param: shear [0, -m].
    _shear(src, dst, np.float32(0.0), -np.float32(magnitude), fill)


@njit(cache=True, nogil=True)
def _shift(src: Any, dst: Any, offset: int, axis: int, fill: int) -> None:
    """`fn.slice(start=-offset, rel_shape=1, out_of_bounds_policy="pad")` along `axis` (0: rows,
    1: columns): dst[i] = src[i - offset], `fill` where that is outside the image."""
    height, width = src.shape[0], src.shape[1]
    row = width * 3
    flat_src, flat_dst = src.reshape(-1), dst.reshape(-1)
    value = np.uint8(fill)
    # The rows (axis 0) or columns (axis 1) that have a source: [first, last).
    extent = height if axis == 0 else width
    first, last = min(max(offset, 0), extent), max(min(extent + offset, extent), 0)
    for y in range(height):
        out = flat_dst[y * row:(y + 1) * row]
        if axis == 0 and not first <= y < last:
            out[:] = value
            continue
        # Copy through row views: their indices cannot be negative, so the loop vectorises.
        source_y = y - offset if axis == 0 else y
        source = flat_src[source_y * row:(source_y + 1) * row]
        lo, hi = (0, width) if axis == 0 else (first, last)
        shift = 0 if axis == 0 else offset * 3
        out[:lo * 3] = value
        out[hi * 3:] = value
        part, part_source = out[lo * 3:hi * 3], source[lo * 3 - shift:hi * 3 - shift]
        for i in range(part.size):
            part[i] = part_source[i]


@njit(cache=True, nogil=True)
def _pixels(magnitude: float) -> int:
    # ops._shift casts the float32 offset to int32. The offsets are whole pixels; were one not,
    # DALI's cast rounds half away from zero (2.5 -> 3), exact here in float64.
    value = np.float64(np.float32(magnitude))
    whole = int(math.floor(abs(value) + 0.5))
    return whole if value >= 0 else -whole


@njit(cache=True, nogil=True)
def translate_x(src: Any, dst: Any, magnitude: float, fill: int) -> None:
    _shift(src, dst, _pixels(magnitude), 1, fill)


@njit(cache=True, nogil=True)
def translate_y(src: Any, dst: Any, magnitude: float, fill: int) -> None:
    _shift(src, dst, _pixels(magnitude), 0, fill)


@njit(cache=True, nogil=True)
def rotate(src: Any, dst: Any, magnitude: float, fill: int) -> None:
    """`fn.rotate(angle=m, keep_size=True)`: m degrees counter-clockwise on screen, about the
    image centre; DALI's destination-to-source matrix, in its float32 steps."""
    # DALI negates the angle (y points down), converts it, then rotates by minus that.
    radians = -((-np.float32(magnitude)) * _DEG2RAD)
    cos, sin = np.float32(math.cos(radians)), np.float32(math.sin(radians))
    half_w = np.float32(src.shape[1]) * _HALF
    half_h = np.float32(src.shape[0]) * _HALF
    m = np.empty((2, 3), dtype=np.float32)
    m[0, 0], m[0, 1] = cos, -sin
    m[1, 0], m[1, 1] = sin, cos
    # Third column of translate(in/2) . rotate . translate(-out/2): a float32 dot product of the
    # row (cos, -sin, half_w) with (-half_w, -half_h, 1), term by term.
    m[0, 2] = cos * -half_w + -sin * -half_h + half_w
    m[1, 2] = sin * -half_w + cos * -half_h + half_h
    _warp(src, dst, m, fill)
