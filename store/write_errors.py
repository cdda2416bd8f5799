"""Writes that fail say what failed: the store, the object, the bytes needed and the bytes free.

A full disk (ENOSPC, or a quota: EDQUOT) or any other `OSError` while a store is written
(`create_store`, `StoreWriter.write_encoded`, `store.derived`, `store.upgrade`; so `dalidr
reinforce`, `import-mldr`, `subset`, `upgrade` and `difficulty`) is raised again as
`StoreWriteError` naming the store, the object being written (array, block and object key, or the
metadata and manifest) and, for a full local disk, what the write needed against what is free
on that file system (`shutil.disk_usage`). The CLI turns it into one paragraph and exit code 2.

Nothing has to be cleaned up, which is why the error can say "rerun": zarr's local store writes
each object through a temporary `.partial` file that it removes when the write fails, a block
counts only once its commit entry is written (`store.writer`), and a creation cut short is
recognised and redone (`interrupted_creation`). So the same command, rerun after freeing
space, ends with a store byte-identical to one written without the failure.

Trade-off: "needed" is an upper bound, the uncompressed bytes of what was being written (the
compressed object is smaller, by how much depends on the data), not a promise that this many
bytes suffice for the rest of the store; the message says how many blocks are still to write.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from zarr.storage import LocalStore

from dalidr.errors import StoreWriteError
from store.location import StoreLocation

__all__ = ["writing", "write_error", "free_bytes", "human_bytes", "SPACE_ERRNOS"]

# errno values that mean "no room": the disk or the user's quota is full, or a file too big.
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def human_bytes(count: int) -> str:
    """`count` bytes as a short decimal figure (B, kB, MB, GB, TB)."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def free_bytes(location: StoreLocation) -> tuple[int, int, str] | None:
    """(free, total, mount path) of the file system a local store is on; None elsewhere."""
    if not isinstance(location.store, LocalStore):
        return None
    path = Path(location.root)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return None
    return usage.free, usage.total, str(path)


def write_error(location: StoreLocation, what: str, exc: OSError, needed: int | None = None,
                remaining: str = "") -> StoreWriteError:
    """The StoreWriteError for `exc`, raised while writing `what` to the store at `location`."""
    code = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
    reason = exc.strerror or str(exc) or type(exc).__name__
    text = f"store {location.url}: writing {what} failed: {reason}" + (
        f" ({code})" if code else "")
    if exc.errno in SPACE_ERRNOS:
        space = free_bytes(location)
        parts = []
        if needed is not None:
            parts.append(f"this write needs up to {human_bytes(needed)} (uncompressed)")
        if space is not None:
            free, total, path = space
            parts.append(f"{human_bytes(free)} of {human_bytes(total)} are free on the file "
                         f"system of {path}")
        if parts:
            text += "; " + ", ".join(parts)
        text += f"{remaining}. Free space (or choose another output) and rerun the same "
        text += "command: it resumes from the committed blocks, and the store ends "
        text += "byte-identical to one written without the failure"
    else:
        text += f"{remaining}. Fix the cause and rerun the same command: it resumes from the "
        text += "committed blocks"
    return StoreWriteError(text)


@contextmanager
def writing(location: StoreLocation, what: str, needed: int | None = None,
            remaining: str | Callable[[], str] = "") -> Iterator[None]:
    """Turn an OSError raised inside into a StoreWriteError naming the store and `what` (and,
    for a full disk, `needed` bytes against the free ones; `remaining` is added as it is,
    e.g. "; 3 blocks are still to write", or made by calling it only when a write fails,
    when saying it costs reads)."""
    try:
        yield
    except StoreWriteError:
        raise
    except OSError as exc:
        said = remaining() if callable(remaining) else remaining
        raise write_error(location, what, exc, needed, said) from exc
