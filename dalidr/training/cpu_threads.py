"""How training splits the CPU between the DALI loader and PyTorch, so a shared machine slows it
in proportion to the CPU it loses.

On a GPU the loader has the CPU and the model the GPU. On a CPU both want the same cores, and
PyTorch's default (one spinning OpenMP thread per core) fails badly when another process wants
them too: every operator ends at a barrier where a thread spins, waiting for a sibling the
scheduler has parked behind the other process, and a 2-core machine shared with one more job
trained 5-25x slower, not 2x. Two measures (`bench/shared_cpu.py` measures both, alone and
beside another PyTorch job):
- the loader's DALI workers take half the cores (one on 2 cores): with two, their work
  preempts PyTorch's team mid-operator and the reinforced store's heavier replay
  (RandAugment, RandomErase) left `dr` at 0.69-0.91 of `erm`'s speed in three runs; with
  one, `dr` trains at `erm`'s speed (1.02), as the paper promises;
- `ThreadGovernor` watches, every 2 s, how much of this process's cores other processes
  used, and gives PyTorch only the cores left (at least one), restoring them when the
  neighbour leaves: a single compute thread has no barrier to spin at, so a shared machine
  slows training in proportion to the CPU it loses. Fully passive OpenMP waiting
  (`OMP_WAIT_POLICY=PASSIVE`) was measured too: a third slower on a quiet machine.
Either count can be set (`--threads`, `--torch-threads`; a set count is never changed).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ThreadPlan", "ThreadGovernor", "CpuSample", "available_cores", "foreign_cores",
           "plan_threads", "sample_cpu"]

# DALI workers when a GPU computes (the loader decodes on the GPU; the CPU workers read and
# prepare): the loader's long-standing default.
GPU_LOADER_THREADS = 2


@dataclass(frozen=True)
class ThreadPlan:
    """DALI worker threads and PyTorch intra-op threads for one training process."""

    loader: int
    torch: int | None  # None: leave PyTorch's own setting (GPU training)
    # Whether `ThreadGovernor` may lower PyTorch's threads while others use the cores.
    governed: bool = False


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, as `taskset` and cgroups set it)."""
    cpus = _allowed_cpus()
    return len(cpus) if cpus is not None else os.cpu_count() or 1


def plan_threads(on_cpu: bool, loader: int | None = None,
                 torch_threads: int | None = None) -> ThreadPlan:
    """The split for a run on the CPU (`on_cpu`) or a GPU; explicit counts are kept as given."""
    if not on_cpu:
        return ThreadPlan(loader or GPU_LOADER_THREADS, torch_threads)
    cores = available_cores()
    return ThreadPlan(loader or max(1, cores // 2), torch_threads or cores,
                      governed=torch_threads is None)


def _allowed_cpus() -> set[int] | None:
    """The CPUs this process may run on; None where the OS does not say (not Linux)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:
        return None


@dataclass
class CpuSample:
    wall: float  # seconds (perf_counter)
    busy: int  # clock ticks the allowed CPUs spent busy
    own: int  # clock ticks of this process (all its threads)


def _process_sampler() -> Callable[[], CpuSample | None]:
    """`sample_cpu` over the CPUs this process may use (looked up once)."""
    cpus = _allowed_cpus()
    return lambda: sample_cpu(cpus)


def sample_cpu(cpus: set[int] | None = None) -> CpuSample | None:
    """Busy ticks of the CPUs this process may use (`cpus`; None: all), and this process's
    own; None without /proc (not Linux)."""
    wall = time.perf_counter()
    try:
        busy = 0
        for line in Path("/proc/stat").read_text().splitlines()[1:]:
            if not line.startswith("cpu"):
                break
            name, *values = line.split()
            if cpus is not None and int(name[3:]) not in cpus:
                continue
            user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in values[:7])
            busy += user + nice + system + irq + softirq
        stat = Path("/proc/self/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        own = int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None
    return CpuSample(wall, busy, own)


def foreign_cores(start: CpuSample, end: CpuSample) -> float:
    """Cores other processes kept busy between two samples."""
    ticks = (end.busy - start.busy) - (end.own - start.own)
    return max(ticks, 0) / ((end.wall - start.wall) * os.sysconf("SC_CLK_TCK"))


@dataclass
class ThreadGovernor:
    """Gives PyTorch the cores other processes leave: `poll()` once per step; every
    `interval` seconds it measures the cores others used and sets
    `torch.set_num_threads(max(1, most - round(foreign)))`."""

    most: int
    interval: float = 2.0
    threads: int = 0
    changes: int = 0
    fewest: int = 0
    # Where the samples come from (the CPUs this process may use, by default).
    sampler: Callable[[], CpuSample | None] = field(default_factory=_process_sampler)
    _last: CpuSample | None = None

    def __post_init__(self) -> None:
        self.threads = self.fewest = self.most
        self._last = self.sampler()

    def start_epoch(self) -> None:
        """Count `changes` and `fewest` afresh (they are reported per epoch)."""
        self.changes, self.fewest = 0, self.threads

    def poll(self) -> None:
        if self._last is None or time.perf_counter() - self._last.wall < self.interval:
            return
        now = self.sampler()
        if now is None or now.wall <= self._last.wall:
            return
        foreign = foreign_cores(self._last, now)
        self._last = now
        want = max(1, self.most - int(foreign + 0.5))
        if want != self.threads:
            import torch

            torch.set_num_threads(want)
            self.threads, self.changes = want, self.changes + 1
            self.fewest = min(self.fewest, want)
