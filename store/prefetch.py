"""Background preparation of the next epoch's plan and metadata while the current one trains.

Planning ImageNet takes under a second and reading its epoch of records and targets a few
seconds, both in numpy and zarr code that releases the GIL for most of its time. One worker
thread does it for epoch e + 1 as soon as epoch e is handed out, so a training loop that spends
longer than that on an epoch never waits (`bench/store.py` measures the wait). A thread rather
than a process: the result is a few hundred MB of numpy arrays that a thread hands over without
copying or pickling.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from dalidr.errors import OptionError
from store.curriculum import Curriculum, Schedule
from store.derived import require_derived
from store.plan import check_plan
from store.reader import EpochData, StoreReader

__all__ = ["EpochPrefetcher"]


class EpochPrefetcher:
    """Hands out EpochData for consecutive epochs, always reading one epoch ahead."""

    def __init__(self, reader: StoreReader, rank: int = 0, world: int = 1,
                 start_epoch: int = 0, *, start: int = 0,
                 skipped: np.ndarray | None = None,
                 curriculum: Curriculum | None = None) -> None:
        if start_epoch < 0:
            raise OptionError(f"start_epoch is {start_epoch}; must be >= 0")
        # Rank, world, start and the curriculum's difficulty checked now, not in the thread.
        check_plan(reader.plan_spec, start_epoch, rank, world, start=start, skipped=skipped)
        if curriculum is not None and curriculum.kind is not Schedule.NONE:
            require_derived(reader.layout)
        self.reader, self.rank, self.world = reader, rank, world
        self._read = functools.partial(reader.epoch, rank=rank, world=world, skipped=skipped,
                                       curriculum=curriculum)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dalidr-prefetch")
        self._pending: tuple[tuple[int, int], Future[EpochData]] | None = None
        self._schedule(start_epoch, start)
        self._next = start_epoch

    def _schedule(self, epoch: int, start: int = 0) -> None:
        self._pending = ((epoch, start), self._pool.submit(self._read, epoch, start=start))

    def restart(self, epoch: int, start: int = 0) -> None:
        """Read (`epoch`, `start`) next, dropping a read of another one not yet begun (a
        resume, or a jump to another epoch)."""
        if self._pending is not None and self._pending[0] != (epoch, start):
            self._pending[1].cancel()
            self._schedule(epoch, start)

    def get(self, epoch: int, start: int = 0) -> EpochData:
        """The data of `epoch` from global position `start` (waits only if it is not ready
        yet); starts reading epoch + 1 from its beginning."""
        if self._pending is not None and self._pending[0] == (epoch, start):
            data = self._pending[1].result()
        else:
            if self._pending is not None:
                self._pending[1].cancel()
            data = self._read(epoch, start=start)
        self._schedule(epoch + 1)
        self._next = epoch + 1
        return data

    def __iter__(self) -> Iterator[EpochData]:
        while True:
            yield self.get(self._next)

    def close(self) -> None:
        if self._pending is not None:
            self._pending[1].cancel()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> EpochPrefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
