"""The manifest read lazily: per block, verified, only the blocks a process touches.

`Manifest` holds every sample's path, label, size, hash and image size in memory: about 100 B
a sample, 1.4 GB per rank at ImageNet-22k's 13.7M samples, 140 GB at a billion. A loader
needs far less: the rows of the samples its rank serves, and of their mixing partners. The
manifest's columns are chunked by the store's block size (schema 3), so one block's rows are
one chunk of each column (and one or two of the path bytes); `ManifestView` reads them per
block when first asked and keeps the blocks it read in a bounded cache (`reserve`: a loader
sizes it to its rank's share of blocks, which it then reads once per run, not once per batch).

Trust. The fingerprint in the root attributes covers the whole manifest, so checking it means
reading everything. The store therefore also holds one digest per block of manifest rows:

    /manifest_digests   [num_blocks, 2] uint64: blake2b of the block's rows of every manifest
                        column (path lengths and bytes, label, size, SHA-256, image size, skip
                        mark, in their stored dtypes) and the block index; then the number of
                        samples in the block the teacher pass skipped as unreadable

sealed by its attributes: the SHA-256 of the array's bytes and the manifest fingerprint they
were computed for (so digests from another manifest are refused). Every block read is checked
against its digest, and its values as the eager reader checks them (safe relative paths,
labels in range, image sizes 1..65535), naming the store and the block. The skip counts let a
loader find the skipped samples by reading only the blocks that have any.

Stores made before the digests existed have no `manifest_digests`: `ManifestView.open`
returns None and callers read the whole manifest as before (`dalidr upgrade` adds them, reading
the manifest once and checking it against the fingerprint first).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from threading import Lock
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
import zarr.codecs

from dalidr.data.path_list import PathList
from dalidr.errors import DatasetError, StoreError
from store.gather import read_concurrently
from store.location import CORRUPT_CHUNK_ERRORS, redacted
from store.manifest import MANIFEST_COLUMNS, SAMPLED_HASHES, Manifest, sampled_positions

if TYPE_CHECKING:
    from dalidr.data.dataset import DatasetListing
    from store.layout import StoreLayout

__all__ = ["DIGESTS", "ManifestView", "LazyColumn", "ManifestBlockError", "manifest_digests",
           "write_manifest_digests", "digest_problems"]

DIGESTS = "manifest_digests"
_ATTRS = "dalidr_manifest_digests"
_PERSON = b"dalidr-manifest"
# Blocks kept by default (a loader reserves its share); about 0.4 MB a block of 4,096 samples.
_DEFAULT_BLOCKS = 64
# Blocks whose columns are fetched in one concurrent call (bounds the raw columns in memory).
_BLOCKS_AT_ONCE = 16


class ManifestBlockError(StoreError):
    """A block of the manifest is damaged or forged (raised by whatever read it, as it is)."""


def _block_digest(block: int, offsets: np.ndarray, path_bytes: np.ndarray,
                  columns: dict[str, np.ndarray]) -> int:
    """The digest of one block's rows: `offsets` [rows + 1] into `path_bytes` (the block's),
    `columns` every MANIFEST_COLUMNS entry for the rows, in any integer dtype."""
    h = hashlib.blake2b(digest_size=8, person=_PERSON)
    h.update(np.int64(block).astype("<i8").tobytes())
    h.update(np.diff(np.asarray(offsets, np.int64)).astype("<i8").tobytes())
    h.update(np.ascontiguousarray(path_bytes, np.uint8).tobytes())
    for name, (dtype, _) in MANIFEST_COLUMNS.items():
        values = np.asarray(columns[name])
        if name == "skipped":
            values = values != 0  # any nonzero mark is a mark, as in the fingerprint
        h.update(np.ascontiguousarray(values.astype(dtype)).tobytes())
    return int.from_bytes(h.digest(), "little")


def manifest_digests(manifest: Manifest, block_size: int) -> np.ndarray:
    """[num_blocks, 2] uint64: each block's digest and its count of skipped samples."""
    n = len(manifest)
    blocks = -(-n // block_size)
    out = np.zeros((blocks, 2), np.uint64)
    offsets, data = manifest.paths.offsets, manifest.paths.data
    columns = {"label": manifest.labels, "size": manifest.sizes, "sha256": manifest.hashes,
               "image_hw": manifest.image_hw, "skipped": manifest.skipped}
    for b in range(blocks):
        a, z = b * block_size, min((b + 1) * block_size, n)
        rows = {name: values[a:z] for name, values in columns.items()}
        out[b, 0] = _block_digest(b, offsets[a:z + 1], data[offsets[a]:offsets[z]], rows)
        out[b, 1] = int(np.count_nonzero(manifest.skipped[a:z]))
    return out


def _seal(digests: np.ndarray, fingerprint: str) -> dict[str, str]:
    return {"fingerprint": fingerprint,
            "sha256": hashlib.sha256(digests.astype("<u8").tobytes()).hexdigest()}


def write_manifest_digests(group: zarr.Group, manifest: Manifest, block_size: int) -> None:
    """Create `/manifest_digests` for `manifest` (at store creation, or by `dalidr upgrade`
    after the whole manifest was checked against the fingerprint)."""
    digests = manifest_digests(manifest, block_size)
    array = group.create_array(
        DIGESTS, shape=digests.shape, dtype="<u8",
        chunks=(max(1, min(len(digests), block_size)), 2),
        compressors=zarr.codecs.ZstdCodec(level=9), fill_value=0,
        dimension_names=("block", "digest"), overwrite=True,
        attributes={_ATTRS: _seal(digests, manifest.fingerprint)})
    array[...] = digests


@dataclass(frozen=True, eq=False)
class _Block:
    """One block's verified rows, in the manifest's stored widths (a rank caches its share of
    blocks: every byte here is a byte per sample it serves). The content hashes are dropped
    from cached blocks (`slim`): only the start's sampled check needs them, and it reads its
    blocks afresh."""

    start: int
    paths: PathList
    labels: np.ndarray  # int32
    image_hw: np.ndarray  # uint16 [rows, 2]
    skipped: np.ndarray  # bool
    sizes: np.ndarray  # int64
    hashes: np.ndarray | None  # uint8 [rows, 32]; None in a cached block

    def slim(self) -> _Block:
        return dataclasses.replace(self, hashes=None)


# Columns a caller gathers by name, and how each is read off a block.
_GATHER: dict[str, Callable[[_Block], np.ndarray]] = {
    "label": lambda b: b.labels, "image_hw": lambda b: b.image_hw,
    "skipped": lambda b: b.skipped, "size": lambda b: b.sizes,
    "sha256": lambda b: _hashes(b)}
# What `gather` returns for the columns a block keeps narrower than callers compute with.
_GATHERED_DTYPE = {"label": np.dtype(np.int64), "image_hw": np.dtype(np.int64)}


def _hashes(block: _Block) -> np.ndarray:
    assert block.hashes is not None, "a cached block has no hashes: read it afresh"
    return block.hashes


class ManifestView:
    """Lazy, per-block, verified access to a store's manifest; see the module docstring."""

    def __init__(self, layout: StoreLayout, digests: np.ndarray) -> None:
        self.layout, self.url = layout, layout.url
        self.num_samples, self.block_size = layout.num_samples, layout.config.block_size
        self.num_blocks = layout.num_blocks
        self._digests = digests
        self._blocks: OrderedDict[int, _Block] = OrderedDict()
        self._capacity = _DEFAULT_BLOCKS
        self._lock = Lock()
        self._reading: dict[int, Lock] = {}  # a lock per block being read
        self.blocks_read = 0  # how many block reads this view made (for tests and benches)

    @classmethod
    def open(cls, layout: StoreLayout) -> ManifestView | None:
        """The view of `layout`'s manifest, or None for a store without block digests."""
        location = layout.location
        if not location.exists(f"{DIGESTS}/zarr.json"):
            return None
        from store.validate import open_array

        array = open_array(layout, DIGESTS)
        expected = (layout.num_blocks, 2)
        if tuple(array.shape) != expected or array.dtype != np.uint64:
            raise StoreError(f"{layout.url}: array {DIGESTS!r} is {array.dtype}"
                             f"{list(array.shape)}, the store's {layout.num_blocks} blocks need "
                             f"uint64{list(expected)}")
        try:
            digests = np.asarray(array[...], dtype=np.uint64)
            found = array.attrs.get(_ATTRS)
            seal = dict(found) if isinstance(found, dict) else {}
        except CORRUPT_CHUNK_ERRORS as exc:
            raise StoreError(f"{layout.url}: array {DIGESTS!r} is damaged: "
                             f"{redacted(exc)}") from exc
        if seal != _seal(digests, layout.fingerprint):
            raise StoreError(f"{layout.url}: the manifest's block digests ({DIGESTS!r}) do not "
                             "match their seal or the manifest's fingerprint (edited or "
                             "damaged on disk); run `dalidr inspect` on the store")
        if int(digests[:, 1].sum()) > layout.num_samples:
            raise StoreError(f"{layout.url}: array {DIGESTS!r} counts more skipped samples "
                             f"than the store's {layout.num_samples}")
        return cls(layout, digests)

    def __len__(self) -> int:
        return self.num_samples

    def reserve(self, blocks: int) -> None:
        """Keep up to `blocks` blocks read (a loader: its rank's share, plus some)."""
        with self._lock:
            self._capacity = max(self._capacity, int(blocks))

    # ------------------------------------------------------------------ reading blocks

    def block(self, b: int) -> _Block:
        """The verified rows of block `b` (read once, then kept while the cache has room)."""
        with self._lock:
            found = self._cached(b)
            if found is not None:
                return found
            gate = self._reading.setdefault(b, Lock())
        with gate:  # threads asking for one block at once (a loader's readers) read it once
            with self._lock:
                found = self._cached(b)
            if found is None:
                found = self._keep({b: self._read(b)})[0]
        with self._lock:
            self._reading.pop(b, None)
        return found

    def _cached(self, b: int) -> _Block | None:
        found = self._blocks.get(b)
        if found is not None:
            self._blocks.move_to_end(b)
        return found

    def _keep(self, read: dict[int, _Block]) -> list[_Block]:
        """Cache the blocks just read, slim (unless cached meanwhile); the cached versions."""
        with self._lock:
            for b, block in read.items():
                if b not in self._blocks:
                    self._blocks[b] = block.slim()
                    self.blocks_read += 1
            kept = [self._blocks[b] for b in read]
            while len(self._blocks) > self._capacity:
                self._blocks.popitem(last=False)
        return kept

    def _prefetch(self, blocks: list[int]) -> None:
        """Read the blocks of `blocks` not in the cache (as many as it holds) together."""
        with self._lock:
            missing = [b for b in blocks if b not in self._blocks][:self._capacity]
        for at in range(0, len(missing) if len(missing) > 1 else 0, _BLOCKS_AT_ONCE):
            part = missing[at:at + _BLOCKS_AT_ONCE]
            self._keep(dict(zip(part, self._read_many(part), strict=True)))

    def _column(self, name: str, start: int, stop: int) -> np.ndarray:
        try:
            return np.asarray(self.layout.array(f"manifest/{name}")[start:stop])
        except CORRUPT_CHUNK_ERRORS as exc:
            raise ManifestBlockError(f"{self.url}: manifest array {name!r}, samples {start}.."
                                     f"{stop - 1}: damaged: {redacted(exc)}") from exc

    def _rows(self, b: int) -> range:
        if not 0 <= b < self.num_blocks:
            raise ManifestBlockError(f"{self.url}: manifest block {b} is not in "
                                     f"0..{self.num_blocks - 1}")
        return range(b * self.block_size, min((b + 1) * self.block_size, self.num_samples))

    def _read(self, b: int) -> _Block:
        r = self._rows(b)
        offsets = self._column("path_offsets", r.start, r.stop + 1).astype(np.int64)
        self._check_offsets(b, offsets)
        data = self._column("path_bytes", int(offsets[0]), int(offsets[-1]))
        columns = {name: self._column(name, r.start, r.stop) for name in MANIFEST_COLUMNS}
        return self._verified(b, offsets, data, columns)

    def _read_many(self, blocks: list[int]) -> list[_Block]:
        """`_read` of each block, every column of every block fetched in one concurrent call
        (two: the path offsets say where the path bytes are); the first damaged block is
        named as `_read` names it."""
        try:
            ranges = [self._rows(b) for b in blocks]
            array = self.layout.array
            found = read_concurrently([(array("manifest/path_offsets"), slice(r.start, r.stop + 1))
                                       for r in ranges])
            offsets = [values.astype(np.int64) for values in found]
            for b, values in zip(blocks, offsets, strict=True):
                self._check_offsets(b, values)
            reads = [(array("manifest/path_bytes"), slice(int(o[0]), int(o[-1]))) for o in offsets]
            reads += [(array(f"manifest/{name}"), slice(r.start, r.stop))
                      for r in ranges for name in MANIFEST_COLUMNS]
            found = read_concurrently(reads)
        except CORRUPT_CHUNK_ERRORS:
            return [self._read(b) for b in blocks]  # names the culprit
        width = len(MANIFEST_COLUMNS)
        return [self._verified(b, offsets[i], found[i], dict(zip(
            MANIFEST_COLUMNS, found[len(blocks) + i * width:len(blocks) + (i + 1) * width],
            strict=True))) for i, b in enumerate(blocks)]

    def _check_offsets(self, b: int, offsets: np.ndarray) -> None:
        r = self._rows(b)
        if offsets.shape != (len(r) + 1,) or (np.diff(offsets) < 0).any() or offsets[0] < 0:
            raise ManifestBlockError(f"{self._where(b)}: the path offsets are damaged")

    def _where(self, b: int) -> str:
        r = self._rows(b)
        return f"{self.url}: manifest block {b} (samples {r.start}..{r.stop - 1})"

    def _verified(self, b: int, offsets: np.ndarray, data: np.ndarray,
                  columns: dict[str, np.ndarray]) -> _Block:
        """Block `b` from its raw columns, checked against its digest and its values."""
        a, where = self._rows(b).start, self._where(b)
        if data.size != offsets[-1] - offsets[0]:
            raise ManifestBlockError(f"{where}: the path offsets point past the path bytes")
        if _block_digest(b, offsets, data, columns) != int(self._digests[b, 0]):
            raise ManifestBlockError(f"{where}: the rows do not match the block's digest "
                                     "(edited or damaged on disk); run `dalidr inspect` on the "
                                     "store")
        if int(np.count_nonzero(columns["skipped"])) != int(self._digests[b, 1]):
            raise ManifestBlockError(f"{where}: the skip count does not match the skip marks")
        try:
            paths = PathList(data, offsets - offsets[0])
            unsafe = paths.unsafe_index()
            if unsafe is not None:
                raise ManifestBlockError(f"{where}: manifest path {a + unsafe} is not a "
                                         "relative path inside the data root; refusing the "
                                         "store")
            rows = Manifest(paths, columns["label"], columns["size"], columns["sha256"],
                            columns["image_hw"], columns["skipped"])
        except (ValueError, DatasetError) as exc:
            raise ManifestBlockError(f"{where}: malformed manifest rows: {exc}") from exc
        num_classes = self.layout.config.num_classes
        bad = np.flatnonzero((rows.labels < -1) | (rows.labels >= num_classes))
        if bad.size:
            raise ManifestBlockError(f"{where}: sample {a + int(bad[0])} has label "
                             f"{int(rows.labels[bad[0]])}, outside -1..{num_classes - 1}")
        return _Block(a, rows.paths, rows.labels.astype(np.int32),
                      rows.image_hw.astype(np.uint16), rows.skipped, rows.sizes, rows.hashes)

    # ------------------------------------------------------------------ gathering

    def _split(self, samples: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """(block, where in `samples`) per block `samples` touch, in block order."""
        if samples.size and (samples.min() < 0 or samples.max() >= self.num_samples):
            bad = int(samples[(samples < 0) | (samples >= self.num_samples)][0])
            raise StoreError(f"{self.url}: sample {bad} is not in 0..{self.num_samples - 1}")
        owners = samples // self.block_size
        order = np.argsort(owners, kind="stable")
        cuts = np.flatnonzero(np.diff(owners[order])) + 1
        return [(int(owners[where[0]]), where)
                for where in (np.split(order, cuts) if samples.size else [])]

    def _groups(self, samples: np.ndarray) -> list[tuple[_Block, np.ndarray, np.ndarray]]:
        """(block, where in `samples`, rows in the block) per block `samples` touch."""
        split = self._split(samples)
        self._prefetch([b for b, _ in split])
        blocks = [self.block(b) for b, _ in split]
        return [(block, where, samples[where] - block.start)
                for block, (_, where) in zip(blocks, split, strict=True)]

    def _fresh_groups(self, samples: np.ndarray) -> list[tuple[_Block, np.ndarray, np.ndarray]]:
        """`_groups` from blocks read now, hashes included (the cache keeps blocks slim)."""
        split = self._split(samples)
        blocks: list[_Block] = []
        for at in range(0, len(split), _BLOCKS_AT_ONCE):
            part = [b for b, _ in split[at:at + _BLOCKS_AT_ONCE]]
            read = self._read_many(part)
            self._keep(dict(zip(part, read, strict=True)))  # the slim rows serve later
            blocks += read
        return [(block, where, samples[where] - block.start)
                for block, (_, where) in zip(blocks, split, strict=True)]

    def gather(self, name: str, samples: np.ndarray | list[int]) -> np.ndarray:
        """Column `name` (label, image_hw, skipped, size, sha256) of `samples`, any shape
        (labels and image sizes as int64). The hashes are read afresh, blocks not kept."""
        index = np.asarray(samples, dtype=np.int64)
        flat = index.reshape(-1)
        groups = self._fresh_groups(flat) if name == "sha256" else self._groups(flat)
        take = _GATHER[name]
        if not groups:
            trailing = (2,) if name == "image_hw" else (32,) if name == "sha256" else ()
            return np.zeros(index.shape + trailing, np.int64)
        first = take(groups[0][0])
        out = np.empty((flat.size,) + first.shape[1:], _GATHERED_DTYPE.get(name, first.dtype))
        for block, where, rows in groups:
            out[where] = take(block)[rows]
        return out.reshape(index.shape + first.shape[1:])

    def paths(self, samples: np.ndarray | list[int]) -> list[str]:
        """The relative paths of `samples`, in order."""
        flat = np.asarray(samples, dtype=np.int64).reshape(-1)
        out: list[str] = [""] * flat.size
        for block, where, rows in self._groups(flat):
            for j, r in zip(where.tolist(), rows.tolist(), strict=True):
                out[j] = block.paths[r]
        return out

    def column(self, name: str) -> LazyColumn:
        """Column `name` as an array-like indexed by sample (`column[samples]`)."""
        return LazyColumn(self, name)

    def skipped_samples(self) -> np.ndarray:
        """Samples the teacher pass skipped as unreadable: only blocks that have any are read."""
        blocks = [self.block(int(b)) for b in np.flatnonzero(self._digests[:, 1])]
        found = [block.start + np.flatnonzero(block.skipped) for block in blocks]
        return np.concatenate(found).astype(np.int64) if found else np.zeros(0, np.int64)

    @property
    def has_skipped(self) -> bool:
        """Whether the teacher pass skipped any sample as unreadable."""
        return bool(self._digests[:, 1].any())

    def check_listing(self, listing: DatasetListing) -> str | None:
        """`Manifest.check_listing` read per block: the same paths and labels in the same
        order, the same sizes where the listing has them (skipped samples aside), the first
        difference named as it names it. The blocks are streamed, a few at a time, and not
        kept: checking a listing holds no more of the manifest than that. For a listing of the
        store's length (one of another length whose store skipped samples: `Manifest`)."""
        if len(listing) != self.num_samples:
            return (f"the store's manifest lists {self.num_samples} images, {listing.root} has "
                    f"{len(listing)}")
        for first in range(0, self.num_blocks, _BLOCKS_AT_ONCE):
            blocks = list(range(first, min(first + _BLOCKS_AT_ONCE, self.num_blocks)))
            for block in self._read_many(blocks):
                found = _listing_difference(block, listing)
                if found is not None:
                    return found
        return None

    def sampled_indices(self, count: int = SAMPLED_HASHES) -> np.ndarray:
        """The samples hashed at every start (`sampled_positions`), reading only their blocks."""
        def skipped(samples: np.ndarray) -> np.ndarray:
            # A block without skipped samples needs no read to say so.
            marks = np.zeros(samples.shape, bool)
            maybe = self._digests[samples // self.block_size, 1] > 0
            if maybe.any():
                marks[maybe] = self.gather("skipped", samples[maybe])
            return marks

        return sampled_positions(self.num_samples, skipped, count)


def _listing_difference(block: _Block, listing: DatasetListing) -> str | None:
    """The first sample of `block` whose path, label or size differs from `listing`'s, in
    `Manifest.check_listing`'s words; None if they agree."""
    a, n = block.start, len(block.paths)
    found: list[tuple[int, str]] = []
    first = block.paths.first_difference(listing.paths[a:a + n])
    if first is not None:
        found.append((first, f"path {block.paths[first]!r} in the store, "
                              f"{listing.paths[a + first]!r} in the data"))
    bad = np.flatnonzero(block.labels != listing.labels[a:a + n])
    if bad.size:
        j = int(bad[0])
        found.append((j, f"{block.paths[j]!r}: label {block.labels[j]} in the store, "
                         f"{listing.labels[a + j]} in the data "
                         f"({listing.source.describe(a + j)})"))
    if listing.sizes is not None:
        bad = np.flatnonzero((block.sizes != listing.sizes[a:a + n]) & ~block.skipped)
        if bad.size:
            j = int(bad[0])
            found.append((j, f"{block.paths[j]!r}: {block.sizes[j]} bytes in the store, "
                             f"{listing.sizes[a + j]} in the data "
                             f"({listing.source.describe(a + j)})"))
    if not found:
        return None
    j, what = min(found)
    return f"sample {a + j} differs: {what}"


class LazyColumn:
    """A manifest column indexed like an array (`column[samples]`) but read per block."""

    def __init__(self, view: ManifestView, name: str) -> None:
        self.view, self.name = view, name

    def __len__(self) -> int:
        return self.view.num_samples

    def __getitem__(self, samples: Any) -> np.ndarray:
        return self.view.gather(self.name, samples)


def digest_problems(layout: StoreLayout, manifest: Manifest) -> list[str]:
    """What `dalidr inspect` finds wrong with the manifest's block digests, given the manifest
    read whole (checked against the fingerprint): [] when they agree or the store has none."""
    try:
        view = ManifestView.open(layout)
    except StoreError as exc:
        return [f"manifest digests: {exc}"]
    if view is None:
        return []
    expected = manifest_digests(manifest, layout.config.block_size)
    bad = np.flatnonzero((expected != view._digests).any(axis=1))
    if not bad.size:
        return []
    r = layout.block_range(int(bad[0]))
    return [f"manifest digests: block {int(bad[0])} (samples {r.start}..{r.stop - 1}) does not "
            f"match the manifest ({bad.size} block(s) differ)"]

