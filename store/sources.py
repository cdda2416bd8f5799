"""Where each sample's bytes live in tar shards: the store's optional `/sources` group.

A store made from webdataset shards names each sample by its image member (the manifest's
path), so the same images as a folder and as shards give the same manifest and fingerprint
(`dalidr pack`). To find a member without indexing every shard (O(N) tar headers or wds2idx
lines at every start), the store also records where each one lies, beside the manifest and
outside its fingerprint:

    /sources                 group; attributes["dalidr_sources"]: the seal (below)
        name_bytes           uint8  [P]      the shards' base names, UTF-8, concatenated
        name_offsets         int64  [S + 1]  name j is name_bytes[off[j]:off[j+1]]
        sizes                uint64 [S]      each shard's byte size
        members              uint64 [N, 2]   per sample: shard (index into the names), byte
                                             offset of the image member's data in it; chunks
                                             of `block_size` rows (one block, one chunk)
        digests              uint64 [NB]     per block: BLAKE2b-64 of the block index and its
                                             members rows

The member's byte size is the manifest's `size` column (for a store made from shards it is the
image member's data size: the manifest is scanned through the shards' source). The seal,
written last, is the SHA-256 of the names, sizes and digests with the manifest fingerprint they
were made for, so a table from another store, or edited, is refused; every block of members is
checked against its digest when first read (`SourcesView`), and a loader reads only its rank's
blocks. The shards a loader is given must be the table's (same count, same base names in order:
the directory may move); each shard's size is checked when the loader first opens it, and the
32 sampled content hashes still run.

Written by `dalidr reinforce` right after creating a store from shards (before any block;
rewritten on resume if a kill left it unsealed), or by `add_sources` for a store made from shards
before this group existed (the shards indexed once, checked member by member against the
manifest). Trade-off: an extra 16 bytes a sample (a 1.4B-sample store: 22 GB, read 1/world of
it per rank) instead of the shards' whole index in every rank.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from threading import Lock
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
import zarr.codecs

from dalidr.data.data_source import NamedShardSource, ShardFile, ShardSource, url_scheme
from dalidr.data.path_list import PathList
from dalidr.data.shards import MAX_SHARDS, DataSpec, list_shards, parse_shard_spec
from dalidr.errors import DatasetError, StoreError
from store.location import CORRUPT_CHUNK_ERRORS, redacted
from store.write_errors import writing

if TYPE_CHECKING:
    from store.layout import StoreLayout
    from store.manifest_view import ManifestView

__all__ = ["SOURCES", "SourcesView", "SourcesBlockError", "write_sources", "add_sources",
           "copy_sources", "sources_problems", "has_sources", "shard_base_name",
           "sources_digests"]

SOURCES = "sources"
_ATTRS = "dalidr_sources"
_PERSON = b"dalidr-sources"
_SEAL_PREFIX = b"dalidr-sources-v1"
_BYTES_CHUNK = 1 << 20  # name bytes, offsets and sizes per chunk
_DEFAULT_BLOCKS = 64  # blocks kept by default (a loader reserves its share)
_MAX_NAME = 4096  # bytes a shard's base name may take
_MAX_SIZE = 1 << 62  # a shard's byte size must be below this (offsets stay int64)
_CHECK = "check=DatasetCheck.LISTING"


class SourcesBlockError(StoreError):
    """A block of `/sources/members` is damaged or forged."""


def shard_base_name(url: str) -> str:
    """The last component of a shard's path or URL (what the table records: shards may move)."""
    return os.path.basename(url) if not url_scheme(url) else url.rsplit("/", 1)[-1]


def _block_digest(block: int, rows: np.ndarray) -> int:
    h = hashlib.blake2b(digest_size=8, person=_PERSON)
    h.update(np.int64(block).astype("<i8").tobytes())
    h.update(np.ascontiguousarray(rows, dtype="<u8").tobytes())
    return int.from_bytes(h.digest(), "little")


def sources_digests(members: np.ndarray, block_size: int) -> np.ndarray:
    """[num_blocks] uint64: each block's digest of its `members` rows ([N, 2])."""
    n = len(members)
    return np.array([_block_digest(b, members[b * block_size:min((b + 1) * block_size, n)])
                     for b in range(-(-n // block_size))], dtype=np.uint64)


def _seal(names: PathList, sizes: np.ndarray, digests: np.ndarray,
          fingerprint: str) -> dict[str, str]:
    h = hashlib.sha256(_SEAL_PREFIX)
    h.update(names.digest())
    h.update(np.ascontiguousarray(sizes, dtype="<u8").tobytes())
    h.update(np.ascontiguousarray(digests, dtype="<u8").tobytes())
    return {"fingerprint": fingerprint, "sha256": h.hexdigest()}


# ------------------------------------------------------------------ writing


def _shard_sizes(urls: tuple[str, ...]) -> np.ndarray:
    """Each shard's byte size now: a stat per local shard, remote ones looked up together."""
    sizes = np.zeros(len(urls), np.uint64)
    remote = [j for j, url in enumerate(urls) if url_scheme(url) not in ("", "file")]
    if remote:
        from dalidr.data.remote_shards import remote_stamps

        stamps = remote_stamps([urls[j] for j in remote])
        if len(stamps) != len(remote):
            raise DatasetError(f"shards {urls[remote[0]]}, ...: {len(remote) - len(stamps)} of "
                               f"the {len(remote)} remote shards cannot be looked up")
        for j, stamp in zip(remote, stamps, strict=True):
            sizes[j] = int(stamp[0])
    for j, url in enumerate(urls):
        if url_scheme(url) not in ("", "file"):
            continue
        path = url[len("file://"):] if url.lower().startswith("file://") else url
        try:
            sizes[j] = os.stat(path).st_size
        except OSError as exc:
            raise DatasetError(f"shard {url} cannot be opened: {exc}") from exc
    return sizes


def _table(layout: StoreLayout, source: ShardSource) -> dict[str, np.ndarray]:
    """The arrays of `/sources` for `source`, whose sample i is the store's sample i."""
    n = layout.num_samples
    if len(source) != n:
        raise DatasetError(f"{layout.url}: the store has {n} samples, the shards "
                           f"{source.name} {len(source)}")
    absent = np.flatnonzero(source.shard < 0)
    if absent.size:
        raise DatasetError(f"{layout.url}: sample {int(absent[0])} "
                           f"({source.names[int(absent[0])]!r}) is not a member of the shards "
                           f"{source.name}")
    names = PathList.from_strings([shard_base_name(u) for u in source.urls])
    members = np.stack([source.shard, source.offsets], axis=1).astype(np.uint64)
    return {"name_bytes": names.data, "name_offsets": names.offsets,
            "sizes": _shard_sizes(source.urls), "members": members,
            "digests": sources_digests(members, layout.config.block_size)}


def _create(group: zarr.Group, name: str, values: np.ndarray, chunk: int,
            dims: tuple[str, ...]) -> None:
    chunks = (max(1, min(chunk, len(values))),) + values.shape[1:]
    array = group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=chunks,
                               compressors=zarr.codecs.ZstdCodec(level=9), fill_value=0,
                               dimension_names=dims, overwrite=True)
    array[...] = values


def _write(layout: StoreLayout, table: dict[str, np.ndarray]) -> None:
    """Write `/sources`: the group without its seal first, the arrays, the seal last (a kill
    leaves an unsealed group, which readers refuse and writers redo)."""
    needed = sum(values.nbytes for values in table.values()) + 6 * 4096
    with writing(layout.location, f"the shard sources ({SOURCES!r})", needed):
        group = layout.group.create_group(SOURCES, overwrite=True)
        block = layout.config.block_size
        _create(group, "name_bytes", table["name_bytes"], _BYTES_CHUNK, ("byte",))
        _create(group, "name_offsets", table["name_offsets"], _BYTES_CHUNK, ("shard",))
        _create(group, "sizes", table["sizes"], _BYTES_CHUNK, ("shard",))
        _create(group, "members", table["members"], block, ("sample", "field"))
        _create(group, "digests", table["digests"], block, ("block",))
        names = PathList(table["name_bytes"], table["name_offsets"])
        group.attrs[_ATTRS] = _seal(names, table["sizes"], table["digests"],
                                    layout.fingerprint)


def write_sources(layout: StoreLayout, source: ShardSource) -> None:
    """Record where each sample of `layout` lives in the shards of `source` (a listing's, whose
    sample i is the store's sample i): by the process that created the store, before it
    writes a block (other writers never read the table)."""
    _write(layout, _table(layout, source))


def has_sources(layout: StoreLayout) -> bool:
    """Whether the store holds a sealed `/sources` (an unsealed one was cut short)."""
    if not layout.location.exists(f"{SOURCES}/zarr.json"):
        return False
    try:
        node = layout.group[SOURCES]
        return isinstance(node, zarr.Group) and isinstance(node.attrs.get(_ATTRS), dict)
    except (*CORRUPT_CHUNK_ERRORS, FileNotFoundError):
        return False


def add_sources(url: str, spec: DataSpec) -> bool:
    """Add `/sources` to a store made from the shards `spec` before the group existed (the
    shards indexed once; every member name and size checked against the manifest, DatasetError
    naming the first that differs). Metadata only; True if it wrote, False if the store already
    held exactly these sources (every block verified)."""
    from store.layout import open_layout

    layout = open_layout(url, read_only=False)
    listing = list_shards(spec)
    manifest = layout.manifest
    where = f"store {url} and shards {listing.spec.text}"
    if len(listing.names) != len(manifest):
        raise DatasetError(f"{where}: the store's manifest lists {len(manifest)} samples, the "
                           f"shards hold {len(listing.names)}; not the store's shards")
    source = listing.source()
    first = manifest.paths.first_difference(listing.names)
    if first is not None:
        raise DatasetError(f"{where}: sample {first} is {manifest.paths[first]!r} in the store, "
                           f"{source.describe(first)} in the shards; not the store's shards")
    bad = np.flatnonzero(manifest.sizes != listing.sizes)
    if bad.size:
        i = int(bad[0])
        raise DatasetError(f"{where}: sample {i} ({manifest.paths[i]!r}) is "
                           f"{int(manifest.sizes[i])} bytes in the store, "
                           f"{int(listing.sizes[i])} in the shards ({source.describe(i)})")
    table = _table(layout, source)
    if _holds(layout, table):
        return False
    _write(layout, table)
    return True


def copy_sources(source: StoreLayout, target: StoreLayout) -> bool:
    """Give `target`, a store of the same manifest and block size (`dalidr subset`), the shard
    table of `source`, every block of it verified first. True if it wrote; False if `source`
    has none, the stores are cut differently, or `target` already holds it."""
    view = SourcesView.open(source)
    if view is None or (source.fingerprint, source.config.block_size) != (
            target.fingerprint, target.config.block_size):
        return False
    members = np.concatenate([view.block(b) for b in range(view.num_blocks)]).astype(np.uint64)
    table: dict[str, np.ndarray] = {
        "name_bytes": view.names.data, "name_offsets": view.names.offsets,
        "sizes": view.sizes, "members": members,
        "digests": sources_digests(members, target.config.block_size)}
    if _holds(target, table):
        return False
    _write(target, table)
    return True


def sources_problems(layout: StoreLayout) -> list[str]:
    """What `dalidr inspect` reports of `/sources`: unreadable, unsealed, or a block that does
    not match its digest (every block read)."""
    try:
        view = SourcesView.open(layout)
        for b in range(view.num_blocks if view is not None else 0):
            assert view is not None
            view.block(b)
    except StoreError as exc:
        return [f"shard sources: {exc}"]
    return []


def _holds(layout: StoreLayout, table: dict[str, np.ndarray]) -> bool:
    """Whether `/sources` already holds `table`, sealed, every block verified."""
    try:
        view = SourcesView.open(layout)
        if view is None:
            return False
        names = PathList(table["name_bytes"], table["name_offsets"])
        if view.seal != _seal(names, table["sizes"], table["digests"], layout.fingerprint):
            return False
        for b in range(view.num_blocks):
            view.block(b)
    except StoreError:
        return False
    return True


# ------------------------------------------------------------------ reading


class SourcesView:
    """A store's `/sources`, the table in memory, the members read per block (verified)."""

    def __init__(self, layout: StoreLayout, names: PathList, sizes: np.ndarray,
                 digests: np.ndarray, seal: dict[str, Any]) -> None:
        self.layout, self.url = layout, layout.url
        self.names, self.sizes, self.seal = names, sizes, seal
        self.num_samples, self.block_size = layout.num_samples, layout.config.block_size
        self.num_blocks = layout.num_blocks
        self._digests = digests
        self._blocks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._capacity = _DEFAULT_BLOCKS
        self._lock = Lock()
        self._reading: dict[int, Lock] = {}  # a lock per block being read
        self.blocks_read = 0  # block reads made (for tests and benches)
        self.read_blocks: list[int] = []  # which, in order

    @property
    def num_shards(self) -> int:
        return len(self.names)

    @classmethod
    def open(cls, layout: StoreLayout) -> SourcesView | None:
        """The store's sources, None if it has none; StoreError naming the store and array
        if they are malformed, unsealed or sealed for other contents."""
        if not layout.location.exists(f"{SOURCES}/zarr.json"):
            return None
        url, n = layout.url, layout.num_samples
        try:
            node = layout.group[SOURCES]
            found = node.attrs.get(_ATTRS) if isinstance(node, zarr.Group) else None
        except (*CORRUPT_CHUNK_ERRORS, FileNotFoundError) as exc:
            raise StoreError(f"{url}: group {SOURCES!r}: its metadata cannot be read: "
                             f"{redacted(exc)}") from exc
        if not isinstance(node, zarr.Group):
            raise StoreError(f"{url}: {SOURCES!r} is an array, not a group")
        if not isinstance(found, dict):
            raise StoreError(f"{url}: group {SOURCES!r} has no seal: its writing was cut short; "
                             "rerun `dalidr reinforce` (or `dalidr upgrade --data SHARDS`)")
        offsets = _checked(layout, "name_offsets", np.int64, None, _BYTES_CHUNK)
        shards = offsets.shape[0] - 1
        if not 1 <= shards <= min(n, MAX_SHARDS):
            raise StoreError(f"{url}: array '{SOURCES}/name_offsets' is {list(offsets.shape)}: "
                             f"1..{min(n, MAX_SHARDS)} shards for {n} samples")
        name_bytes = _checked(layout, "name_bytes", np.uint8, None, _BYTES_CHUNK)
        if name_bytes.shape[0] > shards * _MAX_NAME:
            raise StoreError(f"{url}: array '{SOURCES}/name_bytes' is {list(name_bytes.shape)},"
                             f" more than {_MAX_NAME} bytes a shard name")
        sizes = _checked(layout, "sizes", np.uint64, (shards,), _BYTES_CHUNK)
        _checked(layout, "members", np.uint64, (n, 2), layout.config.block_size)
        digests = _checked(layout, "digests", np.uint64, (layout.num_blocks,),
                           layout.config.block_size)
        values = {name: _read_whole(layout, name, array) for name, array in
                  (("name_offsets", offsets), ("name_bytes", name_bytes), ("sizes", sizes),
                   ("digests", digests))}
        try:
            names = PathList(values["name_bytes"], values["name_offsets"])
        except ValueError as exc:
            raise StoreError(f"{url}: array '{SOURCES}/name_offsets' does not index "
                             f"'{SOURCES}/name_bytes'") from exc
        seal = dict(found)
        if seal != _seal(names, values["sizes"], values["digests"], layout.fingerprint):
            raise StoreError(f"{url}: the shard sources ({SOURCES!r}) do not match their seal or "
                             "the manifest's fingerprint (edited, damaged, or from another "
                             "store); rewrite them with `dalidr upgrade --data SHARDS`")
        _check_table(url, names, values["sizes"])
        return cls(layout, names, values["sizes"], values["digests"], seal)

    def reserve(self, blocks: int) -> None:
        """Keep up to `blocks` blocks read (a loader: its rank's share, plus some)."""
        with self._lock:
            self._capacity = max(self._capacity, int(blocks))

    def block(self, b: int) -> np.ndarray:
        """The verified members rows of block `b`, int64 [rows, 2] (read once, then kept while
        the cache has room)."""
        with self._lock:
            found = self._cached(b)
            if found is not None:
                return found
            gate = self._reading.setdefault(b, Lock())
        with gate:  # threads asking for one block at once (the sampled hashes) read it once
            with self._lock:
                found = self._cached(b)
                if found is not None:
                    return found
            try:
                rows = self._read(b)
                with self._lock:
                    self._blocks[b] = rows
                    self.blocks_read += 1
                    self.read_blocks.append(b)
                    while len(self._blocks) > self._capacity:
                        self._blocks.popitem(last=False)
            finally:
                with self._lock:
                    self._reading.pop(b, None)
        return rows

    def _cached(self, b: int) -> np.ndarray | None:
        found = self._blocks.get(b)
        if found is not None:
            self._blocks.move_to_end(b)
        return found

    def _read(self, b: int) -> np.ndarray:
        if not 0 <= b < self.num_blocks:
            raise SourcesBlockError(f"{self.url}: sources block {b} is not in "
                                    f"0..{self.num_blocks - 1}")
        a, z = b * self.block_size, min((b + 1) * self.block_size, self.num_samples)
        where = f"{self.url}: sources block {b} (samples {a}..{z - 1})"
        try:
            rows = np.asarray(self.layout.array(f"{SOURCES}/members")[a:z], dtype=np.uint64)
        except CORRUPT_CHUNK_ERRORS as exc:
            raise SourcesBlockError(f"{where}: array '{SOURCES}/members' is damaged: "
                                    f"{redacted(exc)}") from exc
        if rows.shape != (z - a, 2) or _block_digest(b, rows) != int(self._digests[b]):
            raise SourcesBlockError(f"{where}: the members rows do not match the block's digest "
                                    "(edited or damaged on disk); rewrite them with `dalidr "
                                    "upgrade --data SHARDS`")
        shard = rows[:, 0]
        bad = np.flatnonzero(shard >= np.uint64(self.num_shards))
        if not bad.size:
            bad = np.flatnonzero(rows[:, 1] >= self.sizes[shard])
        if bad.size:
            i = int(bad[0])
            raise SourcesBlockError(f"{where}: sample {a + i} names shard {int(shard[i])} at "
                                    f"offset {int(rows[i, 1])}, outside the table")
        return rows.astype(np.int64)

    def members(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, offset) of each of `samples` (int64), reading the blocks they touch."""
        flat = np.asarray(samples, dtype=np.int64).reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= self.num_samples):
            bad = int(flat[(flat < 0) | (flat >= self.num_samples)][0])
            raise StoreError(f"{self.url}: sample {bad} is not in 0..{self.num_samples - 1}")
        out = np.zeros((flat.size, 2), np.int64)
        owners = flat // self.block_size
        for b in np.unique(owners).tolist():
            where = np.flatnonzero(owners == b)
            out[where] = self.block(b)[flat[where] - b * self.block_size]
        return out[:, 0], out[:, 1]

    # ------------------------------------------------------------------ a loader's source

    def check_shards(self, spec: str, urls: tuple[str, ...]) -> None:
        """DatasetError unless `urls` are the table's shards: the same count and base names."""
        if len(urls) != self.num_shards:
            raise DatasetError(f"shards {spec}: {len(urls)} shards, the store {self.url} was "
                               f"made from {self.num_shards}; use {_CHECK} to compare them "
                               "member by member")
        for j, url in enumerate(urls):
            if shard_base_name(url) != self.names[j]:
                raise DatasetError(f"shards {spec}: shard {j} is {url}, the store {self.url} was "
                                   f"made with {self.names[j]!r} there; use {_CHECK} to compare "
                                   "them member by member")

    def _opened(self, urls: tuple[str, ...]) -> Any:
        def check(shard: int, file: ShardFile) -> None:
            if file.nbytes != int(self.sizes[shard]):
                raise DatasetError(f"shard {urls[shard]} is {file.nbytes} bytes, the store "
                                   f"{self.url} was made from {int(self.sizes[shard])} bytes "
                                   f"there (replaced since?); use {_CHECK}, or `dalidr verify "
                                   f"{self.url} --data SHARDS`")
        return check

    def source(self, data: DataSpec, manifest: ManifestView) -> NamedShardSource:
        """The shards `data` as a source whose sample i is the store's sample i, located
        through this table and named through `manifest`, both read per block."""
        spec = parse_shard_spec(data)
        urls = spec.urls()
        self.check_shards(spec.text, urls)

        def rows_of(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            shard, offset = self.members(samples)
            size = np.asarray(manifest.gather("size", samples), np.int64).reshape(-1)
            over = np.flatnonzero((size < 0) | (offset + size > self.sizes[shard].astype(
                np.int64)))
            if over.size:
                i = int(samples.reshape(-1)[over[0]])
                raise StoreError(f"{self.url}: sample {i}'s member ({int(size[over[0]])} bytes "
                                 f"at offset {int(offset[over[0]])}) runs past the end of shard"
                                 f" {self.names[int(shard[over[0]])]!r}")
            return shard, offset, size

        return NamedShardSource(spec.text, urls, self.num_samples, rows_of, manifest.paths,
                                self._opened(urls))


def _checked(layout: StoreLayout, name: str, dtype: type, shape: tuple[int, ...] | None,
             most_chunk: int) -> zarr.Array:
    """The array `sources/name`, its metadata checked before anything of it is read."""
    from store.validate import open_array

    key = f"{SOURCES}/{name}"
    array = open_array(layout, key)
    if array.dtype != np.dtype(dtype) or (shape is not None and tuple(array.shape) != shape) or (
            shape is None and array.ndim != 1):
        want = f"{np.dtype(dtype)}{list(shape) if shape is not None else '[one dimension]'}"
        raise StoreError(f"{layout.url}: array {key!r} is {array.dtype}{list(array.shape)}, "
                         f"the store needs {want}")
    outer = array.shards or array.chunks
    for dim, (extent, chunk, shard) in enumerate(zip(array.shape, array.chunks, outer,
                                                     strict=True)):
        most = max(1, min(extent, most_chunk) if dim == 0 else extent)
        if not 1 <= chunk <= most or shard != chunk:
            raise StoreError(f"{layout.url}: array {key!r} has chunks {list(array.chunks)} for "
                             f"shape {list(array.shape)}: the metadata is damaged")
    return array


def _read_whole(layout: StoreLayout, name: str, array: zarr.Array) -> np.ndarray:
    try:
        return np.asarray(array[...])
    except CORRUPT_CHUNK_ERRORS as exc:
        raise StoreError(f"{layout.url}: array '{SOURCES}/{name}' is damaged: "
                         f"{redacted(exc)}") from exc


def _check_table(url: str, names: PathList, sizes: np.ndarray) -> None:
    lengths = np.diff(names.offsets)
    empty = np.flatnonzero((lengths == 0) | (lengths > _MAX_NAME))
    if empty.size:
        raise StoreError(f"{url}: shard {int(empty[0])}'s name in '{SOURCES}/name_bytes' is "
                         "empty or too long")
    if names.unsafe_index() is not None or (names.data == ord("/")).any():
        raise StoreError(f"{url}: a shard name in '{SOURCES}/name_bytes' is not a base name")
    bad = np.flatnonzero((sizes == 0) | (sizes >= np.uint64(_MAX_SIZE)))
    if bad.size:
        raise StoreError(f"{url}: shard {names[int(bad[0])]!r} has byte size "
                         f"{int(sizes[bad[0]])} in '{SOURCES}/sizes'")
