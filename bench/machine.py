"""The machine a benchmark ran on, as a JSON-ready dict stored beside every result.

A throughput without its machine cannot be compared with anything, so every `bench/<topic>.py`
writes `describe_machine()` into its JSON. Everything here is read without side effects: the
GPU is queried through `torch.cuda` only if torch is installed, and `nvidia-smi` only if it is
on the PATH; what cannot be read is recorded as None rather than guessed.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dalidr.training.cpu_threads import available_cores

__all__ = [
    "LIBRARIES",
    "LoadSnapshot",
    "describe_machine",
    "foreign_cpu_share",
    "library_versions",
    "load_snapshot",
    "summary",
]

# Distributions whose versions are recorded: display name -> candidate distribution names.
LIBRARIES: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "nvidia-dali": ("nvidia-dali-cuda120", "nvidia-dali-cuda130", "nvidia-dali-cuda110",
                    "nvidia-dali"),
    "zarr": ("zarr",),
    "numcodecs": ("numcodecs",),
    "timm": ("timm",),
    "pillow": ("pillow",),
}

_REPO = Path(__file__).resolve().parents[1]


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def library_versions() -> dict[str, str | None]:
    """Installed version of each of `LIBRARIES` (None: not installed)."""
    versions: dict[str, str | None] = {}
    for name, distributions in LIBRARIES.items():
        versions[name] = None
        for dist in distributions:
            try:
                versions[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions


def _nvidia_smi(field: str) -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        result = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = result.stdout.strip().splitlines()
    return lines[0].strip() if lines else None


def _gpus() -> dict[str, Any]:
    info: dict[str, Any] = {"count": 0, "names": [], "memory_bytes": [], "driver": None,
                            "cuda_runtime": None}
    try:
        import torch
    except ImportError:
        return info
    info["cuda_runtime"] = torch.version.cuda
    if not torch.cuda.is_available():
        return info
    count = torch.cuda.device_count()
    info["count"] = count
    for index in range(count):
        props = torch.cuda.get_device_properties(index)
        info["names"].append(props.name)
        info["memory_bytes"].append(int(props.total_memory))
    info["driver"] = _nvidia_smi("driver_version")
    return info


def git_state() -> dict[str, Any]:
    """The repository's commit and whether tracked files differ from it (None: no git)."""
    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True,
                                    timeout=20, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return result.stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None
            else None}


@dataclass(frozen=True)
class LoadSnapshot:
    """Clock ticks of CPU time spent by the whole machine and by this process tree."""

    wall: float
    machine_busy: int
    own: int


def _ticks(stat: str, reaped: bool = False) -> tuple[int, int]:
    """(parent pid, utime + stime) from the text of /proc/<pid>/stat; with `reaped`, plus the
    time of its children that have exited and been waited for (cutime + cstime)."""
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[1]), sum(int(v) for v in fields[11:15 if reaped else 13])


def load_snapshot() -> LoadSnapshot | None:
    """Machine-wide busy ticks and this process tree's ticks (this process, all its threads, its
    direct children, e.g. DataLoader workers, and those that have exited, e.g. index workers);
    None where /proc cannot be read."""
    wall = time.perf_counter()
    try:
        cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in cpu[:7])
        pid = os.getpid()
        own = _ticks(Path(f"/proc/{pid}/stat").read_text(), reaped=True)[1]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or entry.name == str(pid):
                continue
            try:
                parent, ticks = _ticks((entry / "stat").read_text())
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile
            if parent == pid:
                own += ticks
    except (OSError, ValueError, IndexError):
        return None
    return LoadSnapshot(wall, user + nice + system + irq + softirq, own)


def foreign_cpu_share(start: LoadSnapshot | None, end: LoadSnapshot | None) -> float | None:
    """Share of all CPUs that other processes used between two snapshots (0: none, 1: all).

    A benchmark records it per timed run: a high share means its numbers are contended."""
    if start is None or end is None or end.wall <= start.wall:
        return None
    capacity = (end.wall - start.wall) * os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1)
    foreign = (end.machine_busy - start.machine_busy) - (end.own - start.own)
    return min(max(foreign / capacity, 0.0), 1.0)


def describe_machine() -> dict[str, Any]:
    """CPU model and cores, memory, GPUs and driver, Python, library versions and git commit."""
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": available_cores(),
        "memory_bytes": _memory_bytes(),
        "gpu": _gpus(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "libraries": library_versions(),
        "git": git_state(),
    }


def summary(machine: dict[str, Any]) -> str:
    """One line for a benchmark's printed header."""
    gpu = machine["gpu"]
    gpus = ", ".join(gpu["names"]) if gpu["count"] else "no GPU"
    memory = machine["memory_bytes"]
    ram = f"{memory / 2**30:.0f} GiB" if memory else "? GiB"
    libs = " ".join(f"{k}={v}" for k, v in machine["libraries"].items() if v)
    return (f"{machine['cpu_model']} x{machine['cpu_usable']} cores, {ram} RAM, {gpus}; "
            f"python {machine['python']}; {libs}")
