"""Reading many selections of a store at once: one call on zarr's event loop for all of them.

zarr serves each `array[selection]` as a round trip through its event loop; a loader that
needs a block's worth of several arrays for each of dozens of scattered blocks would pay that
(and, on object storage, one request latency) per selection, one after another. Gathered, the
fetches overlap and the codecs run in zarr's thread pool.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

__all__ = ["read_concurrently"]


def read_concurrently(reads: list[tuple[zarr.Array, Any]]) -> list[np.ndarray]:
    """`array[selection]` for each (array, selection) pair, in order."""

    async def gather() -> list[np.ndarray]:
        pending = [array.async_array.getitem(selection) for array, selection in reads]
        return [np.asarray(values) for values in await asyncio.gather(*pending)]

    return sync(gather())
