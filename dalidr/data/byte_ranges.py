"""Byte ranges of remote shards, read through fsspec: latency hidden, failures named.

`ByteRangeReader.read` takes many `(url, offset, size, member)` requests for objects named by
any fsspec URL (`http(s)://`, `s3://`, `gs://`, `memory://`, local paths) and returns exactly
the bytes asked for, in order. What it does on the way:

- **Coalescing.** Ranges of one object that lie within `max_gap` bytes of each other are read
  by one request (up to `max_request` bytes); overlapping and repeated ranges share it too.
  Neighbouring webdataset samples are ~1.5 KB apart (the label member and two headers), so a
  sequential pass (the teacher's) reads a shard in a few large requests; a random epoch order
  reads one request per sample.
- **Requests in flight.** Every request of a `read` call, across objects and across the
  threads calling it, runs on fsspec's event loop under one semaphore of `max_in_flight`
  slots: 64 by default, enough for ~3,000 requests/s at 20 ms each (the S3 connection pool
  is sized to match; aiobotocore's default of 10 would cap it). File systems without an async
  API (`memory://`, local) run the same requests on a thread pool of that size.
- **Retries.** A transient failure (a timeout, a refused or reset connection, HTTP 408, 429,
  5xx) is retried up to `attempts` times in all, waiting `backoff_s`, then twice as long, ...;
  then `RemoteReadError` (or `UnreachableError` when no attempt got an answer) names the URL,
  the member and the offset. Every attempt has a deadline (`timeout_s`): nothing hangs.
  fsspec's and botocore's own retries are turned off so the bound is this one.
- **What a server answered.** More bytes than asked means the server ignored the Range header
  and sent the object whole: `RangeIgnoredError`, whatever the file system. Over HTTP the
  answer is read through fsspec's `HTTPFile.async_fetch_range`, which refuses a whole-object
  answer (200) before reading its body, so such a server never makes dalidr allocate the
  object. Fewer bytes than asked means the object ended early: it shrank or was replaced since
  it was indexed (`ShardChangedError`, with its size now).
- **Bounded allocations.** A request is never larger than the ranges it serves (plus gaps of
  at most `max_gap`), and those come from a shard's index, whose ranges were checked against
  the shard's size; `read` refuses a range past an object size it is given before asking.

`stats` counts requests issued, bytes received, retries and the most requests ever in flight,
for the benchmark. Trade-off: coalescing reads the gaps between ranges (at most `max_gap` per
pair, ~1 ms at 64 KiB against a 20 ms request) to save a round trip each.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec
import fsspec.asyn
import numpy as np

from dalidr.data.range_requests import (
    ByteRange,
    RangeReaderConfig,
    RangeRequest,
    RangeStats,
    RemoteObject,
    coalesce,
)
from dalidr.errors import (
    DatasetError,
    RangeIgnoredError,
    RemoteReadError,
    ShardChangedError,
    UnreachableError,
)

__all__ = ["ByteRange", "RemoteObject", "RangeReaderConfig", "RangeStats", "ByteRangeReader",
           "coalesce", "default_reader", "set_default_reader"]

# HTTP statuses worth a retry: timeout, too early, too many requests, server errors.
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class _Failure(Exception):
    """One request's last error and how many attempts it took (internal)."""

    def __init__(self, cause: BaseException, attempts: int, answered: bool) -> None:
        super().__init__(str(cause))
        self.cause, self.attempts, self.answered = cause, attempts, answered


def _status(exc: BaseException) -> int | None:
    """The HTTP status an error carries (aiohttp, botocore), None if none."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(code, int):
            return code
    cause = exc.__cause__ or exc.__context__
    return _status(cause) if cause is not None and cause is not exc else None


def _ignores_range(exc: BaseException) -> bool:
    # fsspec's HTTPFile refuses a whole-object answer to a range request with this message.
    return isinstance(exc, ValueError) and "support range requests" in str(exc)


def _classify(exc: BaseException) -> tuple[bool, bool]:
    """(transient, answered): whether a retry may help, and whether a server answered."""
    if isinstance(exc, FileNotFoundError) and exc.__cause__ is not None:
        # fsspec's HTTP size lookup says "not found" for any failure, the real one its cause
        cause = _classify(exc.__cause__)
        if cause[0] or not cause[1]:
            return cause
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return False, True
    if _ignores_range(exc):
        return False, True
    status = _status(exc)
    if status is not None:
        return status in _TRANSIENT_STATUS, True
    if isinstance(exc, asyncio.TimeoutError | TimeoutError | ConnectionError):
        return True, False
    name = type(exc).__name__
    if "Timeout" in name or "Connect" in name or "Disconnect" in name:
        return True, False  # aiohttp's and botocore's connection errors
    if isinstance(exc, OSError):
        return True, True  # I/O error, or an S3 error s3fs turned into OSError
    return False, True


def _version(info: Mapping[str, Any]) -> tuple[str, float | None]:
    mtime: float | None = None
    for key in ("LastModified", "Last-Modified", "last_modified", "mtime", "updated",
                "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, int | float):
            mtime = float(value)
        elif hasattr(value, "timestamp"):
            mtime = float(value.timestamp())
        else:
            from email.utils import parsedate_to_datetime
            try:
                mtime = parsedate_to_datetime(str(value)).timestamp()
            except (TypeError, ValueError):
                try:
                    from datetime import datetime
                    mtime = datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
                except ValueError:
                    mtime = None
        if mtime is not None:
            break
    for key in ("ETag", "etag", "md5Hash", "generation"):
        if info.get(key):
            return str(info[key]).strip('"'), mtime
    return ("" if mtime is None else repr(mtime)), mtime


def _storage_defaults(protocol: str, config: RangeReaderConfig) -> dict[str, Any]:
    """Options that make a file system fail fast and leave retries to the reader."""
    if protocol in ("http", "https"):
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout_s,
                                        sock_read=config.timeout_s)
        return {"client_kwargs": {"timeout": timeout}}
    if protocol in ("s3", "s3a"):
        return {"config_kwargs": {
            "connect_timeout": config.connect_timeout_s, "read_timeout": config.timeout_s,
            "retries": {"mode": "standard", "total_max_attempts": 1},
            "max_pool_connections": config.max_in_flight}}
    return {}


def _merged(defaults: Mapping[str, Any], *overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`defaults` updated by each of `overrides`, dictionaries merged one level deep."""
    out = dict(defaults)
    for override in overrides:
        for key, value in override.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = {**out[key], **value}
            else:
                out[key] = value
    return out


class ByteRangeReader:
    """Reads byte ranges of objects named by fsspec URLs (see the module docstring).

    `storage_options` maps a protocol ('s3', 'http', ...) to options for its file system
    (`endpoint_url`, credentials, ...); fsspec's own configuration (`FSSPEC_S3_*` variables,
    `~/.config/fsspec/`) and the backends' (`AWS_*` variables) apply as usual."""

    def __init__(self, config: RangeReaderConfig | None = None,
                 storage_options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.config = RangeReaderConfig.from_env() if config is None else config
        self.storage_options = {k: dict(v) for k, v in (storage_options or {}).items()}
        self.stats = RangeStats()
        self._lock = threading.Lock()
        self._fs: dict[str, tuple[Any, str]] = {}
        self._http_files: dict[str, Any] = {}
        self._semaphores: dict[int, asyncio.Semaphore] = {}
        self._threads: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ file systems

    def _locate(self, url: str) -> tuple[Any, str]:
        """(file system, path) of `url`, the file system made once per protocol."""
        with self._lock:
            found = self._fs.get(url)
        if found is not None:
            return found
        protocol = fsspec.core.split_protocol(url)[0] or "file"
        cls_options: dict[str, Any] = {}
        try:
            cls = fsspec.get_filesystem_class(protocol)
            protos = cls.protocol if isinstance(cls.protocol, tuple | list) else (cls.protocol,)
            for proto in protos:
                cls_options = _merged(cls_options, fsspec.config.conf.get(proto, {}))
            options = _merged(_storage_defaults(protocol, self.config), cls_options,
                              self.storage_options.get(protocol, {}))
            fs, path = fsspec.core.url_to_fs(url, **options)
            if protocol in ("s3", "s3a"):
                # s3fs retries 5 times by default (a class attribute, not an option); this
                # instance is the reader's own (its options differ from the default ones).
                fs.retries = 1
        except ImportError as exc:
            raise DatasetError(f"shard {url}: reading {protocol}:// URLs needs a package that "
                               f"is not installed ({exc}); install dalidr[remote]") from exc
        except ValueError as exc:
            raise DatasetError(f"shard {url}: {protocol}:// is not a readable URL scheme "
                               f"({exc})") from exc
        with self._lock:
            self._fs[url] = (fs, path)
        return fs, path

    def _semaphore(self, loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
        # Made on the loop's own thread (only the loop touches it); one per loop.
        sem = self._semaphores.get(id(loop))
        if sem is None:
            sem = self._semaphores[id(loop)] = asyncio.Semaphore(self.config.max_in_flight)
        return sem

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(self.config.max_in_flight,
                                                   thread_name_prefix="dalidr-ranges")
            return self._threads

    async def _http_fetch(self, fs: Any, path: str, start: int, stop: int) -> bytes:
        from fsspec.implementations.http import HTTPFile

        file = self._http_files.get(path)
        if file is None:
            session = await fs.set_session()
            file = HTTPFile(fs, path, session=session, size=None, loop=fs.loop,
                            block_size=1 << 20, cache_type="none", **fs.kwargs)
            self._http_files[path] = file
        data: bytes = await file.async_fetch_range(start, stop)
        return data

    # ------------------------------------------------------------------ one request, retried

    def _after_failure(self, exc: Exception, attempt: int, answered: bool, sized: bool
                       ) -> tuple[bytes | None, bool, float]:
        """What follows attempt `attempt` failing with `exc`, for both the async and the
        threaded attempts: (b"" when a sized read asked past the object's end (416: it
        shrank) else None, whether any attempt got an answer, seconds to wait before the
        next); `_Failure` when `exc` is not transient or no attempt is left."""
        if sized and _status(exc) == 416:
            return b"", answered, 0.0
        transient, got_answer = _classify(exc)
        answered = answered or got_answer
        if not transient or attempt == self.config.attempts:
            raise _Failure(exc, attempt, answered) from exc
        self.stats._retry()
        return None, answered, self.config.backoff_s * 2 ** (attempt - 1)

    async def _attempts_async(self, call: Callable[[], Awaitable[Any]],
                              sized: bool) -> Any:
        loop = asyncio.get_running_loop()
        sem = self._semaphore(loop)
        answered = False
        for attempt in range(1, self.config.attempts + 1):
            nbytes = 0
            try:
                async with sem:
                    self.stats._begin(sized)
                    try:
                        result = await asyncio.wait_for(call(), self.config.timeout_s)
                        nbytes = len(result) if sized else 0
                    finally:
                        self.stats._end(nbytes)
                return result
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 (classified; unknown kinds are not retried)
                empty, answered, delay = self._after_failure(exc, attempt, answered, sized)
                if empty is not None:
                    return empty
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _attempts_sync(self, call: Callable[[], Any], sized: bool) -> Any:
        answered = False
        for attempt in range(1, self.config.attempts + 1):
            nbytes = 0
            try:
                self.stats._begin(sized)
                try:
                    result = call()
                    nbytes = len(result) if sized else 0
                finally:
                    self.stats._end(nbytes)
                return result
            except Exception as exc:  # noqa: BLE001 (classified; unknown kinds are not retried)
                empty, answered, delay = self._after_failure(exc, attempt, answered, sized)
                if empty is not None:
                    return empty
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _run_all(self, fs: Any, make_async: Callable[[Any], Callable[[], Awaitable[Any]]],
                 make_sync: Callable[[Any], Callable[[], Any]], items: Sequence[Any],
                 sized: bool) -> list[Any]:
        """Each item's result, or its `_Failure`, all in flight together."""
        if getattr(fs, "async_impl", False):
            async def gather() -> list[Any]:
                return await asyncio.gather(
                    *(self._attempts_async(make_async(item), sized) for item in items),
                    return_exceptions=True)

            # No overall deadline: every attempt has one, so the gather ends.
            results: list[Any] = fsspec.asyn.sync(fs.loop, gather)
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, _Failure):
                    raise r
            return results
        futures = [self._pool().submit(self._attempts_sync, make_sync(item), sized)
                   for item in items]
        out: list[Any] = []
        for future in futures:
            try:
                out.append(future.result())
            except _Failure as failure:
                out.append(failure)
        return out

    # ------------------------------------------------------------------ public

    def stat(self, url: str) -> RemoteObject:
        """The object at `url` (size, version); named errors if it is missing, cannot be
        reached or has no known size."""
        found = self.stat_many([url])[0]
        if found is None:
            raise DatasetError(f"shard {url}: not found")
        return found

    def stat_many(self, urls: Sequence[str], missing_ok: bool = False
                  ) -> list[RemoteObject | None]:
        """`stat` of every URL, the requests in flight together (None for one that does not
        exist, if `missing_ok`)."""
        groups: dict[int, tuple[Any, list[tuple[int, str]]]] = {}
        for j, url in enumerate(urls):
            fs, path = self._locate(url)
            groups.setdefault(id(fs), (fs, []))[1].append((j, path))
        out: list[RemoteObject | None] = [None] * len(urls)
        for fs, items in groups.values():
            def make_async(item: tuple[int, str], fs: Any = fs) -> Callable[[], Awaitable[Any]]:
                return lambda: fs._info(item[1])

            def make_sync(item: tuple[int, str], fs: Any = fs) -> Callable[[], Any]:
                return lambda: fs.info(item[1])

            results = self._run_all(fs, make_async, make_sync, items, sized=False)
            for (j, _), result in zip(items, results, strict=True):
                url = urls[j]
                if isinstance(result, _Failure):
                    if isinstance(result.cause, FileNotFoundError) and missing_ok:
                        continue
                    raise self._error(result, url, "", 0, 0, "looking up its size")
                size = result.get("size")
                if not isinstance(size, int) or size < 0:
                    raise DatasetError(f"shard {url}: the server does not say its size "
                                       f"(got {size!r}); shards must have a known size")
                version, mtime = _version(result)
                out[j] = RemoteObject(url, size, version, mtime)
        return out

    def read(self, ranges: Sequence[ByteRange],
             object_sizes: Mapping[str, int] | None = None) -> list[np.ndarray]:
        """Exactly `r.size` bytes at `r.offset` of `r.url` for each r, as uint8 arrays in the
        order asked. `object_sizes` (the sizes the ranges were indexed against) lets a range
        past its object's end be refused before any request."""
        object_sizes = object_sizes or {}
        for r in ranges:
            known = object_sizes.get(r.url)
            if r.offset < 0 or r.size < 0 or (known is not None and r.offset + r.size > known):
                raise DatasetError(f"shard {r.url} member {r.member!r}: bytes {r.offset}.."
                                   f"{r.offset + r.size - 1} lie outside the {known}-byte shard"
                                   if known is not None else
                                   f"shard {r.url} member {r.member!r}: offset {r.offset}, "
                                   f"size {r.size} is not a byte range")
        self.stats._asked(len(ranges))
        out: list[np.ndarray | None] = [None] * len(ranges)
        for j, r in enumerate(ranges):
            if r.size == 0:
                out[j] = np.zeros(0, np.uint8)
        wanted = [r for r in ranges if r.size > 0]
        index = [j for j, r in enumerate(ranges) if r.size > 0]
        requests = coalesce(wanted, self.config.max_gap, self.config.max_request)
        groups: dict[int, tuple[Any, str, list[RangeRequest]]] = {}
        for req in requests:
            fs, _ = self._locate(req.url)
            groups.setdefault(id(fs), (fs, fs.protocol, []))[2].append(req)
        for fs, protocol, reqs in groups.values():
            http = "http" in (protocol if isinstance(protocol, tuple | list) else (protocol,))

            def make_async(req: RangeRequest, fs: Any = fs, http: bool = http
                           ) -> Callable[[], Awaitable[Any]]:
                path = self._locate(req.url)[1]
                if http:
                    return lambda: self._http_fetch(fs, path, req.start, req.stop)
                return lambda: fs._cat_file(path, start=req.start, end=req.stop)

            def make_sync(req: RangeRequest, fs: Any = fs) -> Callable[[], Any]:
                path = self._locate(req.url)[1]
                return lambda: fs.cat_file(path, start=req.start, end=req.stop)

            results = self._run_all(fs, make_async, make_sync, reqs, sized=True)
            for req, result in zip(reqs, results, strict=True):
                first = wanted[req.parts[0]]
                if isinstance(result, _Failure):
                    raise self._error(result, req.url, first.member, first.offset,
                                      req.stop - req.start, "reading")
                data = np.frombuffer(bytes(result) if not isinstance(result, bytes) else result,
                                     dtype=np.uint8)
                self._check_length(req, data, wanted, object_sizes.get(req.url))
                for part in req.parts:
                    r = wanted[part]
                    out[index[part]] = data[r.offset - req.start:r.offset - req.start + r.size]
        return out  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the reader's threads (its file systems stay in fsspec's cache)."""
        with self._lock:
            threads, self._threads = self._threads, None
            self._http_files.clear()
        if threads is not None:
            threads.shutdown(wait=False)

    # ------------------------------------------------------------------ errors

    def _check_length(self, req: RangeRequest, data: np.ndarray, ranges: Sequence[ByteRange],
                      indexed_size: int | None) -> None:
        asked, got = req.stop - req.start, len(data)
        if got == asked:
            return
        first = ranges[req.parts[0]]
        where = f"shard {req.url} member {first.member!r} at offset {first.offset}"
        if got > asked:
            raise RangeIgnoredError(
                f"{where}: asked for bytes {req.start}..{req.stop - 1} ({asked} bytes) and got "
                f"{got}: the server ignores byte-range requests (Range) and sends whole "
                "objects; dalidr reads shard members by range, so serve the shards from a "
                "server that honours Range (S3, GCS, nginx, ...) or copy them to a local disk")
        short = next((ranges[p] for p in req.parts
                      if ranges[p].offset + ranges[p].size > req.start + got), first)
        now = self.stat_many([req.url], missing_ok=True)[0]
        size_now = "gone" if now is None else f"{now.size} bytes now"
        indexed = "" if indexed_size is None else f", {indexed_size} when it was indexed"
        raise ShardChangedError(
            f"shard {req.url} member {short.member!r} at offset {short.offset}: the shard "
            f"ends early (got {got} of the {asked} bytes at {req.start}..{req.stop - 1}; "
            f"the shard is {size_now}{indexed}): it shrank or was replaced while being read")

    def _error(self, failure: _Failure, url: str, member: str, offset: int, size: int,
               doing: str) -> DatasetError:
        cause = failure.cause
        text = f"{type(cause).__name__}: {cause}".strip().rstrip(":")
        where = (f"shard {url} member {member!r} at offset {offset} ({size} bytes)" if member
                 else f"shard {url}")
        tries = f"{failure.attempts} attempt{'s' if failure.attempts != 1 else ''}"
        if _ignores_range(cause):
            return RangeIgnoredError(
                f"{where}: the server answered a byte-range request with the whole object: it "
                "ignores Range; dalidr reads shard members by range, so serve the shards from "
                "a server that honours Range (S3, GCS, nginx, ...) or copy them to a local disk")
        if isinstance(cause, FileNotFoundError) and failure.answered:
            return DatasetError(f"{where}: not found ({doing}; {text})")
        if isinstance(cause, PermissionError):
            return DatasetError(f"{where}: access denied ({doing}; {text}); check the "
                                "credentials")
        if not failure.answered:
            return UnreachableError(
                f"{where}: unreachable after {tries} ({doing}; last error {text}); "
                f"each attempt had {self.config.timeout_s:g} s")
        return RemoteReadError(f"{where}: {doing} failed after {tries} (last error {text})")


_default: ByteRangeReader | None = None
_default_lock = threading.Lock()


def default_reader() -> ByteRangeReader:
    """The process's shared reader (its config from DALIDR_REMOTE_* variables)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ByteRangeReader()
        return _default


def set_default_reader(reader: ByteRangeReader | None) -> ByteRangeReader | None:
    """Make `reader` the shared one (None: a fresh one on next use); returns the previous."""
    global _default
    with _default_lock:
        previous, _default = _default, reader
    return previous


def _forget_after_fork() -> None:
    # A child inherits no running threads: its reader (pool, semaphores) starts afresh.
    global _default
    _default = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
