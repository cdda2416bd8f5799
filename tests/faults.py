"""Write failures for tests: a real full disk (a small tmpfs) or an injected ENOSPC.

`full_disk` mounts a tmpfs of a given size where the test may (root with CAP_SYS_ADMIN), and
skips the test cleanly where it may not; `grow` then remounts it larger ("free space") and the
fixture unmounts it at teardown. `enospc_on` makes zarr's local store fail with
`OSError(ENOSPC)` at the lowest call it writes through (`zarr.storage._local._put`, which writes
an object to a temporary file and renames it), for the keys a predicate picks, so every layer
above it runs as it does on a full disk.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import zarr.storage._local as zarr_local

__all__ = ["FAULTS", "full_disk", "enospc_on", "pages", "FullDisk"]

# The two ways a test fails a write: a real full file system, or an injected ENOSPC.
FAULTS = ("tmpfs", "inject")
PAGE = 4096


def pages(root: Path) -> int:
    """Pages (4 KiB) a tmpfs needs for the files under `root` (each file at least one)."""
    return sum(-(-max(p.stat().st_size, 1) // PAGE) for p in root.rglob("*") if p.is_file())


class FullDisk:
    """A mounted tmpfs of `size` bytes at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def grow(self, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True,
                       capture_output=True)


@contextmanager
def full_disk(path: Path, size: int) -> Iterator[FullDisk]:
    """A tmpfs of `size` bytes mounted at `path` (skips the test where mounting is refused)."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                 str(path)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    try:
        yield FullDisk(path)
    finally:
        subprocess.run(["umount", str(path)], capture_output=True, timeout=30)


def enospc_on(monkeypatch: pytest.MonkeyPatch, fails: Callable[[str], bool]) -> list[str]:
    """Make every local-store write of an object whose path `fails(path)` raise ENOSPC;
    returns the list of paths that failed (filled as they do)."""
    real = zarr_local._put
    failed: list[str] = []

    def put(path: Path, value, exclusive: bool = False):  # type: ignore[no-untyped-def]
        if fails(Path(path).as_posix()):
            failed.append(Path(path).as_posix())
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, value, exclusive=exclusive)

    monkeypatch.setattr(zarr_local, "_put", put)
    return failed
