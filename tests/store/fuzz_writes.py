"""The fuzz harness's write-failure class: a real `dalidr reinforce` whose k-th write fails.

A small teacher pass (real JPEGs, a seeded random timm teacher, DALI CPU) is run once without
faults, recording every object it writes, in order, through the injection point the other
write-failure tests use (`tests.faults.enospc_on`: zarr's local store `_put`, under every layer
of dalidr). Each trial then runs the same pass into a fresh folder with `OSError(ENOSPC)`
injected at the k-th write only (`Mutant(file=<the object that failed>, kind=WRITE_FAILURE,
offset=k)`), and checks that:
- the pass fails with a `StoreWriteError` (`NOT_REPORTED` if it succeeds, `WRONG_ERROR` for
  another dalidr error, `OTHER_ERROR` for any other exception);
- the message names the store (`UNNAMED`) and what was being written: the object's key, or,
  for a failure while the store is created, "the store's metadata and manifest" (the creation
  is redone as one step, `store.writer.interrupted_creation`), reported apart as
  `WRITE_STEP` so the count of messages without an object key stays visible
  (`UNNAMED_OBJECT` otherwise);
- the same command rerun without the fault succeeds and leaves a store byte-identical to the
  one written without faults (`NOT_RESUMED`).

Trials run in the calling process, one after another (about a second each on 2 cores); unlike
the store mutants they need no worker: they read nothing hostile and allocate what the pass
allocates. Trade-off: no per-trial time limit; a hang would stop the harness, visibly.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import threading
import time
from pathlib import Path

import pytest

from tests.faults import enospc_on
from tests.store.fuzz import Kind, Mutant, Outcome, Result, _error_outcome
from tests.store.helpers import tree_bytes

__all__ = ["WriteFuzz", "CREATION_STEP"]

# What a failure while the store is created names instead of an object (`store.writer`).
CREATION_STEP = "the store's metadata and manifest"


class WriteFuzz:
    """A reference teacher pass under `work`, and trials that fail its k-th write."""

    def __init__(self, work: Path, images: int = 16, slots: int = 2,
                 block_size: int = 4) -> None:
        from dalidr.augment.recipe import recipe
        from dalidr.data.sample_data import make_corpus
        from dalidr.teacher.reinforce import CompileMode, ReinforceConfig

        self.work = work
        make_corpus(work / "images", images, seed=2)
        self.config = ReinforceConfig(
            data=work / "images", teacher="test_resnet", random_teacher=True,
            recipe=recipe("rrc+mix", output_size=32, teacher_size=40), slots=slots, k=2,
            out=str(work / "reference.zarr"), seed=7, batch_size=8, block_size=block_size,
            slot_group=2, device="cpu", num_threads=1, compile=CompileMode.OFF, progress=False)
        self.writes = self._reference()
        self.want = tree_bytes(self.config.out)

    def _reference(self) -> list[str]:
        """Run the pass without faults; the keys it wrote, in order (one per write)."""
        from dalidr.teacher.reinforce import reinforce

        seen: list[str] = []

        def record(path: str) -> bool:
            seen.append(path)
            return False  # never fails

        with pytest.MonkeyPatch.context() as patch:
            enospc_on(patch, record)
            reinforce(self.config, rank=0, world=1)
        root = Path(self.config.out)
        return [Path(path).relative_to(root).as_posix() for path in seen]

    def spread(self, count: int) -> list[int]:
        """`count` write indices (1-based) spread evenly over the pass, first and last included."""
        total = len(self.writes)
        if count >= total:
            return list(range(1, total + 1))
        return sorted({1 + round(i * (total - 1) / max(count - 1, 1)) for i in range(count)})

    def first(self, part: str) -> int:
        """The index (1-based) of the first write of an object whose key contains `part`."""
        return next(i for i, key in enumerate(self.writes, 1) if part in key)

    def run(self, k: int) -> Result | None:
        """One trial (None: this pass made fewer than k writes, nothing was injected)."""
        from dalidr.errors import StoreWriteError
        from dalidr.teacher.reinforce import reinforce

        out = self.work / f"write-{k}" / "store.zarr"
        config = dataclasses.replace(self.config, out=str(out))
        counter, lock = itertools.count(1), threading.Lock()

        def kth(path: str) -> bool:
            with lock:
                return next(counter) == k

        start = time.perf_counter()
        error: Exception | None = None
        with pytest.MonkeyPatch.context() as patch:
            failed = enospc_on(patch, kth)
            try:
                reinforce(config, rank=0, world=1)
            except Exception as exc:  # every type is judged below
                error = exc
        try:
            if not failed:
                return None
            key = Path(failed[0]).relative_to(out).as_posix()
            outcome, details = self._judge(error, key, str(out), StoreWriteError)
            if not outcome.violation:
                try:
                    report = reinforce(config, rank=0, world=1)
                    details["rerun"] = f"blocks written {list(report.blocks_written)}"
                    got = tree_bytes(out)
                    if got != self.want:
                        differ = sorted(k for k in got.keys() | self.want.keys()
                                        if got.get(k) != self.want.get(k))
                        outcome, details["rerun"] = Outcome.NOT_RESUMED, f"differs: {differ[:8]}"
                except Exception as exc:  # a rerun that fails is the violation
                    outcome, details["rerun"] = Outcome.NOT_RESUMED, f"{type(exc).__name__}: {exc}"
            return Result(Mutant(key, Kind.WRITE_FAILURE, offset=k), outcome, details,
                          time.perf_counter() - start)
        finally:
            shutil.rmtree(out.parent, ignore_errors=True)

    @staticmethod
    def _judge(error: Exception | None, key: str, url: str,
               write_error: type[Exception]) -> tuple[Outcome, dict[str, str]]:
        """How the failed run reported the failed write of `key`."""
        if error is None:
            return Outcome.NOT_REPORTED, {"failed": f"the pass succeeded although {key} failed"}
        outcome, text = _error_outcome(error, url)
        details = {"failed": text}
        if outcome is not Outcome.REFUSED:
            return outcome, details
        if not isinstance(error, write_error):
            return Outcome.WRONG_ERROR, details
        if f"(object {key})" in text:
            return Outcome.WRITE_NAMED, details
        if CREATION_STEP in text:
            return Outcome.WRITE_STEP, details
        return Outcome.UNNAMED_OBJECT, details
