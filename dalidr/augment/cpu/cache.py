"""Where numba keeps this package's compiled kernels, and when it must compile them again.

The kernels are compiled with `cache=True` so that a process loads machine code instead of
compiling for seconds. numba keys a cached function on the source of the one file that defines
it, but the fused kernel (`randaugment.replay_sample`) and the operator's entry points
(`operator`) contain the code of the op kernels they call from other files: after an edit to
`geometry.py` alone, numba would load a stale fused kernel and replay other pixels. So every
kernel of the package is keyed on the sources of all the files compiled into it
(`KERNEL_SOURCES`), through a cache locator registered before any of them is decorated.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

from numba.core import caching

__all__ = ["KERNEL_SOURCES", "kernel_sources_digest"]

_HERE = Path(__file__).resolve().parent
# Every file whose code or constants a cached kernel of this package contains.
KERNEL_SOURCES: tuple[Path, ...] = (
    *sorted(_HERE.glob("*.py")),
    _HERE.parent / "equalize.py",
    _HERE.parent / "records.py",
)


@functools.cache
def _digest(stamps: tuple[tuple[str, float, int], ...]) -> bytes:
    sha = hashlib.sha256()
    for path, _, _ in stamps:
        sha.update(Path(path).read_bytes())
    return sha.digest()


def kernel_sources_digest() -> bytes:
    """sha256 over the sources of `KERNEL_SOURCES` (re-read when one changes on disk)."""
    stamps = []
    for path in KERNEL_SOURCES:
        stat = path.stat()
        stamps.append((str(path), stat.st_mtime, stat.st_size))
    return _digest(tuple(stamps))


class _KernelSourcesStamp:
    """A numba cache locator's mixin: only this package's kernels, stamped with every source."""

    def get_source_stamp(self) -> Any:
        return kernel_sources_digest()

    @classmethod
    def from_function(cls, py_func: Any, py_file: str) -> Any:
        if Path(py_file).resolve() not in KERNEL_SOURCES:
            return None
        return super().from_function(py_func, py_file)  # type: ignore[misc]


# numba's three places, in numba's order: NUMBA_CACHE_DIR when set, `__pycache__` beside the
# file when writable, the user-wide cache directory otherwise.
_LOCATORS = tuple(
    type(f"KernelSources{base.__name__}", (_KernelSourcesStamp, base), {})
    for base in (caching.UserProvidedCacheLocator, caching.InTreeCacheLocator,
                 caching.UserWideCacheLocator)
)


def _register() -> None:
    locators = caching.CacheImpl._locator_classes
    if _LOCATORS[0] not in locators:
        locators[0:0] = list(_LOCATORS)  # type: ignore[arg-type]  # numba types it loosely


_register()
