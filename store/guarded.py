"""Zarr stores that read only what a store may hold: regular files inside it, within their bounds.

A store may come from a stranger (a download, an archive) or a damaged disk, and zarr's own
stores trust its files: `LocalStore` follows a chunk that is a symbolic link to `/dev/zero` (and
reads until memory runs out), to a file outside the store (and serves it, or echoes its bytes
in a checksum error), opens a FIFO and waits forever; `FsspecStore` takes a server's answer to a
byte-range request as the range even when the server ignored the `Range` header and sent the
whole object. The two stores here are what `store.location.locate` opens instead:

- `GuardedLocalStore` reads an object only if it is a regular file inside the store, and
  writes none through a linked folder: the key's folders must resolve to themselves under the
  store's real root; the object is `lstat`ed (a symbolic link, FIFO, device or socket is refused
  by name before it is opened), then opened with `O_NOFOLLOW | O_NONBLOCK` and `fstat`ed (no
  hang and no link followed, even if the file changed in between). Every symbolic link is
  refused, also one to an object of the same store: dalidr's writer never makes one, such a
  link can only alias another object, and a rule that resolves nothing is harder to get wrong
  (or to race) than one that decides where a link leads. The store's root path itself may be a
  link (it is resolved once). A hard link cannot be told from a regular file; it cannot cross
  file systems, and archives only make them to their own members.
- Both stores check an object's size against its bound (`store.object_bounds`) before reading:
  locally with `fstat`, remotely by asking for at most bound + 1 bytes (one request, no
  separate size query); an object past its bound is damage, named with the sizes.
- `GuardedFsspecStore` checks that a byte-range request got at most the bytes it asked for; more
  means the server ignored the range, and the error says so (dalidr reads a shard's chunks by
  range, so such a server cannot serve a store).

No error here quotes an object's bytes (`store.location.redacted` keeps zarr's checksum errors
from quoting them either). Trade-off: two extra system calls and a cached folder
check per local read (microseconds against a shard's decode), no extra request remotely.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.core.buffer.core import default_buffer_prototype
from zarr.storage import FsspecStore, LocalStore

from dalidr.errors import StoreError
from store.object_bounds import ObjectBounds

__all__ = ["GuardedLocalStore", "GuardedFsspecStore"]

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
    | getattr(os, "O_CLOEXEC", 0)
_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _allowance(key: str) -> str:
    """Where an object's bound comes from, for messages."""
    return ("a metadata object may hold" if ObjectBounds.is_metadata(key)
            else "its array's metadata allows")


def _span(byte_range: ByteRequest | None, size: int) -> tuple[int, int]:
    """[start, stop) of a request within an object of `size` bytes (zarr's LocalStore rules)."""
    if byte_range is None:
        return 0, size
    if isinstance(byte_range, RangeByteRequest):
        return min(byte_range.start, size), min(max(byte_range.end, byte_range.start), size)
    if isinstance(byte_range, OffsetByteRequest):
        return min(byte_range.offset, size), size
    if isinstance(byte_range, SuffixByteRequest):
        return max(0, size - byte_range.suffix), size
    raise TypeError(f"unexpected byte range {byte_range!r}")


class GuardedLocalStore(LocalStore):
    """`LocalStore` that reads only regular files inside the store, within their bounds."""

    def __init__(self, root: Path | str, *, read_only: bool = False, url: str | None = None
                 ) -> None:
        super().__init__(root, read_only=read_only)
        self.url = url or str(root)
        self._real_root = os.path.realpath(self.root)
        self._bounds = ObjectBounds()
        self._folders: set[str] = set()  # folder keys checked to lie inside the store

    def with_read_only(self, read_only: bool = False) -> GuardedLocalStore:
        return type(self)(self.root, read_only=read_only, url=self.url)

    # ------------------------------------------------------------------ checks

    def _error(self, key: str, what: str) -> StoreError:
        return StoreError(f"{self.url}: object {key!r} {what}; a store's objects must be "
                                "regular files inside it (the store is damaged or was tampered "
                                "with)")

    def _check_folder(self, key: str) -> None:
        """StoreError unless the folders of `key` resolve to themselves in the store."""
        folder = key.rsplit("/", 1)[0] if "/" in key else ""
        if folder in self._folders:
            return
        expected = os.path.join(self._real_root, folder) if folder else self._real_root
        resolved = os.path.realpath(expected)
        if resolved != os.path.normpath(expected) or ".." in key.split("/"):
            inside = resolved.startswith(self._real_root.rstrip("/") + "/")
            raise self._error(key, f"is reached through a symbolic link or '..' (its folder "
                                   f"{folder!r} resolves to {resolved!r}, "
                                   f"{'inside' if inside else 'outside'} the store)")
        self._folders.add(folder)

    def _metadata(self, key: str) -> bytes | None:
        return self._read(key, None)

    def _read(self, key: str, byte_range: ByteRequest | None) -> bytes | None:
        """The requested bytes of `key`, None if it is missing; StoreError if it is not a
        regular file inside the store or exceeds its bound."""
        self._check_folder(key)
        path = os.path.join(self._real_root, key)
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISDIR(mode):
            return None
        if stat.S_ISLNK(mode):
            target = os.readlink(path)
            where = os.path.realpath(path)
            inside = where.startswith(self._real_root.rstrip("/") + "/")
            raise self._error(key, f"is a symbolic link to {target!r} "
                                   f"({'inside' if inside else 'outside'} the store)")
        if not stat.S_ISREG(mode):
            raise self._error(key, f"is {_kind(mode)}")
        bound = self._bounds.bound(key, self._metadata)
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._error(key, "is a symbolic link") from None
            raise
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise self._error(key, f"is {_kind(info.st_mode)}")
            if info.st_size > bound:
                raise StoreError(
                    f"{self.url}: object {key!r} holds {info.st_size} bytes, more than the "
                    f"{bound} {_allowance(key)}: the store is damaged")
            start, stop = _span(byte_range, info.st_size)
            parts, offset = [], start
            while offset < stop:
                part = os.pread(fd, stop - offset, offset)
                if not part:
                    break
                parts.append(part)
                offset += len(part)
        finally:
            os.close(fd)
        data = b"".join(parts)
        if self._bounds.is_metadata(key):
            self._bounds.learn(key, data)
        return data

    # ------------------------------------------------------------------ zarr's store API

    def get_sync(self, key: str, *, prototype: BufferPrototype | None = None,
                 byte_range: ByteRequest | None = None) -> Buffer | None:
        self._ensure_open_sync()
        data = self._read(key, byte_range)
        prototype = prototype or default_buffer_prototype()
        return None if data is None else prototype.buffer.from_bytes(data)

    async def get(self, key: str, prototype: BufferPrototype | None = None,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        if not self._is_open:
            await self._open()
        data = await asyncio.to_thread(self._read, key, byte_range)
        prototype = prototype or default_buffer_prototype()
        return None if data is None else prototype.buffer.from_bytes(data)

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]
                                 ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(key, prototype, byte_range)
                                           for key, byte_range in key_ranges)))

    # Writes: never through a linked folder (a resumed store with one would write outside).

    async def set(self, key: str, value: Buffer) -> None:
        self._check_folder(key)
        self._bounds.forget(key)
        await super().set(key, value)

    def set_sync(self, key: str, value: Buffer) -> None:
        self._check_folder(key)
        self._bounds.forget(key)
        super().set_sync(key, value)

    async def delete(self, key: str) -> None:
        self._check_folder(key)
        self._bounds.forget(key)
        await super().delete(key)


class GuardedFsspecStore(FsspecStore):
    """`FsspecStore` that bounds every read and refuses a server that ignores byte ranges."""

    def __init__(self, *args: Any, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.url = url or self.path
        self._bounds = ObjectBounds()

    @classmethod
    def from_url(cls, url: str, storage_options: dict[str, Any] | None = None,  # type: ignore[override]
                 read_only: bool = False, **kwargs: Any) -> GuardedFsspecStore:
        plain = FsspecStore.from_url(url, storage_options=storage_options, read_only=read_only)
        return cls(fs=plain.fs, path=plain.path, read_only=read_only,
                   allowed_exceptions=plain.allowed_exceptions, url=url)

    def with_read_only(self, read_only: bool = False) -> GuardedFsspecStore:
        return type(self)(fs=self.fs, path=self.path, read_only=read_only,
                          allowed_exceptions=self.allowed_exceptions, url=self.url)

    async def _cat(self, key: str, start: int | None, end: int | None) -> bytes | None:
        root = self.path.rstrip("/")
        path = (f"{root}/{key}" if root else key).rstrip("/")  # as FsspecStore does
        try:
            return bytes(await self.fs._cat_file(path, start=start, end=end))
        except self.allowed_exceptions:
            return None
        except OSError as exc:
            if "not satisfiable" in str(exc):  # s3: a range past the end
                return b""
            raise

    def _ignored_range(self, key: str, asked: str, wanted: int, got: int) -> StoreError:
        return StoreError(
            f"{self.url}: the server ignored a byte-range request ({asked} of {key!r}, at most "
            f"{wanted} bytes) and answered with {got} bytes, presumably the whole object: "
            "dalidr reads a shard's chunks by range, so the server must support HTTP Range "
            "requests (answer 206); serve the store from one that does, or copy it locally")

    def _too_large(self, key: str, least: int, bound: int) -> StoreError:
        return StoreError(
            f"{self.url}: object {key!r} holds at least {least} bytes, more than the {bound} "
            f"{_allowance(key)}: the store is damaged")

    async def _bound(self, key: str) -> int:
        """The key's bound, reading its array's metadata first if this store has not."""
        for meta_key in self._bounds.pending(key):  # empty unless zarr skipped the metadata
            data = await self._read(meta_key, None)
            self._bounds.found(meta_key, data)
            if data is not None:
                break
        return self._bounds.known(key)

    async def _read(self, key: str, byte_range: ByteRequest | None) -> bytes | None:
        """The requested bytes of `key` (None if missing), asking for at most its bound + 1
        bytes; StoreError if the object is past its bound or the server ignored a
        range."""
        bound = await self._bound(key)
        if isinstance(byte_range, SuffixByteRequest):
            data = await self._cat(key, -byte_range.suffix, None)
            if data is not None and len(data) > byte_range.suffix:
                raise self._ignored_range(key, f"the last {byte_range.suffix} bytes",
                                          byte_range.suffix, len(data))
        else:
            if byte_range is None or isinstance(byte_range, OffsetByteRequest):
                start, end = (0 if byte_range is None else byte_range.offset), bound + 1
            elif isinstance(byte_range, RangeByteRequest):
                start, end = byte_range.start, min(byte_range.end, bound + 1)
            else:
                raise TypeError(f"unexpected byte range {byte_range!r}")
            if start >= end:  # wholly past the bound: only an object past it could answer
                end = start + 1
            data = await self._cat(key, start, end)
            if data is not None and len(data) > end - start:
                raise self._ignored_range(key, f"bytes {start}..{end - 1}", end - start,
                                          len(data))
            if data is not None and start + len(data) > bound:
                raise self._too_large(key, start + len(data), bound)
        if data is not None and self._bounds.is_metadata(key):
            self._bounds.learn(key, data)
        return data

    async def get(self, key: str, prototype: BufferPrototype | None = None,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        if not self._is_open:
            await self._open()
        data = await self._read(key, byte_range)
        prototype = prototype or default_buffer_prototype()
        return None if data is None else prototype.buffer.from_bytes(data)

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]
                                 ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(key, prototype, byte_range)
                                           for key, byte_range in key_ranges)))

    async def set(self, key: str, value: Buffer, byte_range: tuple[int, int] | None = None
                  ) -> None:
        self._bounds.forget(key)
        await super().set(key, value, byte_range)

    async def delete(self, key: str) -> None:
        self._bounds.forget(key)
        await super().delete(key)
