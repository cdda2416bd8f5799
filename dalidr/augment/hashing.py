"""Counter-based random numbers: splitmix64's finaliser over (seed, stream, indices).

Everything dalidr draws from (seed, sample, slot, epoch, ...) goes through this hash rather
than a stateful generator, so a value depends only on its own coordinates: not on batching,
chunking, the number of processes or what else was drawn before. The sampler
(`dalidr.augment.records`) and the epoch plans (`store.plan`) both use it.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

__all__ = ["GOLDEN", "M1", "M2", "mix64", "keyed", "unit_interval"]

GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: the splitmix64 increment
M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)
# An array, or one uint64 (a seed being mixed); the result is of the same kind.
_U64 = TypeVar("_U64", np.ndarray, np.uint64)


def mix64(x: _U64) -> _U64:
    """splitmix64's finaliser, elementwise on uint64 (a bijection with good avalanche)."""
    x = x ^ (x >> np.uint64(30))
    x = x * M1
    x = x ^ (x >> np.uint64(27))
    x = x * M2
    return x ^ (x >> np.uint64(31))


def unit_interval(keys: np.ndarray) -> np.ndarray:
    """Uniform float64 in [0, 1) from 64-bit hashes: their top 53 bits, exactly representable."""
    return (keys >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def keyed(seed: int, stream: int, *indices: np.ndarray | int) -> np.ndarray:
    """A 64-bit hash per element of the broadcast indices, keyed by (seed, stream)."""
    with np.errstate(over="ignore"):
        key = mix64(np.asarray(np.uint64(seed) * GOLDEN + np.uint64(stream), dtype=np.uint64))
        for index in indices:
            key = mix64(key + np.asarray(index).astype(np.uint64) * GOLDEN)
        return key
