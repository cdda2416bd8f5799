"""Where a sample's bytes come from: one reading path for every pass over a dataset.

Every place that reads encoded images (the teacher pass, the loaders' read-ahead pool, the
manifest's hashing, `dalidr verify`, the views and reports) asks a `DataSource` for sample
`i` by index; none opens files itself. Two sources exist:

- `FileSource`: a folder tree or a file list, sample i at `root / paths[i]` (`np.fromfile`).
- `ShardSource`: webdataset tar shards, sample i the byte range (offset, size) of one member
  of one shard (listed by `dalidr.data.shards`), read with `pread` on a file kept open per
  shard. Nothing is unpacked, and nothing outside the member's range is ever read: the
  listing checked that the range lies inside the shard, and a shard that has since shrunk
  gives a short read, refused by name.

A shard is reached through a `ShardFile` (size, stamp, ranged reads, a stream of its headers
for indexing), opened by `open_shard_file` from the scheme of its URL. Local paths (and
`file://`) are built in; a module serving other schemes (object stores, HTTP) registers its
opener in `SHARD_OPENERS`, and `ShardSource` reads through it unchanged. Trade-off: a local
read is one `pread` per member, neighbours not coalesced (the page cache and read-ahead make
that free on a local disk; a remote `ShardFile.read_ranges` is where coalescing belongs).

Open shards are kept in a small pool per source (`_MAX_OPEN` files, least recently used
closed first, never while a read is using them), so 4,095 shards do not exhaust the
process's file descriptors.
"""

from __future__ import annotations

import io
import os
import stat
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from dalidr.data.path_list import PathList
from dalidr.errors import DatasetError

__all__ = ["DataSource", "FileSource", "NamedFileSource", "ShardFile", "ShardStream",
           "LocalShardFile", "ShardSource", "NamedShardSource", "SHARD_OPENERS",
           "open_shard_file", "url_scheme"]

# Files a ShardSource keeps open at once (least recently used closed first).
_MAX_OPEN = 256
# The largest single read a tar header stream hands out: pax and GNU long-name headers are
# read whole by `tarfile`, so a forged header size must not size an allocation.
_STREAM_READ_CAP = 1 << 20
# Bytes a local header stream reads at once: a block where members are small (one read holds
# ~64 tiny members' headers), a page where they are large (the header and nothing of the data).
_LOCAL_BLOCK = 1 << 16
_LOCAL_SPARSE_BLOCK = 1 << 12


class DataSource(ABC):
    """The encoded bytes of a dataset's samples, by sample index."""

    # The data as the user named it (a folder, or a shard spec), for messages.
    name: str
    # Where the samples live: a folder, or the shard spec as text (URLs kept as given).
    root: Path | str

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def read(self, indices: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """The bytes of each sample, uint8 arrays in the order asked; DatasetError naming
        the sample's file (or shard, member and offset) if one cannot be read whole."""

    @abstractmethod
    def read_head(self, index: int, nbytes: int) -> bytes:
        """The first `nbytes` of one sample (fewer if it is shorter)."""

    @abstractmethod
    def size(self, index: int) -> int:
        """One sample's byte size as the data holds it now, -1 if it is gone."""

    @abstractmethod
    def describe(self, index: int) -> str:
        """Where sample `index` lives: its file, or its shard, member and byte range."""

    @abstractmethod
    def for_paths(self, paths: PathList) -> DataSource:
        """A source whose sample i is the one named `paths[i]` (a store's manifest) here."""

    def close(self) -> None:  # noqa: B027 (a source without open files has nothing to do)
        """Release open files (a source still reads afterwards, reopening them)."""


class FileSource(DataSource):
    """A folder tree or file list: sample i is the file `root / paths[i]`."""

    root: Path

    def __init__(self, root: str | Path, paths: Sequence[str]) -> None:
        self.root = Path(root)
        self.paths = PathList.from_strings(paths)
        self.name = str(self.root)

    def __len__(self) -> int:
        return len(self.paths)

    def file(self, index: int) -> Path:
        return self.root / self.paths[int(index)]

    def _files(self, indices: Sequence[int] | np.ndarray) -> list[Path]:
        return [self.file(int(i)) for i in indices]

    def read(self, indices: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        out = []
        for path in self._files(indices):
            try:
                out.append(np.fromfile(path, dtype=np.uint8))
            except OSError as exc:
                raise DatasetError(f"dataset file {path} cannot be read: {exc}") from exc
        return out

    def read_head(self, index: int, nbytes: int) -> bytes:
        path = self.file(index)
        try:
            with open(path, "rb") as f:
                return f.read(max(0, nbytes))
        except OSError as exc:
            raise DatasetError(f"dataset file {path} cannot be read: {exc}") from exc

    def size(self, index: int) -> int:
        try:
            return os.stat(self.file(index)).st_size
        except OSError:
            return -1

    def describe(self, index: int) -> str:
        return str(self.file(index))

    def for_paths(self, paths: PathList) -> FileSource:
        return FileSource(self.root, paths)


class NamedFileSource(FileSource):
    """Files under a folder named per sample on demand (`paths_of(indices)`: a store's
    manifest read per block), so no process holds every path of a large dataset."""

    def __init__(self, root: str | Path, count: int,
                 paths_of: Callable[[np.ndarray], list[str]]) -> None:
        super().__init__(root, [])
        self.count, self.paths_of = int(count), paths_of

    def __len__(self) -> int:
        return self.count

    def file(self, index: int) -> Path:
        return self.root / self.paths_of(np.array([int(index)]))[0]

    def _files(self, indices: Sequence[int] | np.ndarray) -> list[Path]:
        return [self.root / p for p in self.paths_of(np.asarray(indices, dtype=np.int64))]

    def for_paths(self, paths: PathList) -> FileSource:
        return FileSource(self.root, paths)


# ------------------------------------------------------------------ shard files


def url_scheme(url: str) -> str:
    """The scheme of `url` ('s3', 'http', ...), '' for a local path."""
    head, sep, _ = url.partition("://")
    return head.lower() if sep and head.replace("+", "").replace("-", "").replace(
        ".", "").isalnum() and head[:1].isalpha() else ""


class ShardFile(ABC):
    """One tar shard, opened: its size, a validity stamp, ranged reads, a header stream."""

    url: str
    # Whether reads of several shards of this kind are best made together (`read_many`):
    # remote shards, whose requests then share the time in flight.
    gathers = False

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """The shard's size in bytes, as opened."""

    @abstractmethod
    def stamp(self) -> list[int | str]:
        """What changes when the shard is replaced (size and mtime, or an ETag): a cached
        index of the shard is reused while its stamp is unchanged."""

    @abstractmethod
    def read_ranges(self, offsets: Sequence[int], sizes: Sequence[int],
                    names: Sequence[str]) -> list[np.ndarray]:
        """Exactly `sizes[j]` bytes at `offsets[j]` for each j (member `names[j]`, for
        messages); DatasetError naming the shard, member and offset on a short read."""

    @abstractmethod
    def stream(self) -> IO[bytes]:
        """A seekable binary stream of the shard for `tarfile` (header reads only), whose
        single reads are capped so that no forged header size sizes an allocation."""

    @classmethod
    def read_many(cls, jobs: Sequence[tuple[ShardFile, Sequence[int], Sequence[int],
                                            Sequence[str]]]) -> list[list[np.ndarray]]:
        """`read_ranges` of each (file, offsets, sizes, names) of this kind, in order; a kind
        that `gathers` makes them together."""
        return [file.read_ranges(o, s, n) for file, o, s, n in jobs]

    def index_text(self) -> str | None:
        """The text of a wds2idx index beside the shard, when one exists and is not older
        than the shard; None otherwise."""
        return None

    def close(self) -> None:  # noqa: B027 (nothing to release by default)
        """Release the shard's file descriptor or connection."""


class ShardStream(io.RawIOBase):
    """A byte window [0, end) of a shard as a seekable stream for `tarfile`, read through
    `fetch(offset, length)` (local `pread`, or a ranged request) one block at a time.

    A read inside the block last fetched is served from it. A read outside fetches a new block
    from the read's position: `block` bytes when the read lies less than `block` bytes past
    the last block (small members: one block holds many headers), else `sparse` bytes (large
    members: only the header there is wanted, not the member's data). Single reads are at most
    `cap` bytes and never past `end`, so no forged pax or long-name header size sizes an
    allocation; a fetch that comes back short (the shard shrank) ends the stream there."""

    def __init__(self, fetch: Callable[[int, int], bytes], end: int, block: int,
                 sparse: int | None = None, cap: int = _STREAM_READ_CAP) -> None:
        self._fetch, self._end, self._cap = fetch, end, cap
        self._block_size, self._sparse = block, block if sparse is None else sparse
        self._pos, self._start, self._block = 0, 0, b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._end}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        left = max(0, self._end - self._pos)
        n = min(left, self._cap) if size is None or size < 0 else min(size, left, self._cap)
        if n <= 0:
            return b""
        pos, start, stop = self._pos, self._start, self._start + len(self._block)
        if not (start <= pos and pos + n <= stop):
            dense = not self._block or stop <= pos < stop + self._block_size
            length = min(max(n, self._block_size if dense else self._sparse), self._end - pos)
            self._block, self._start = bytes(self._fetch(pos, length)), pos
        at = pos - self._start
        data = self._block[at:at + n]
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


class LocalShardFile(ShardFile):
    """A shard on a local file system, read with `pread` on one descriptor."""

    def __init__(self, url: str) -> None:
        self.url = url
        path = url[len("file://"):] if url.lower().startswith("file://") else url
        self.path = Path(path)
        self._fd = -1
        try:
            # Non-blocking, so that a FIFO named like a shard cannot hang the open.
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
                               | getattr(os, "O_NONBLOCK", 0))
        except OSError as exc:
            raise DatasetError(f"shard {url} cannot be opened: {exc}") from exc
        st = os.fstat(self._fd)
        if not stat.S_ISREG(st.st_mode):
            self.close()
            raise DatasetError(f"shard {url} is not a regular file")
        self._size, self._mtime = int(st.st_size), int(st.st_mtime_ns)

    @property
    def nbytes(self) -> int:
        return self._size

    def stamp(self) -> list[int | str]:
        return [self._size, self._mtime]

    def read_ranges(self, offsets: Sequence[int], sizes: Sequence[int],
                    names: Sequence[str]) -> list[np.ndarray]:
        out = []
        for offset, size, name in zip(offsets, sizes, names, strict=True):
            buffer = np.empty(int(size), dtype=np.uint8)
            view = memoryview(buffer.data)
            done = 0
            try:
                while done < size:
                    got = os.preadv(self._fd, [view[done:]], int(offset) + done)
                    if got <= 0:
                        break
                    done += got
            except OSError as exc:
                raise DatasetError(f"shard {self.url} member {name!r} at offset {offset}: "
                                   f"cannot be read: {exc}") from exc
            if done != size:
                raise DatasetError(
                    f"shard {self.url} member {name!r}: read {done} of its {size} bytes at "
                    f"offset {offset}; the shard ends early (shrunk or replaced since it was "
                    "listed)")
            out.append(buffer)
        return out

    def stream(self) -> IO[bytes]:
        # Not a BufferedReader: that allocates whatever size it is asked for.
        return ShardStream(self._pread, self._size, _LOCAL_BLOCK,  # type: ignore[return-value]
                           _LOCAL_SPARSE_BLOCK)

    def _pread(self, offset: int, length: int) -> bytes:
        try:
            return os.pread(self._fd, length, offset)
        except OSError as exc:
            raise DatasetError(f"shard {self.url}: cannot read bytes {offset}.."
                               f"{offset + length - 1}: {exc}") from exc

    def index_text(self) -> str | None:
        base = self.path.name
        stem = base[:base.find(".", 1)] if base.find(".", 1) > 0 else base
        for candidate in (self.path.with_name(stem + ".idx"), self.path.with_name(base + ".idx")):
            try:
                st = os.stat(candidate)
                if st.st_mtime_ns < self._mtime or st.st_size > max(self._size, 1 << 16):
                    continue  # older than the shard (stale), or larger than any index of it
                return candidate.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
        return None

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except (OSError, AttributeError):
            pass


# scheme -> opener of a shard at that URL. '' (local path) and 'file' are built in; a remote
# reader registers its schemes here.
SHARD_OPENERS: dict[str, Callable[[str], ShardFile]] = {"": LocalShardFile,
                                                          "file": LocalShardFile}


def _opener(url: str) -> Callable[[str], ShardFile] | None:
    scheme = url_scheme(url)
    if scheme and scheme not in SHARD_OPENERS:
        # fsspec's schemes are registered by dalidr.data.remote_shards, imported on first use.
        import dalidr.data.remote_shards  # noqa: F401
    return SHARD_OPENERS.get(scheme)


def open_shard_file(url: str) -> ShardFile:
    """The shard at `url`, opened by the reader registered for its scheme."""
    scheme = url_scheme(url)
    opener = _opener(url)
    if opener is None:
        raise DatasetError(f"shard {url}: no reader for {scheme}:// URLs here (readable: "
                           f"local paths and {', '.join(s + '://' for s in SHARD_OPENERS if s)})")
    return opener(url)


class _ShardPool:
    """Open shard files of one source, at most `limit` at once; a file in use by a read is
    never closed under it (closed when its last reader is done)."""

    def __init__(self, urls: Sequence[str], limit: int = _MAX_OPEN,
                 on_open: Callable[[int, ShardFile], None] | None = None) -> None:
        self.urls, self.limit, self.on_open = list(urls), limit, on_open
        self._open: OrderedDict[int, ShardFile] = OrderedDict()
        self._users: dict[int, int] = {}
        self._retired: list[tuple[int, ShardFile]] = []
        self._lock = threading.Lock()

    @contextmanager
    def use(self, shard: int) -> Iterator[ShardFile]:
        with self._lock:
            file = self._open.get(shard)
            if file is not None:
                self._open.move_to_end(shard)
                self._users[id(file)] = self._users.get(id(file), 0) + 1
        if file is None:
            opened = open_shard_file(self.urls[shard])  # outside the lock (may be remote)
            if self.on_open is not None:
                try:
                    self.on_open(shard, opened)
                except BaseException:
                    opened.close()
                    raise
            fresh: ShardFile | None = opened
            with self._lock:
                file = self._open.get(shard)
                if file is None:
                    file, fresh = opened, None
                    self._open[shard] = file
                else:
                    self._open.move_to_end(shard)
                self._users[id(file)] = self._users.get(id(file), 0) + 1
                self._evict()
            if fresh is not None:
                fresh.close()
        try:
            yield file
        finally:
            with self._lock:
                self._users[id(file)] -= 1
                self._close_retired()

    def _evict(self) -> None:
        while len(self._open) > self.limit:
            shard, file = self._open.popitem(last=False)
            self._retired.append((shard, file))
        self._close_retired()

    def _close_retired(self) -> None:
        keep = []
        for shard, file in self._retired:
            if self._users.get(id(file), 0) > 0:
                keep.append((shard, file))
            else:
                self._users.pop(id(file), None)
                file.close()
        self._retired = keep

    def close(self) -> None:
        with self._lock:
            self._retired.extend(self._open.items())
            self._open.clear()
            self._close_retired()


class ShardSource(DataSource):
    """Samples as members of tar shards: sample i is `sizes[i]` bytes at `offsets[i]` of
    shard `shard[i]` (an index into `urls`; -1: named by a store but absent here).
    `on_open(shard, file)` checks each shard when it is opened (DatasetError to refuse it)."""

    def __init__(self, name: str, urls: Sequence[str], names: PathList, shard: np.ndarray,
                 offsets: np.ndarray, sizes: np.ndarray,
                 on_open: Callable[[int, ShardFile], None] | None = None) -> None:
        self.name, self.urls, self.names = name, tuple(urls), PathList.from_strings(names)
        self.root = name
        self.shard = np.asarray(shard, dtype=np.int64).reshape(-1)
        self.offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
        self.sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
        n = len(self.names)
        if not (len(self.shard) == len(self.offsets) == len(self.sizes) == n):
            raise DatasetError(f"shards {name}: {n} names, {len(self.shard)} shard indices, "
                               f"{len(self.offsets)} offsets, {len(self.sizes)} sizes")
        self._on_open = on_open
        self._pool = _ShardPool(self.urls, on_open=on_open)

    def __len__(self) -> int:
        return len(self.names)

    def _rows(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shard, offset, size) of each of `samples`, int64 arrays: every read asks here."""
        return self.shard[samples], self.offsets[samples], self.sizes[samples]

    def _names(self, samples: np.ndarray) -> list[str]:
        """The member names of `samples` (for messages)."""
        return [self.names[int(i)] for i in samples]

    def _row(self, index: int) -> tuple[int, int, int]:
        shard, offset, size = self._rows(np.array([int(index)], np.int64))
        return int(shard[0]), int(offset[0]), int(size[0])

    def _missing(self, index: int) -> DatasetError:
        return DatasetError(f"sample {index} ({self._names(np.array([index]))[0]!r}) is not a "
                            f"member of the shards {self.name}")

    def read(self, indices: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
        out: list[np.ndarray | None] = [None] * len(wanted)
        shards, offsets, sizes = self._rows(wanted)
        # Shards of a kind that gathers (remote) are read together after the loop; the others
        # one at a time, each file released before the next is opened.
        gathered: dict[type[ShardFile], list[tuple[np.ndarray, ShardFile, Any]]] = {}
        with ExitStack() as held:
            for s in np.unique(shards):
                if s < 0:
                    raise self._missing(int(wanted[np.flatnonzero(shards == s)[0]]))
                where = np.flatnonzero(shards == s)
                job = (offsets[where].tolist(), sizes[where].tolist(),
                       self._names(wanted[where]))
                if getattr(_opener(self.urls[int(s)]), "gathers", False):
                    file = held.enter_context(self._pool.use(int(s)))
                    gathered.setdefault(type(file), []).append((where, file, job))
                    continue
                with self._pool.use(int(s)) as file:
                    data = file.read_ranges(*job)
                for j, array in zip(where.tolist(), data, strict=True):
                    out[j] = array
            for kind, items in gathered.items():
                results = kind.read_many([(file, *job) for _, file, job in items])
                for (where, _, _), data in zip(items, results, strict=True):
                    for j, array in zip(where.tolist(), data, strict=True):
                        out[j] = array
        return out  # type: ignore[return-value]

    def read_head(self, index: int, nbytes: int) -> bytes:
        s, offset, size = self._row(index)
        if s < 0:
            raise self._missing(index)
        with self._pool.use(s) as file:
            return file.read_ranges([offset], [min(max(0, nbytes), size)],
                                    self._names(np.array([index])))[0].tobytes()

    def size(self, index: int) -> int:
        s, _, size = self._row(index)
        return size if s >= 0 else -1

    def describe(self, index: int) -> str:
        s, start, size = self._row(index)
        name = self._names(np.array([index]))[0]
        if s < 0:
            return f"{name!r}, not a member of the shards {self.name}"
        return f"shard {self.urls[s]} member {name!r} (bytes {start}..{start + size - 1})"

    def for_paths(self, paths: PathList) -> ShardSource:
        paths = PathList.from_strings(paths)
        if (len(paths) == len(self.names) and np.array_equal(paths.offsets, self.names.offsets)
                and np.array_equal(paths.data, self.names.data)):
            return self
        where = self.names.index_of()
        found = np.array([where.get(p, -1) for p in paths], dtype=np.int64)
        present = found >= 0
        pick = np.where(present, found, 0)
        return ShardSource(self.name, self.urls, paths,
                           np.where(present, self.shard[pick], -1),
                           np.where(present, self.offsets[pick], 0),
                           np.where(present, self.sizes[pick], 0), self._on_open)

    def close(self) -> None:
        self._pool.close()


# (shard, offset, size) of samples, int64 arrays: a store's `/sources` read per block.
RowsOf = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray, np.ndarray]"]


class NamedShardSource(ShardSource):
    """Members of tar shards located per sample on demand (`rows_of(samples)`, and their
    names `names_of(samples)`: a store's `/sources` and manifest read per block,
    `store.sources`), so no process holds every sample's shard, offset and name. Reads go
    through `ShardSource`'s machinery unchanged."""

    def __init__(self, name: str, urls: Sequence[str], count: int, rows_of: RowsOf,
                 names_of: Callable[[np.ndarray], list[str]],
                 on_open: Callable[[int, ShardFile], None] | None = None) -> None:
        # The per-sample arrays of ShardSource are not held: `_rows` and `_names` ask.
        self.name = self.root = name
        self.urls, self.count = tuple(urls), int(count)
        self.rows_of, self.names_of = rows_of, names_of
        self._on_open = on_open
        self._pool = _ShardPool(self.urls, on_open=on_open)

    def __len__(self) -> int:
        return self.count

    def _rows(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.rows_of(np.asarray(samples, dtype=np.int64))

    def _names(self, samples: np.ndarray) -> list[str]:
        return self.names_of(np.asarray(samples, dtype=np.int64))

    def materialized(self) -> ShardSource:
        """Every sample's row and name in memory (O(N): for a whole-dataset pass)."""
        every = np.arange(self.count, dtype=np.int64)
        shard, offsets, sizes = self._rows(every)
        return ShardSource(self.name, self.urls, PathList.from_strings(self._names(every)),
                           shard, offsets, sizes, self._on_open)

    def for_paths(self, paths: PathList) -> ShardSource:
        """The samples named `paths` (reads every block: see `materialized`)."""
        return self.materialized().for_paths(paths)
