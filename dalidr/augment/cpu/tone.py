"""The tone ops of RandAugment on the CPU, per sample, as DALI's graph computes them.

Identity, Posterize, Solarize and Equalize of `dalidr.augment.ops`, each a numba function over
one uint8 HWC image with the uniform signature `(src, dst, magnitude, fill)` of this package:
`magnitude` is the signed float32 magnitude DALI's `auto_aug` picks for the stored bin, mapped
to the op's parameter exactly as the op's `mag_to_param` does. All four are integer ops, so
they equal the DALI graph's pixels exactly (`tests/test_cpu_tone.py`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from dalidr.augment.equalize import lut_from_histogram

# PIL's table (dalidr.augment.equalize holds the definition), compiled for this package.
_lut = njit(lut_from_histogram, cache=True, nogil=True)

__all__ = ["identity", "posterize", "solarize", "equalize"]


@njit(cache=True, nogil=True)
def identity(src: Any, dst: Any, magnitude: float, fill: int) -> None:
    flat_src, flat_dst = src.reshape(-1), dst.reshape(-1)
    for i in range(flat_src.size):  # a flat loop: numba's 3-D slice assignment is 5x slower
        flat_dst[i] = flat_src[i]


@njit(cache=True, nogil=True)
def posterize(src: Any, dst: Any, magnitude: float, fill: int) -> None:
    # ops._posterize_mask: keep round(8 - m) high bits (numpy rounds half to even, as here).
    bits = int(np.round(np.float32(8.0) - np.float32(magnitude)))
    mask = np.uint8((0xFF << (8 - bits)) & 0xFF)
    flat_src, flat_dst = src.reshape(-1), dst.reshape(-1)
    for i in range(flat_src.size):
        flat_dst[i] = flat_src[i] & mask


@njit(cache=True, nogil=True)
def solarize(src: Any, dst: Any, magnitude: float, fill: int) -> None:
    # ops.solarize: pixels at or above the (float) threshold are inverted.
    threshold = np.float32(magnitude)
    flat_src, flat_dst = src.reshape(-1), dst.reshape(-1)
    for i in range(flat_src.size):
        value = flat_src[i]
        flat_dst[i] = value ^ np.uint8(255) if np.float32(value) >= threshold else value


@njit(cache=True, nogil=True)
def equalize(src: Any, dst: Any, magnitude: float, fill: int) -> None:
    # PIL's ImageOps.equalize, per channel (dalidr.augment.equalize holds the definition).
    height, width, channels = src.shape
    flat_src, flat_dst = src.reshape(-1), dst.reshape(-1)
    hist = np.zeros(256, dtype=np.int64)
    lut = np.empty(256, dtype=np.uint8)
    for c in range(channels):  # one channel at a time: strided loops, no per-pixel modulo
        hist[:] = 0
        for i in range(c, flat_src.size, channels):
            hist[flat_src[i]] += 1
        _lut(hist, lut, height * width)
        for i in range(c, flat_src.size, channels):
            flat_dst[i] = lut[flat_src[i]]
