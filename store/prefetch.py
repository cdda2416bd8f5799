"""Background reading of one rank's epochs, piece by piece, first batches first.

A training loop asks for the piece of its epoch that holds the next batch (`get`); one worker
thread reads the pieces (`store.pieces.EpochPieces`: plan the epoch, then decode each block
when the first piece that needs it is read) in order, as fast as it can, so a piece is usually
read long before it is asked for, and the epoch's first piece is ready after the blocks of its
own views. When the training loop takes an epoch's tail piece (its last 1/8) the epoch's block
cache is released and the worker reads the next epoch while the tail is served, so an epoch
boundary does not stall and at most one epoch of decoded views (plus the previous tail) is
held, never two. A jump (resume, `set_epoch` to another epoch) drops what is read and starts
from the piece asked for.

A thread rather than a process: pieces are numpy arrays handed over without copying or
pickling, and numpy and zarr release the GIL for most of the work.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from dalidr.errors import OptionError
from store.curriculum import Curriculum, Schedule
from store.derived import require_derived
from store.pieces import EpochPieces, PieceSizes
from store.plan import check_plan
from store.reader import EpochData, StoreReader

__all__ = ["EpochPrefetcher"]


@dataclass(eq=False)
class _Reading:
    """One epoch being read from plan step `entry` on; `pieces` is None until planned."""

    epoch: int
    start: int
    entry: int
    pieces: EpochPieces | None = None
    error: Exception | None = None

    def serves(self, epoch: int, start: int, step: int) -> bool:
        if (self.epoch, self.start) != (epoch, start) or step < self.entry:
            return False
        return self.pieces is None or self.pieces.serves(step)

    def ready(self, step: int) -> bool:
        return self.error is not None or (
            self.pieces is not None and self.pieces.piece_of(step) < self.pieces.pieces_read)


class EpochPrefetcher:
    """Hands out one rank's epochs in pieces (`EpochData` of consecutive plan steps), reading
    ahead in a thread: the rest of the current epoch, then, once its tail is taken, the next
    epoch. `sizes` says how pieces are cut (`store.pieces.PieceSizes`)."""

    def __init__(self, reader: StoreReader, rank: int = 0, world: int = 1,
                 start_epoch: int = 0, *, start: int = 0,
                 skipped: np.ndarray | None = None,
                 curriculum: Curriculum | None = None,
                 sizes: PieceSizes | None = None) -> None:
        if start_epoch < 0:
            raise OptionError(f"start_epoch is {start_epoch}; must be >= 0")
        # Rank, world, start and the curriculum's difficulty checked now, not in the thread.
        check_plan(reader.plan_spec, start_epoch, rank, world, start=start, skipped=skipped)
        if curriculum is not None and curriculum.kind is not Schedule.NONE:
            require_derived(reader.layout)
        self.reader, self.rank, self.world = reader, rank, world
        self.sizes = sizes if sizes is not None else PieceSizes()
        self._plan = functools.partial(reader.plan, rank=rank, world=world, skipped=skipped,
                                       curriculum=curriculum)
        self._changed = threading.Condition()
        # What is read: the epoch being served, then at most the next one.
        self._readings: list[_Reading] = [_Reading(start_epoch, start, 0)]
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="dalidr-prefetch", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ the training loop's side

    def restart(self, epoch: int, start: int = 0, step: int = 0) -> None:
        """Read (`epoch`, `start`) from plan step `step` next, dropping what is read unless it
        serves that step (a resume, or a jump to another epoch)."""
        with self._changed:
            self._reading(epoch, start, step)

    def ready(self, epoch: int, start: int = 0, step: int = 0) -> bool:
        """Whether `get(epoch, start, step)` would return without waiting (it may raise)."""
        with self._changed:
            found = self._find(epoch, start, step)
            return found is not None and found.ready(step)

    def get(self, epoch: int, start: int = 0, step: int = 0) -> EpochData:
        """The piece of `epoch` (planned from global position `start`) that holds plan step
        `step`; waits until it is read. The arrays are the caller's (copied out of the cache)."""
        with self._changed:
            reading = self._reading(epoch, start, step)
            while not reading.ready(step):
                self._changed.wait()
            if reading.error is not None:
                self._readings.remove(reading)  # asked again, it is read again
                raise reading.error
            pieces = reading.pieces
            assert pieces is not None
            k = pieces.piece_of(step)
        data = pieces.piece(k)
        if k == len(pieces) - 1:  # the tail: the cache is released, the next epoch may start
            with self._changed:
                self._changed.notify_all()
        return data

    def __iter__(self) -> Iterator[EpochData]:
        """Every piece in order, from where the prefetcher starts, epoch after epoch."""
        with self._changed:
            first = self._readings[0]
            epoch, start, step = first.epoch, first.start, first.entry
        while True:
            data = self.get(epoch, start, step)
            yield data
            step = data.steps.stop
            if step >= len(data.plan):
                epoch, start, step = epoch + 1, 0, 0

    @property
    def held_views(self) -> int:
        """Decoded views the prefetcher holds: its epochs' block caches and their tails once
        copied out (the pieces it handed out are the caller's)."""
        with self._changed:
            return sum(r.pieces.held_views for r in self._readings if r.pieces is not None)

    def close(self) -> None:
        """Stop the worker (after the piece it is reading, if any)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._worker.join()

    def __enter__(self) -> EpochPrefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ bookkeeping (locked)

    def _find(self, epoch: int, start: int, step: int) -> _Reading | None:
        return next((r for r in self._readings if r.serves(epoch, start, step)), None)

    def _reading(self, epoch: int, start: int, step: int) -> _Reading:
        """The reading that serves (epoch, start, step), the ones before it dropped; a new one
        (all others dropped) if none does."""
        if self._closed:
            raise OptionError("the prefetcher is closed")
        found = self._find(epoch, start, step)
        if found is None:
            found = _Reading(epoch, start, step)
            self._readings = [found]
            self._changed.notify_all()
        elif found is not self._readings[0]:
            del self._readings[:self._readings.index(found)]
            self._changed.notify_all()
        return found

    def _next_job(self) -> _Reading | None:
        """The reading whose next piece (or plan) the worker does next, or None to wait: the
        served epoch's pieces in order; the next epoch's once the served one's tail is out."""
        for reading in self._readings:
            if reading.error is not None:
                return None
            if reading.pieces is None or reading.pieces.pieces_read < len(reading.pieces):
                return reading
            if not reading.pieces.released:
                return None
        if len(self._readings) == 1:
            last = self._readings[0]
            self._readings.append(_Reading(last.epoch + 1, 0, 0))
            return self._readings[1]
        return None

    # ------------------------------------------------------------------ the worker thread

    def _work(self) -> None:
        while True:
            with self._changed:
                job = self._next_job()
                while job is None and not self._closed:
                    self._changed.wait()
                    job = self._next_job()
                if self._closed:
                    return
            assert job is not None
            try:
                if job.pieces is None:
                    job.pieces = EpochPieces(self.reader, self._plan(job.epoch, start=job.start),
                                             job.entry, self.sizes)
                else:
                    job.pieces.read_next()
            except Exception as exc:  # raised by `get`, in the training loop
                job.error = exc
            with self._changed:
                self._changed.notify_all()
