"""Computed once per node, mapped by every process: the dataset listing that ranks share.

With `torchrun`, every rank of a node builds the same loader, and so would list the same
dataset tree: eight walks of 1.28M directory entries where one does. `shared_arrays` makes the
first process that asks compute the value (a few numpy arrays plus a small JSON header) and
write it to one file in a node-local directory; the other processes wait for that file and
map it (`np.memmap`, read-only), so the arrays' pages are shared by every rank of the node
instead of copied into each. Later starts reuse the file while it is still valid (the caller
says what valid means: for a listing, every listed directory's mtime unchanged).

Trade-off. A file rather than `torch.distributed` collectives: it needs no process group (a
loader is often built before `init_process_group`, and the teacher pass has none on one
node), it survives elastic restarts, and mapped pages are shared rather than copied per rank;
it needs a writable node-local directory and trusts directory mtimes for validity. Each node
lists once (the key holds the host name, so a cache directory on a shared file system does not
make nodes with their own copy of the data overwrite each other).

Safety. The lock (`<key>.lock`, created with O_EXCL) only saves work: the file is written to a
temporary name and renamed into place, so a reader sees a whole file or none, and two
processes that both compute (a stale lock broken twice, a wait that timed out) write the same
bytes. A lock whose process is gone (same host, pid not alive) or older than the wait is
broken. The file is a JSON header and raw little-endian arrays: nothing is unpickled, and a
file that does not parse is recomputed.

Where: `DALIDR_NODE_CACHE` names the directory (`off` disables sharing); otherwise, under a
launcher that starts several processes per node (`LOCAL_WORLD_SIZE` > 1, as `torchrun` sets),
`<tmp>/dalidr-<uid>/node-cache`; otherwise nothing is cached and each process computes alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ENV", "node_cache_dir", "shared_arrays", "write_arrays", "read_arrays"]

ENV = "DALIDR_NODE_CACHE"
_MAGIC = b"DALIDR-NODE-CACHE-1\n"
_ALIGN = 64
_POLL_S = 0.05

Header = dict[str, Any]
Arrays = dict[str, np.ndarray]


def node_cache_dir() -> Path | None:
    """The node-local cache directory in effect (see the module docstring), or None."""
    chosen = os.environ.get(ENV)
    if chosen is not None:
        return None if chosen.strip().lower() in ("", "off", "0", "none") else Path(chosen)
    try:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        local_world = 1
    if local_world <= 1:
        return None
    return Path(tempfile.gettempdir()) / f"dalidr-{os.getuid()}" / "node-cache"


def cache_key(*parts: str) -> str:
    """A file-name-safe key of `parts` and this host's name."""
    h = hashlib.sha256(socket.gethostname().encode())
    for part in parts:
        h.update(b"\0" + part.encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:32]


def shared_arrays(directory: Path, key: str, is_valid: Callable[[Header], bool],
                  produce: Callable[[], tuple[Header, Arrays]],
                  wait_s: float = 900.0) -> tuple[Header, Arrays]:
    """The (header, arrays) stored under `key`, computed by `produce` in only one process.

    A stored value is used when `is_valid(header)`; otherwise the process that takes the lock
    recomputes and stores it, and the others wait (up to `wait_s`, then compute alone)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{key}.bin"
    lock = directory / f"{key}.lock"
    deadline = time.monotonic() + wait_s
    while True:
        found = read_arrays(path)
        if found is not None and is_valid(found[0]):
            return found
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _stale(lock, wait_s):
                _remove(lock)
                continue
            if time.monotonic() > deadline:
                warnings.warn(f"waited {wait_s:.0f} s for {lock} to go; computing alone",
                              stacklevel=2)
                return produce()
            time.sleep(_POLL_S)
            continue
        try:
            os.write(fd, f"{socket.gethostname()} {os.getpid()}".encode())
            found = read_arrays(path)  # another process may have finished meanwhile
            if found is not None and is_valid(found[0]):
                return found
            header, arrays = produce()
            write_arrays(path, header, arrays)
        finally:
            os.close(fd)
            _remove(lock)
        mapped = read_arrays(path)
        return mapped if mapped is not None else (header, arrays)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _stale(lock: Path, wait_s: float) -> bool:
    """Whether the process holding `lock` is gone (same host) or has held it past `wait_s`."""
    try:
        holder = lock.read_text().split()
        age = time.time() - lock.stat().st_mtime
    except (OSError, UnicodeDecodeError):
        return False  # just released, or being written: look again
    if age > wait_s:
        return True
    if len(holder) == 2 and holder[0] == socket.gethostname() and holder[1].isdigit():
        try:
            os.kill(int(holder[1]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


def write_arrays(path: Path, header: Header, arrays: Arrays) -> None:
    """`header` (JSON) and `arrays` (raw, little-endian, aligned) as one file at `path`,
    written to a temporary name and renamed into place."""
    table: dict[str, Any] = {}
    offset = 0
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        table[name] = {"dtype": dtype.str, "shape": list(array.shape), "offset": offset}
        offset += -(-array.nbytes // _ALIGN) * _ALIGN
    text = json.dumps({"header": header, "arrays": table}).encode()
    start = -(-(len(_MAGIC) + 8 + len(text)) // _ALIGN) * _ALIGN
    tmp = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(_MAGIC + np.uint64(len(text)).astype("<u8").tobytes() + text)
            out.write(b"\0" * (start - out.tell()))
            for name, array in arrays.items():
                out.seek(start + table[name]["offset"])
                out.write(np.ascontiguousarray(array, dtype=table[name]["dtype"]).tobytes())
            out.truncate(start + offset)
        os.replace(tmp, path)
    except OSError:
        _remove(tmp)  # a full disk leaves no temporary file behind; the caller warns
        raise


def read_arrays(path: Path) -> tuple[Header, Arrays] | None:
    """The stored (header, arrays), mapped read-only; None if missing or malformed."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_MAGIC) + 8)
            if len(head) != len(_MAGIC) + 8 or not head.startswith(_MAGIC):
                return None
            length = int(np.frombuffer(head[len(_MAGIC):], "<u8")[0])
            size = os.fstat(f.fileno()).st_size
            if length > size:
                return None
            meta = json.loads(f.read(length))
        start = -(-(len(_MAGIC) + 8 + length) // _ALIGN) * _ALIGN
        arrays: Arrays = {}
        for name, spec in meta["arrays"].items():
            dtype, shape = np.dtype(spec["dtype"]), tuple(int(d) for d in spec["shape"])
            if dtype.hasobject:
                return None
            count = int(np.prod(shape, dtype=np.int64))
            begin = start + int(spec["offset"])
            if begin + count * dtype.itemsize > size:
                return None
            arrays[name] = (np.zeros(shape, dtype) if count == 0 else
                            np.memmap(path, dtype=dtype, mode="r", offset=begin, shape=shape))
        return meta["header"], arrays
    except (OSError, ValueError, KeyError, TypeError, OverflowError, UnicodeDecodeError):
        return None
