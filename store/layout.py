"""The store's Zarr v3 layout: which arrays, their dtypes, chunks, shards and codecs.

    /zarr.json                attributes["dalidr_store"]: StoreConfig, num_samples,
                              fingerprint (of the manifest), digest (of these attributes)
    /manifest/...             per-sample path, label, byte size, SHA-256, image size, skip mark
    /manifest_digests         [num_blocks, 2]  uint64 per block of manifest rows: digest, skip
                              count (`store.manifest_view`: the manifest read per block)
    /records/<field>          [N, slots, ...]  one column per record field (store.encoding)
    /topk/classes             [N, slots, k]    uint16 teacher class indices, by decreasing prob
    /topk/prob_gaps           [N, slots, k]    uint8 sqrt-quantised probabilities, as gaps
    /skipped                  [N, slots]       uint8 skip marks (1: the teacher pass could not
                              make the view; `store.skip_marks`)
    /derived/confidence       [N, slots]       uint8 difficulty per view (`store.derived`),
    /derived/strength         [N, slots]       outside the block digest, 0 until written
    /commit_map               [num_blocks, 2 + groups]  uint64, one object per block: the
                              block's digest (0: not committed), one digest per slot group,
                              then the derived digest (0: derived arrays not written)

Two access patterns decide the cut. A writer produces a block of `block_size` samples with all
their slots at once; training reads one slot of every sample per epoch. So every data array is
sharded by (block, all slots): one shard file per block per array, written whole by exactly one
`write_block` call, never read-modified-written, which is what makes concurrent writers safe
without locks and a resumed store byte-identical (ImageNet: 8 files per block, ~2 500 in all,
against the paper's 1.28 M pickles). Inside a shard, chunks hold (block, `slot_group` slots):
an epoch decodes one chunk per block and array, reading about `slot_group` times the bytes it
uses (5x by default) through the shard index, never the whole store.

Codecs. Everything is Blosc with zstd at clevel 9 (zstd's strongest levels; deterministic, so a
rewritten block reproduces its bytes) followed by CRC32C, so a flipped bit fails loudly at
read time rather than decoding to plausible garbage. Before zstd, Blosc's shuffle regroups
bytes: byte-shuffle for coordinates and magnitudes (high bytes are nearly constant), bit-shuffle
for flip flags and class indices (values span few bits). Probability gaps are transposed to
(rank, sample, slot) first, so the top-1 gaps, the second gaps, ... each form one run of
similar small numbers. `Compression.LZMA` swaps the top-k compressor for numcodecs' LZMA (not in
the Zarr v3 spec: smaller, much slower to decode). The commit map is one uncompressed 8-byte
row per block, so two writers committing different blocks never touch the same object. It is
named `commit_map` (schema 2 called it `commit`, with one column less): `dalidr upgrade`
writes the new rows beside the old ones, so a store is a valid schema 2 store until its root
attributes are replaced.

Trust. A store may come from a stranger or a damaged disk. The attributes carry a SHA-256 of
themselves, the manifest's fingerprint covers every manifest column, and each (block, slot
group) has a digest in the commit map that the reader checks on every read: whatever changes
what is served fails loudly, naming the store and where. CRC32C alone would not catch a valid
chunk copied over another block's. Skip marks are a data array like the others, so a mark
added or removed fails the digests too. The derived arrays (difficulty, scored from a block
once it is committed: by the teacher pass, `dalidr difficulty` or `dalidr upgrade`) have their
own digest per block, the commit row's last column, checked only by
whoever reads them (`store.derived`), so a store without them still trains.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, BytesCodec, Crc32cCodec, TransposeCodec
from zarr.errors import ZarrUserWarning

from dalidr.errors import StoreError
from store.config import ATTRS_KEY, SCHEMA_VERSION, Compression, StoreConfig
from store.encoding import ColumnSpec, record_columns
from store.location import CORRUPT_CHUNK_ERRORS, StoreLocation, locate, redacted
from store.manifest import Manifest, write_manifest
from store.manifest_view import LazyColumn, ManifestView, write_manifest_digests
from store.validate import check_layout, checked_manifest

__all__ = [
    "StoreLayout",
    "create_layout",
    "open_layout",
    "root_group",
    "block_digest",
    "group_digest",
    "attrs_digest",
    "CLASSES",
    "PROB_GAPS",
    "SKIPPED",
    "DERIVED",
    "COMMIT",
    "CORRUPT_CHUNK_ERRORS",
]

CLASSES = "topk/classes"
PROB_GAPS = "topk/prob_gaps"
SKIPPED = "skipped"
# The difficulty arrays, outside the block digest, sealed by the commit row's last column.
DERIVED = ("derived/confidence", "derived/strength")
COMMIT = "commit_map"
_BIT_SHUFFLED = {"flip", "p_flip"}


def _blosc(shuffle: BloscShuffle) -> BloscCodec:
    return BloscCodec(cname="zstd", clevel=9, shuffle=shuffle, blocksize=0)


def _topk_compressor(config: StoreConfig, shuffle: BloscShuffle) -> Any:
    if config.compression is Compression.LZMA:
        from zarr.codecs.numcodecs import LZMA

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ZarrUserWarning)
            return LZMA(preset=9 | 0x80000000)  # preset 9 | lzma.PRESET_EXTREME
    return _blosc(shuffle)


def _data_arrays(config: StoreConfig) -> dict[str, tuple[np.dtype, tuple[int, ...], list, list]]:
    """name -> (dtype, per-record shape, filters, compressors) of every [N, slots, ...] array."""
    arrays: dict[str, tuple[np.dtype, tuple[int, ...], list, list]] = {}
    for spec in record_columns(config.recipe):
        shuffle = BloscShuffle.bitshuffle if spec.name in _BIT_SHUFFLED else BloscShuffle.shuffle
        arrays[f"records/{spec.name}"] = (spec.dtype, spec.shape, [], [_blosc(shuffle)])
    bits = BloscShuffle.bitshuffle
    arrays[CLASSES] = (np.dtype("<u2"), (config.k,), [], [_topk_compressor(config, bits)])
    arrays[PROB_GAPS] = (np.dtype("u1"), (config.k,), [TransposeCodec(order=(2, 0, 1))],
                         [_topk_compressor(config, bits)])
    arrays[SKIPPED] = (np.dtype("u1"), (), [], [_blosc(bits)])
    return arrays


def _derived_arrays() -> dict[str, tuple[np.dtype, tuple[int, ...], list, list]]:
    """name -> the same description, of the difficulty arrays (chunked like `skipped`)."""
    return {name: (np.dtype("u1"), (), [], [_blosc(BloscShuffle.bitshuffle)])
            for name in DERIVED}


def create_data_array(group: zarr.Group, name: str, config: StoreConfig, num_samples: int,
                      description: tuple[np.dtype, tuple[int, ...], list, list]) -> None:
    """Create one [N, slots, ...] array: one shard per block, chunks of `slot_group` slots."""
    dtype, shape, filters, compressors = description
    b, slot_extent = config.block_size, config.num_groups * config.slot_group
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ZarrUserWarning)
        group.create_array(
            name, shape=(num_samples, config.slots) + shape, dtype=dtype,
            chunks=(b, config.slot_group) + shape, shards=(b, slot_extent) + shape,
            filters=filters, serializer=BytesCodec(), compressors=compressors + [Crc32cCodec()],
            fill_value=0, dimension_names=("sample", "slot") + ("field",) * len(shape),
        )


def create_commit_map(group: zarr.Group, config: StoreConfig, num_samples: int) -> None:
    """The commit map: one uncompressed row (one object) per block."""
    group.create_array(COMMIT, shape=(-(-num_samples // config.block_size), 2 + config.num_groups),
                       dtype="<u8", chunks=(1, 2 + config.num_groups), compressors=None,
                       fill_value=0, dimension_names=("block", "digest"))


@dataclass(frozen=True, eq=False)
class StoreLayout:
    """An opened store: its config, its arrays and where each block's objects live."""

    location: StoreLocation
    group: zarr.Group
    config: StoreConfig
    num_samples: int
    fingerprint: str

    @property
    def url(self) -> str:
        return self.location.url

    @property
    def num_blocks(self) -> int:
        return -(-self.num_samples // self.config.block_size)

    def block_range(self, block: int) -> range:
        """The samples of one block."""
        if not 0 <= block < self.num_blocks:
            raise StoreError(f"{self.url}: block {block} is not in 0..{self.num_blocks - 1}")
        start = block * self.config.block_size
        return range(start, min(start + self.config.block_size, self.num_samples))

    @cached_property
    def columns(self) -> list[ColumnSpec]:
        return record_columns(self.config.recipe)

    @cached_property
    def data_names(self) -> list[str]:
        """Names of the [N, slots, ...] arrays, in the order a block digest covers them."""
        return list(_data_arrays(self.config))

    @cached_property
    def _arrays(self) -> dict[str, zarr.Array]:
        return {}

    def array(self, name: str) -> zarr.Array:
        """An array of the store, its metadata read once (it never changes after creation)."""
        if name not in self._arrays:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ZarrUserWarning)
                    # zarr skips chunks equal to the fill value, but a committed block must
                    # own every shard (a zero column is data, and the reader checks for it).
                    node = self.group[name]
                    if not isinstance(node, zarr.Array):
                        raise KeyError(name)
                    array = node.with_config({"write_empty_chunks": True})
                    self._arrays[name] = array
            except KeyError as exc:
                raise StoreError(f"{self.url}: array {name!r} is missing") from exc
        return self._arrays[name]

    def shard_key(self, name: str, block: int) -> str:
        """The object key of one block's shard of a data array (or its commit entry)."""
        array = self.array(name)
        coords = (block,) + (0,) * (array.ndim - 1)
        return f"{name}/{array.metadata.encode_chunk_key(coords)}"

    def commit_rows(self) -> np.ndarray:
        """The commit map, [num_blocks, 2 + num_groups]: block digest, group digests, then the
        derived digest."""
        try:
            return np.asarray(self.array(COMMIT)[...], dtype=np.uint64)
        except CORRUPT_CHUNK_ERRORS as exc:
            raise StoreError(f"{self.url}: the commit map is corrupt: {redacted(exc)}; run "
                             "`dalidr inspect` on the store") from exc

    def commits(self) -> np.ndarray:
        """Per block its digest, 0 where the block is not complete."""
        return self.commit_rows()[:, 0]

    @cached_property
    def manifest(self) -> Manifest:
        return checked_manifest(self)

    @cached_property
    def manifest_view(self) -> ManifestView | None:
        """The manifest read per block (`store.manifest_view`); None for a store without the
        manifest's block digests (made before they existed: `dalidr upgrade` adds them)."""
        return ManifestView.open(self)

    @cached_property
    def image_hw(self) -> np.ndarray:
        return self.manifest.image_hw

    @cached_property
    def image_sizes(self) -> np.ndarray | LazyColumn:
        """(height, width) indexed by sample, for decoding what a reader reads: the manifest's
        if it was read whole, else read per block through the manifest view."""
        view = None if "manifest" in self.__dict__ else self.manifest_view
        return self.image_hw if view is None else view.column("image_hw")


def create_layout(url: str, manifest: Manifest, config: StoreConfig,
                  overwrite: bool = False) -> StoreLayout:
    """Create an empty store (metadata, manifest, empty arrays); StoreError if one exists."""
    location = locate(url, read_only=False)
    if not overwrite and location.exists("zarr.json"):
        raise StoreError(f"{url}: a store already exists; open it to resume, or overwrite it")
    store_attrs = {**config.to_attrs(), "num_samples": len(manifest),
                   "fingerprint": manifest.fingerprint}
    attrs: dict[str, Any] = {ATTRS_KEY: {**store_attrs, "digest": attrs_digest(store_attrs)}}
    group = zarr.open_group(location.store, mode="w" if overwrite else "w-", attributes=attrs)
    write_manifest(group, manifest, config.block_size)
    write_manifest_digests(group, manifest, config.block_size)
    arrays = {**_data_arrays(config), **_derived_arrays()}
    for name, description in arrays.items():
        create_data_array(group, name, config, len(manifest), description)
    create_commit_map(group, config, len(manifest))
    layout = open_layout(url, read_only=False)
    # The manifest just written is the one in hand: a writer need not read it back (O(N)).
    layout.__dict__["manifest"] = manifest
    return layout


def root_group(url: str, location: StoreLocation, read_only: bool = True
               ) -> tuple[zarr.Group, Any]:
    """The store's root group and its dalidr attributes (unchecked: any JSON value, or None);
    StoreError if there is no store or its zarr.json cannot be read."""
    if not location.exists("zarr.json"):
        raise StoreError(f"{url}: no reinforcement store here (no zarr.json)")
    try:
        group = zarr.open_group(location.store, mode="r" if read_only else "r+")
        return group, group.attrs.get(ATTRS_KEY)
    except (*CORRUPT_CHUNK_ERRORS, FileNotFoundError) as exc:
        raise StoreError(f"{url}: cannot open the store's root group (zarr.json): "
                         f"{redacted(exc)}") from exc


def open_layout(url: str, read_only: bool = True) -> StoreLayout:
    """Open an existing store and check its schema; StoreError naming what is wrong."""
    location = locate(url, read_only=read_only)
    group, attrs = root_group(url, location, read_only)
    config, num_samples, fingerprint = split_attrs(attrs, url)
    layout = StoreLayout(location, group, config, num_samples, fingerprint)
    check_layout(layout)  # every array's metadata against the schema and the objects
    for name, (dtype, shape, _, _) in {**_data_arrays(config), **_derived_arrays()}.items():
        array = layout.array(name)
        expected = (layout.num_samples, config.slots) + shape
        if array.shape != expected or array.dtype != dtype:
            raise StoreError(f"{url}: array {name!r} is {array.dtype}{list(array.shape)}, "
                             f"the schema needs {dtype}{list(expected)}")
    expected = (layout.num_blocks, 2 + config.num_groups)
    if layout.array(COMMIT).shape != expected or layout.array(COMMIT).dtype != np.uint64:
        raise StoreError(f"{url}: array {COMMIT!r} is {layout.array(COMMIT).dtype}"
                         f"{list(layout.array(COMMIT).shape)}, expected uint64{list(expected)}")
    return layout


def split_attrs(attrs: Any, url: str) -> tuple[StoreConfig, int, str]:
    """(config, num_samples, fingerprint) from the root attributes, after checking their
    digest; StoreError naming the store if they are missing, edited or damaged."""
    if not isinstance(attrs, dict):
        raise StoreError(f"{url} is not a dalidr reinforcement store (no {ATTRS_KEY!r} "
                         "attributes)")
    attrs = dict(attrs)
    digest = attrs.pop("digest", None)
    config = StoreConfig.from_attrs(
        {k: v for k, v in attrs.items() if k not in ("num_samples", "fingerprint")}, url)
    num_samples, fingerprint = attrs.get("num_samples"), attrs.get("fingerprint")
    if (not isinstance(num_samples, int) or isinstance(num_samples, bool)
            or not 1 <= num_samples <= 1 << 40 or not isinstance(fingerprint, str)):
        raise StoreError(f"{url}: store attributes lack a valid num_samples or fingerprint")
    if digest != attrs_digest(attrs):
        raise StoreError(f"{url}: the store's attributes do not match their digest: they were "
                         "edited or damaged (recipe, teacher, slots, k, seed, conventions or the "
                         "manifest fingerprint); the store cannot be trusted")
    return config, num_samples, fingerprint


def attrs_digest(attrs: dict[str, Any], version: int = SCHEMA_VERSION) -> str:
    """SHA-256 of the store attributes (without `digest`), as canonical JSON, salted with the
    schema version (`version`: an older schema's, for `dalidr upgrade`)."""
    text = json.dumps(attrs, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(f"dalidr-attrs-v{version}:".encode() + text.encode()).hexdigest()


def group_digest(arrays: dict[str, np.ndarray], block: int, group: int) -> int:
    """The commit map's digest of one (block, slot group): the block and group indices and the
    group's slice of every data array, so a valid chunk copied from elsewhere fails it."""
    h = hashlib.blake2b(digest_size=8, person=b"dalidr-group")
    h.update(np.array([block, group], "<i8").tobytes())
    for name in sorted(arrays):
        values = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{values.dtype.str}:{values.shape}".encode())
        h.update(values.tobytes())
    return int.from_bytes(h.digest(), "little") or 1


def block_digest(arrays: dict[str, np.ndarray]) -> int:
    """The commit entry of a block: a 64-bit BLAKE2b of its stored arrays (never 0)."""
    h = hashlib.blake2b(digest_size=8)
    for name in sorted(arrays):
        values = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{values.dtype.str}:{values.shape}".encode())
        h.update(values.tobytes())
    return int.from_bytes(h.digest(), "little") or 1
