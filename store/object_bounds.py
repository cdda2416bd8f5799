"""How many bytes each object of a store may hold, from the metadata of the array it belongs to.

A store's objects are read whole (metadata, unsharded chunks) or by byte ranges that a shard's
index gives (chunks inside a shard), so an object far larger than its array's metadata allows,
say a chunk turned into a 3 GB sparse file, would make a read allocate what the file holds. The
guarded stores of `store.guarded` look up the bound of every key before reading it, and refuse an
object past its bound as damage, before a byte of it is read.

- `zarr.json` (and zarr v2's metadata names): `METADATA_BOUND`, 1 MiB; a store's largest, the
  root group's attributes, is a few KiB.
- A chunk of an array: its chunk shape times the item size, through the array's codecs: `bytes`
  and `transpose` keep the size, `crc32c` adds 4 bytes, any other codec (a compressor) may grow
  incompressible input by `raw / 8 + 1 KiB` (Blosc adds at most 32 bytes, zstd `raw / 256 + 64`,
  xz a few dozen bytes per 64 KiB), and a `sharding_indexed` codec's object holds every inner
  chunk at its own bound plus the index (16 bytes per inner chunk, through the index codecs).
  An uncompressed array's chunk (the commit map's rows) therefore has exactly its raw size.
- A key under no array whose metadata gives a bound (unparseable metadata, an unknown data type
  or chunk grid): `METADATA_BOUND` (zarr reads such a key only if its metadata opened).

Trade-off: the bound is an upper limit, not the exact size, so it stops runaway reads and forged
sizes but not damage within it (the checksums and commit digests catch that). Computed once per
array, from the metadata the store already read; a lookup is a dict access per read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["METADATA_BOUND", "METADATA_NAMES", "ObjectBounds", "array_chunk_bound"]

METADATA_BOUND = 1 << 20
# Object names zarr reads as metadata (v3, and the v2 names zarr probes for).
METADATA_NAMES = frozenset({"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"})
_SIZE_KEEPING = frozenset({"bytes", "transpose"})
_CHECKSUM_BYTES = {"crc32c": 4}
_DEFAULT_INDEX_CODECS = [{"name": "bytes"}, {"name": "crc32c"}]


def _itemsize(data_type: Any) -> int | None:
    """Bytes per element of a zarr v3 data type, None if it has no fixed size."""
    if isinstance(data_type, dict):
        config = data_type.get("configuration") or {}
        length = config.get("length_bytes")
        return length if isinstance(length, int) and length >= 0 else None
    if not isinstance(data_type, str):
        return None
    if data_type.startswith("r") and data_type[1:].isdigit():
        return int(data_type[1:]) // 8
    try:
        dtype = np.dtype(data_type)
    except TypeError:
        return None
    return None if dtype.hasobject or dtype.itemsize == 0 else dtype.itemsize


def _codec_name(codec: Any) -> str:
    if isinstance(codec, str):
        return codec
    if isinstance(codec, dict) and isinstance(codec.get("name"), str):
        return codec["name"]
    raise ValueError(f"a codec without a name: {codec!r}")


def _shape(values: Any) -> list[int]:
    if not isinstance(values, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"not a shape: {values!r}")
    return values


def _codecs_bound(shape: list[int], itemsize: int, codecs: Any) -> int:
    """Most bytes a chunk of `shape` takes after `codecs` (see the module docstring)."""
    if not isinstance(codecs, list):
        raise ValueError(f"codecs are not a list: {codecs!r}")
    size = math.prod(shape) * itemsize
    for codec in codecs:
        name = _codec_name(codec)
        if name == "sharding_indexed":
            config = codec["configuration"]
            inner = _shape(config["chunk_shape"])
            if len(inner) != len(shape) or 0 in inner:
                raise ValueError(f"inner chunks {inner} do not fit shards {shape}")
            count = math.prod(-(-s // c) for s, c in zip(shape, inner, strict=True))
            index = _codecs_bound([count, 2], 8, config.get("index_codecs",
                                                            _DEFAULT_INDEX_CODECS))
            size = count * _codecs_bound(inner, itemsize, config.get("codecs", [])) + index
        elif name in _SIZE_KEEPING:
            continue
        elif name in _CHECKSUM_BYTES:
            size += _CHECKSUM_BYTES[name]
        else:
            size += size // 8 + 1024
    return size


def array_chunk_bound(metadata: dict[str, Any]) -> int | None:
    """Most bytes one stored object (chunk or shard) of an array with this v3 metadata may
    hold; None if the metadata does not say (not an array, unknown data type or grid)."""
    try:
        if metadata.get("node_type") != "array" or metadata.get("zarr_format") != 3:
            return None
        grid = metadata["chunk_grid"]
        if grid.get("name") != "regular":
            return None
        shape = _shape(grid["configuration"]["chunk_shape"])
        itemsize = _itemsize(metadata["data_type"])
        if itemsize is None:
            return None
        return _codecs_bound(shape, itemsize, metadata.get("codecs", [{"name": "bytes"}]))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


class ObjectBounds:
    """Per key, the most bytes its object may hold; array bounds cached by array path.

    `learn(key, data)` is called with every metadata object the store reads, so a chunk's
    bound is known before zarr reads the chunk; `bound(key, read_metadata)` falls back to
    reading the array's metadata (through `read_metadata`, itself bounded) for a key whose
    array was not opened through this store."""

    def __init__(self) -> None:
        self._arrays: dict[str, int | None] = {}  # node path -> chunk bound (None: none)
        self._absent: set[str] = set()  # paths known to hold no node

    @staticmethod
    def is_metadata(key: str) -> bool:
        return key.rsplit("/", 1)[-1] in METADATA_NAMES

    def learn(self, key: str, data: bytes) -> None:
        """Remember the chunk bound of the array whose metadata `key` holds `data`."""
        if key.rsplit("/", 1)[-1] != "zarr.json":
            return
        try:
            metadata = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            metadata = None
        prefix = key[:-len("zarr.json")].rstrip("/")
        self._absent.discard(prefix)
        self._arrays[prefix] = array_chunk_bound(metadata) if isinstance(metadata, dict) \
            else None

    def forget(self, key: str) -> None:
        """Drop what is known about `key`'s array (its metadata was rewritten or deleted)."""
        if self.is_metadata(key):
            prefix = key.rsplit("/", 1)[0] if "/" in key else ""
            self._arrays.pop(prefix, None)
            self._absent.discard(prefix)

    def pending(self, key: str) -> list[str]:
        """Metadata keys to read, nearest first, before `bound(key)` is known: empty in the
        usual case (zarr opened the key's array through this store, or nothing can help)."""
        if self.is_metadata(key):
            return []
        prefixes = _prefixes(key)
        if any(self._arrays.get(prefix) is not None for prefix in prefixes):
            return []
        wanted = []
        for prefix in prefixes:  # arrays have no children: the nearest node owns the key
            if prefix in self._arrays:
                break
            if prefix not in self._absent:
                wanted.append(f"{prefix}/zarr.json" if prefix else "zarr.json")
        return wanted

    def found(self, meta_key: str, data: bytes | None) -> None:
        """What reading a metadata key from `pending` gave (None: no such object)."""
        if data is None:
            self._absent.add(meta_key[:-len("zarr.json")].rstrip("/"))
        else:
            self.learn(meta_key, data)

    def known(self, key: str) -> int:
        """The bound of `key` from what is known (`METADATA_BOUND` where nothing gives one)."""
        if self.is_metadata(key):
            return METADATA_BOUND
        prefixes = _prefixes(key)
        for prefix in prefixes:
            if self._arrays.get(prefix) is not None:
                return self._arrays[prefix]  # type: ignore[return-value]
        return METADATA_BOUND  # the nearest node is a group or unparseable, or there is none

    def bound(self, key: str, read_metadata: Callable[[str], bytes | None]) -> int:
        """The most bytes the object at `key` may hold, reading metadata where needed."""
        for meta_key in self.pending(key):
            data = read_metadata(meta_key)
            self.found(meta_key, data)
            if data is not None:
                break
        return self.known(key)


def _prefixes(key: str) -> list[str]:
    """The folders of `key`, nearest first, down to the root ("")."""
    parts = key.split("/")
    return ["/".join(parts[:depth]) for depth in range(len(parts) - 1, -1, -1)]
