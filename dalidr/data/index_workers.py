"""Indexing many local shards at once, in worker processes.

Reading a shard's tar headers is Python work that holds the GIL (`tarfile` parses each
512-byte header in Python, ~20 us a member), so threads do not speed it up: ImageNet-1k's
1,024 shards of 2,502 members take ~50 s on one core. `index_in_processes` splits the shards
among worker processes (round robin, so that a run of large shards is shared) and gathers
their indexes in shard order.

Workers are fresh interpreters (`python -P -m dalidr.data.index_workers JOB`), not
`multiprocessing`: no fork of a process that may already run DALI or reader threads, and no
re-import of the caller's `__main__` (a training script without an `if __name__ == "__main__"`
guard would run again in every spawned worker). `-P` keeps the working directory off the
worker's `sys.path` (a `dalidr/` or `numpy.py` there must not shadow the caller's code); the
tree holding this package goes first on PYTHONPATH. A worker reads its job (shard URLs, label
key, output file) from a JSON file in a temporary directory (not a pipe: a large job would make
each start wait for the worker to read it), indexes each shard with
`dalidr.data.shards.index_shard`, and writes the arrays in the node cache's file format (a JSON
header and raw arrays, `node_cache.write_arrays`): nothing passes through pickle. The first
shard a worker fails on comes back as an error message naming the shard (a DatasetError's own
message, else `shard URL: TypeName: message`), raised here as a DatasetError; warnings are
passed on. A worker that cannot start, or dies (killed, out of memory), is named with its
shards and the end of its stderr, and the workers already started are killed.

Trade-off: each worker costs an interpreter start and the imports of numpy and this package
(~0.3 s), so `dalidr.data.shards` uses workers only for many local shards; a few shards, and
remote ones (waiting on the network, not the CPU), are indexed in threads. Ranks of one node
that index at once (no node cache) share its cores: `default_workers` divides them by
LOCAL_WORLD_SIZE (`ranks_on_node`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dalidr.data.node_cache import read_arrays, write_arrays
from dalidr.data.path_list import PathList
from dalidr.errors import DatasetError

if TYPE_CHECKING:
    from dalidr.data.shards import _Indexed

__all__ = ["index_in_processes", "default_workers", "ranks_on_node"]

# Most worker processes started for one listing.
MAX_WORKERS = 32
_ARRAYS = ("labels", "offsets", "sizes", "keys")
_STDERR_TAIL = 2000


def default_workers(shards: int, per_worker: int = 16, ranks: int = 1) -> int:
    """Workers for `shards` local shards: the cores this process may use shared among `ranks`
    processes of the node that index at the same time, at most one per `per_worker` shards and
    at most MAX_WORKERS; 1 means: index in this process."""
    from dalidr.training.cpu_threads import available_cores

    return max(1, min(available_cores() // max(1, ranks), shards // per_worker, MAX_WORKERS))


def ranks_on_node() -> int:
    """Processes on this node: LOCAL_WORLD_SIZE (as torchrun sets it), 1 when unset or not a
    positive integer (as `node_cache.node_cache_dir` reads it; not `dalidr.ranks`, which
    imports torch into every worker)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def index_in_processes(urls: Sequence[str], label_key: str | None, workers: int
                       ) -> list[tuple[_Indexed, list[int | str]]]:
    """(index, stamp) of each local shard of `urls`, in order, made by `workers` processes."""
    workers = max(1, min(workers, len(urls)))
    shares = [list(range(w, len(urls), workers)) for w in range(workers)]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the tree holding dalidr, made importable
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    out: list[tuple[_Indexed, list[int | str]] | None] = [None] * len(urls)
    with tempfile.TemporaryDirectory(prefix="dalidr-index-") as tmp:
        started: list[tuple[subprocess.Popen[bytes], Any, dict[str, Any], list[int]]] = []
        try:
            for w, share in enumerate(shares):
                job = {"urls": [urls[i] for i in share], "label_key": label_key,
                       "out": os.path.join(tmp, f"worker-{w}.bin")}
                process, stderr = _start(job, os.path.join(tmp, f"worker-{w}"), env)
                started.append((process, stderr, job, share))
            _gather(started, out)
        finally:
            for process, stderr, _, _ in started:
                if process.poll() is None:  # a refusal, a failed start or an interrupt
                    process.kill()
                    process.wait()
                stderr.close()
    return out  # type: ignore[return-value]


def _start(job: dict[str, Any], base: str, env: dict[str, str]
           ) -> tuple[subprocess.Popen[bytes], Any]:
    """A worker started on `job` (written to `base`.json; its stderr goes to `base`.err)."""
    stderr = None
    try:
        Path(base + ".json").write_text(json.dumps(job), encoding="utf-8")
        stderr = open(base + ".err", "w+b")  # noqa: SIM115 (closed by the caller)
        process = subprocess.Popen(
            [sys.executable, "-P", "-m", "dalidr.data.index_workers", base + ".json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    except (OSError, ValueError) as exc:
        if stderr is not None:
            stderr.close()
        raise DatasetError(
            f"indexing shards {job['urls'][0]} and {len(job['urls']) - 1} more: could not start "
            f"a worker process ({sys.executable} -P -m dalidr.data.index_workers): "
            f"{type(exc).__name__}: {exc}") from exc
    return process, stderr


def _gather(started: list[tuple[subprocess.Popen[bytes], Any, dict[str, Any], list[int]]],
            out: list[tuple[_Indexed, list[int | str]] | None]) -> None:
    for process, stderr, job, share in started:
        code = process.wait()
        stderr.seek(max(0, os.fstat(stderr.fileno()).st_size - _STDERR_TAIL))
        text = stderr.read().decode("utf-8", "replace")
        found = read_arrays(Path(job["out"])) if code == 0 else None
        if found is None:
            raise DatasetError(
                f"indexing shards {job['urls'][0]} and {len(share) - 1} more: the worker "
                f"process ended with status {code} and no index: {text.strip()}")
        for index, item in zip(share, _unpack(*found), strict=True):
            out[index] = item


def _unpack(header: dict[str, Any], arrays: dict[str, np.ndarray]
            ) -> list[tuple[_Indexed, list[int | str]]]:
    from dalidr.data.shards import _Indexed

    for message in header.get("warnings", []):
        warnings.warn(str(message), stacklevel=4)
    if header.get("error") is not None:
        raise DatasetError(str(header["error"]))
    names = PathList(np.array(arrays["path_bytes"]), np.array(arrays["path_offsets"]))
    columns = {name: np.array(arrays[name]) for name in _ARRAYS}
    counts = [int(c) for c in header["counts"]]
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64).tolist()
    if len(names) != starts[-1] or any(len(v) != starts[-1] for v in columns.values()):
        raise DatasetError("a shard index worker wrote arrays of mismatched lengths")
    return [(_Indexed(names[a:b], **{name: columns[name][a:b] for name in _ARRAYS}), stamp)
            for a, b, stamp in zip(starts[:-1], starts[1:], header["stamps"], strict=True)]


def _work(job: dict[str, Any]) -> None:
    """Index the job's shards; write their arrays, or the first failure (naming its shard),
    to `job['out']`."""
    from dalidr.data.shards import _index_one

    header: dict[str, Any] = {"counts": [], "stamps": [], "warnings": [], "error": None}
    parts: list[_Indexed] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for url in job["urls"]:
            try:
                indexed, stamp = _index_one(str(url), job["label_key"])
            except DatasetError as exc:  # its message names the shard
                header["error"], parts = str(exc), []
                break
            except Exception as exc:  # noqa: BLE001 (passed on to the caller, naming the shard)
                header["error"], parts = f"shard {url}: {type(exc).__name__}: {exc}", []
                break
            parts.append(indexed)
            header["counts"].append(len(indexed.names))
            header["stamps"].append(stamp)
    header["warnings"] = [str(w.message) for w in caught]
    names = PathList.concatenate([p.names for p in parts])
    arrays: dict[str, np.ndarray] = {"path_bytes": names.data, "path_offsets": names.offsets}
    for name in _ARRAYS:
        dtype = np.uint64 if name == "keys" else np.int64
        arrays[name] = (np.concatenate([getattr(p, name) for p in parts]) if parts
                        else np.zeros(0, dtype))
    write_arrays(Path(job["out"]), header, arrays)


if __name__ == "__main__":
    _work(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))
