"""The CPU split between the DALI loader and PyTorch (`dalidr.training.cpu_threads`).

The governor's decisions are checked on given CPU samples (a test machine's own load must
not decide a test), and the sampler on this machine's real /proc: ticks this process spends
are its own, not a neighbour's. The speed effect is measured by `bench/shared_cpu.py`.
"""

from __future__ import annotations

import os
import sys
import time

import pytest
import torch

from dalidr.training.cpu_threads import (
    CpuSample,
    ThreadGovernor,
    available_cores,
    foreign_cores,
    plan_threads,
    sample_cpu,
)

HZ = os.sysconf("SC_CLK_TCK")


def test_the_plan_splits_the_cpu_and_keeps_counts_given() -> None:
    cores = available_cores()
    plan = plan_threads(on_cpu=True)
    assert plan.loader == max(1, cores // 2) and plan.torch == cores and plan.governed
    given = plan_threads(on_cpu=True, loader=3, torch_threads=5)
    assert (given.loader, given.torch, given.governed) == (3, 5, False)
    gpu = plan_threads(on_cpu=False)
    assert gpu.torch is None and not gpu.governed


class Script:
    """CPU samples one second apart: `foreign` cores busy with others, `own` with us."""

    def __init__(self, foreign: list[float], own: float = 1.0) -> None:
        self.samples = [CpuSample(0.0, 0, 0)]
        for f in foreign:
            last = self.samples[-1]
            self.samples.append(CpuSample(last.wall + 1.0, last.busy + round((f + own) * HZ),
                                          last.own + round(own * HZ)))

    def __call__(self) -> CpuSample:
        return self.samples.pop(0)


def test_the_governor_gives_pytorch_the_cores_others_leave(monkeypatch) -> None:
    monkeypatch.setattr(time, "perf_counter", lambda: 1e9)  # every poll is due
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        governor = ThreadGovernor(most=4, sampler=Script([0.1, 2.0, 2.4, 9.0, 0.2, 0.0]))
        seen = []
        for _ in range(6):
            governor.poll()
            seen.append((governor.threads, torch.get_num_threads()))
        # A daemon's 0.1 core changes nothing; two busy neighbours leave two cores; more
        # than there are leaves one (never zero); once they leave, every core comes back.
        assert [t for t, _ in seen] == [4, 2, 2, 1, 4, 4]
        assert all(t == n for t, n in seen)
        assert governor.fewest == 1 and governor.changes == 3
        governor.start_epoch()
        assert (governor.fewest, governor.changes) == (4, 0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_this_process_busy_is_counted_as_its_own() -> None:
    start = sample_cpu()
    end_at = time.perf_counter() + 0.5
    while time.perf_counter() < end_at:
        pass
    end = sample_cpu()
    assert start is not None and end is not None
    assert end.own - start.own >= 0.3 * HZ  # the spin above, as this process's ticks
    assert end.busy - start.busy >= end.own - start.own - 2  # the machine saw it too
    # Others' share excludes ours: at most the cores there are, never negative.
    assert 0.0 <= foreign_cores(start, end) <= available_cores() + 0.5
