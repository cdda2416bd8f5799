"""Background preparation of the next epoch's plan and metadata while the current one trains.

Planning ImageNet takes under a second and reading its epoch of records and targets a few
seconds, both in numpy and zarr code that releases the GIL for most of its time. One worker
thread does it for epoch e + 1 as soon as epoch e is handed out, so a training loop that spends
longer than that on an epoch never waits (`bench/store.py` measures the wait). A thread rather
than a process: the result is a few hundred MB of numpy arrays that a thread hands over without
copying or pickling.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from dalidr.errors import OptionError
from store.reader import EpochData, StoreReader

__all__ = ["EpochPrefetcher"]


class EpochPrefetcher:
    """Hands out EpochData for consecutive epochs, always reading one epoch ahead."""

    def __init__(self, reader: StoreReader, rank: int = 0, world: int = 1,
                 start_epoch: int = 0) -> None:
        if start_epoch < 0:
            raise OptionError(f"start_epoch is {start_epoch}; must be >= 0")
        reader.plan(start_epoch, rank, world)  # validates rank and world now, not in the thread
        self.reader, self.rank, self.world = reader, rank, world
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dalidr-prefetch")
        self._pending: tuple[int, Future[EpochData]] | None = None
        self._schedule(start_epoch)
        self._next = start_epoch

    def _schedule(self, epoch: int) -> None:
        self._pending = (epoch, self._pool.submit(self.reader.epoch, epoch, self.rank, self.world))

    def get(self, epoch: int) -> EpochData:
        """The data of `epoch` (waits only if it is not ready yet); starts on epoch + 1."""
        if self._pending is not None and self._pending[0] == epoch:
            data = self._pending[1].result()
        else:
            if self._pending is not None:
                self._pending[1].cancel()
            data = self.reader.epoch(epoch, self.rank, self.world)
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
