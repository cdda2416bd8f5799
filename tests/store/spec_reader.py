"""A reader of the reinforcement store written from `docs/store-format.md` alone.

It stands for a foreign reader: it imports neither `dalidr` nor `store`, only `zarr`, `numpy`,
`hashlib` and `json` (and the standard library), and every rule it applies is a numbered rule of
the specification (cited as "spec 4.2" and so on). `tests/store/test_spec.py` reads a store made
by `dalidr reinforce` with it and compares what it decodes with dalidr's own `StoreReader`; if
the two disagree, the specification is wrong (the code is the truth), not this file.

Trade-off: written for clarity, not speed (whole arrays are read where a real reader would read
one chunk); `read_view` shows the one-chunk access of the spec's worked example.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

__all__ = ["SpecStore", "canonical_json", "crc32c", "open_spec_store", "read_shard_index",
           "derived_digest"]

ATTRS_KEY = "dalidr_store"  # spec 3
SCHEMA_VERSION = 3  # spec 11
COORD_SCALE = 65535  # spec 6.2
ESCAPE = 1 << 16  # spec 6.2
CONVENTIONS = {"decode_convention": "pil-no-exif", "op_set": "torchvision-ra14-pil-equalize"}
# spec 6.2: coordinate columns and what their four numbers are fractions of.
EXTENTS = {"crop": "source", "p_crop": "partner", "erase": "output", "p_erase": "output",
           "box": "output"}


class SpecError(Exception):
    """The store breaks a rule of the specification."""


def canonical_json(value: Any) -> str:
    """spec 3.2: the canonical JSON the attribute digest is taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _shape_text(shape: tuple[int, ...]) -> str:
    """spec 5.2: a shape as Python prints a tuple: '(5, 2, 4)', one dimension '(5,)'."""
    if len(shape) == 1:
        return f"({shape[0]},)"
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def _digest_arrays(h: Any, arrays: dict[str, np.ndarray]) -> None:
    """spec 5.2: every data array by name in byte order: header, then C-order bytes."""
    for name in sorted(arrays, key=lambda n: n.encode()):
        values = np.ascontiguousarray(arrays[name])
        header = f"{name}:{values.dtype.str}:{_shape_text(values.shape)}"
        h.update(header.encode("utf-8"))
        h.update(values.tobytes())


def _to_u64(digest: bytes) -> int:
    return int.from_bytes(digest, "little") or 1  # spec 5.2: never 0


def block_digest(arrays: dict[str, np.ndarray]) -> int:
    """spec 5.2: BLAKE2b-64, no key, no personalisation."""
    h = hashlib.blake2b(digest_size=8)
    _digest_arrays(h, arrays)
    return _to_u64(h.digest())


def group_digest(arrays: dict[str, np.ndarray], block: int, group: int) -> int:
    """spec 5.2: BLAKE2b-64 personalised 'dalidr-group', led by (block, group) as two <i8."""
    h = hashlib.blake2b(digest_size=8, person=b"dalidr-group")
    h.update(np.array([block, group], dtype="<i8").tobytes())
    _digest_arrays(h, arrays)
    return _to_u64(h.digest())


def derived_digest(block: int, confidence: np.ndarray, strength: np.ndarray) -> int:
    """spec 5.4: BLAKE2b-64 personalised 'dalidr-derived', led by the block as one <i8."""
    h = hashlib.blake2b(digest_size=8, person=b"dalidr-derived")
    h.update(np.array([block], dtype="<i8").tobytes())
    for name, values in (("derived/confidence", confidence), ("derived/strength", strength)):
        values = np.ascontiguousarray(values)
        h.update(f"{name}:{values.dtype.str}:{_shape_text(values.shape)}".encode())
        h.update(values.tobytes())
    return _to_u64(h.digest())


def _crc32c_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table[i] = c
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as the zarr v3 `crc32c` codec appends it (little-endian)."""
    c = 0xFFFFFFFF
    for byte in data:
        c = int(_CRC_TABLE[(c ^ byte) & 0xFF]) ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def read_shard_index(shard: bytes, chunks: int) -> np.ndarray:
    """spec 4.3: the index at the end of a shard, [chunks, 2] (offset, nbytes), CRC checked."""
    size = 16 * chunks
    index, checksum = shard[-size - 4:-4], shard[-4:]
    if crc32c(index) != int.from_bytes(checksum, "little"):
        raise SpecError("shard index fails its CRC32C")
    return np.frombuffer(index, dtype="<u8").reshape(chunks, 2)


def record_fields(recipe: dict[str, Any]) -> list[tuple[str, str, tuple[int, ...]]]:
    """spec 6.1: (field, record dtype, per-record shape), in record order."""
    n = max(int(recipe["ra_num_ops"]), 1)
    has_ra_re = recipe["ra_num_ops"] > 0 or recipe["erase_prob"] > 0
    has_mix = recipe["mix_prob"] > 0

    def view(prefix: str) -> list[tuple[str, str, tuple[int, ...]]]:
        fields = [(prefix + "crop", "<u2", (4,)), (prefix + "flip", "u1", ())]
        if has_ra_re:
            fields += [(prefix + "ops", "u1", (n,)), (prefix + "mags", "i1", (n,)),
                       (prefix + "erase", "<u2", (4,))]
        return fields

    fields = view("")
    if has_mix:
        fields += [("mix", "u1", ()), ("partner", "<u4", ()), ("lam", "<u2", ()),
                   ("box", "<u2", (4,))]
        fields += view("p_")
    return fields


def record_dtype(recipe: dict[str, Any]) -> np.dtype:
    """spec 6.1: the packed structured dtype of one record."""
    return np.dtype([(name, dtype, shape) if shape else (name, dtype)
                     for name, dtype, shape in record_fields(recipe)])


@dataclass(frozen=True)
class Manifest:
    """spec 7: the manifest's columns as stored."""

    paths: list[str]
    path_bytes: np.ndarray
    path_offsets: np.ndarray
    label: np.ndarray
    size: np.ndarray
    sha256: np.ndarray
    image_hw: np.ndarray
    skipped: np.ndarray

    def fingerprint(self) -> str:
        """spec 7.2."""
        n = len(self.paths)
        paths = hashlib.sha256(np.array(n, dtype="<i8").tobytes())
        paths.update(self.path_offsets.astype("<i8").tobytes())
        paths.update(self.path_bytes.astype("u1").tobytes())
        h = hashlib.sha256(b"dalidr-manifest-v2")
        h.update(paths.digest())
        for part in (self.label.astype("<i8"), self.size.astype("<i8"),
                     self.sha256.astype("u1"), self.image_hw.astype("<i8"),
                     (self.skipped != 0).astype("u1")):
            h.update(np.ascontiguousarray(part).tobytes())
        return h.hexdigest()


@dataclass(frozen=True, eq=False)
class SpecStore:
    """A store opened and checked by the specification's rules."""

    path: Path
    group: zarr.Group
    attrs: dict[str, Any]
    manifest: Manifest
    commit: np.ndarray

    # ------------------------------------------------------------- sizes (spec 3.1, 4.1)

    @property
    def n(self) -> int:
        return int(self.attrs["num_samples"])

    @property
    def slots(self) -> int:
        return int(self.attrs["slots"])

    @property
    def block_size(self) -> int:
        return int(self.attrs["block_size"])

    @property
    def slot_group(self) -> int:
        return int(self.attrs["slot_group"])

    @property
    def num_blocks(self) -> int:
        return -(-self.n // self.block_size)

    @property
    def num_groups(self) -> int:
        return -(-self.slots // self.slot_group)

    def block_rows(self, block: int) -> range:
        return range(block * self.block_size, min((block + 1) * self.block_size, self.n))

    def group_slots(self, group: int) -> range:
        return range(group * self.slot_group, min((group + 1) * self.slot_group, self.slots))

    @property
    def recipe(self) -> dict[str, Any]:
        return dict(self.attrs["recipe"])

    def data_names(self) -> list[str]:
        """spec 4.1: records/<field> for every record field, the top-k arrays, the skip marks."""
        return [f"records/{name}" for name, _, _ in record_fields(self.recipe)] + [
            "topk/classes", "topk/prob_gaps", "skipped"]

    def committed(self) -> np.ndarray:
        """spec 5.1: a block is committed when the first entry of its row is not 0."""
        return self.commit[:, 0] != 0

    def read_derived(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """spec 4.4 and 5.4: one committed block's (confidence, strength), checked against the
        last entry of its commit row (0: not written)."""
        if not self.committed()[block] or self.commit[block, -1] == 0:
            raise SpecError(f"block {block} has no derived arrays")
        rows = self.block_rows(block)
        confidence, strength = (self.raw(f"derived/{name}", rows, range(self.slots))
                                for name in ("confidence", "strength"))
        if derived_digest(block, confidence, strength) != int(self.commit[block, -1]):
            raise SpecError(f"block {block}: the derived arrays do not match their digest")
        return confidence, strength

    # ------------------------------------------------------------- raw data (spec 4, 5)

    def raw(self, name: str, rows: range, slots: range) -> np.ndarray:
        return np.asarray(self.group[name][rows.start:rows.stop, slots.start:slots.stop])

    def block_arrays(self, block: int, slots: range | None = None) -> dict[str, np.ndarray]:
        """Every data array's slice of one block (all slots unless `slots`)."""
        slots = range(self.slots) if slots is None else slots
        return {name: self.raw(name, self.block_rows(block), slots) for name in self.data_names()}

    def verify_block(self, block: int) -> None:
        """spec 5.2: the block digest and every slot group's digest against the commit row."""
        if not self.committed()[block]:
            raise SpecError(f"block {block} is not committed")
        arrays = self.block_arrays(block)
        if block_digest(arrays) != int(self.commit[block, 0]):
            raise SpecError(f"block {block} does not match its block digest")
        for group in range(self.num_groups):
            s = self.group_slots(group)
            part = {name: values[:, s.start:s.stop] for name, values in arrays.items()}
            if group_digest(part, block, group) != int(self.commit[block, 1 + group]):
                raise SpecError(f"block {block}, slot group {group} does not match its digest")

    # ------------------------------------------------------------- decoding (spec 6, 8)

    def decode_records(self, columns: dict[str, np.ndarray], samples: np.ndarray) -> np.ndarray:
        """spec 6.2: stored columns (leading shape S) of the views of `samples` -> records."""
        recipe = self.recipe
        first = columns[record_fields(recipe)[0][0]]
        out = np.zeros(first.shape[:-1], dtype=record_dtype(recipe))
        samples = np.broadcast_to(np.asarray(samples, dtype=np.int64).reshape(
            np.shape(samples) + (1,) * (out.ndim - np.ndim(samples))), out.shape)
        for name, _, _ in record_fields(recipe):  # plain columns: stored as they are
            if name not in EXTENTS:
                out[name] = columns[name]
        hw = self.manifest.image_hw.astype(np.float64)
        for name, _, _ in record_fields(recipe):
            if name not in EXTENTS:
                continue
            if EXTENTS[name] == "output":
                extent = np.full(out.shape + (4,), float(recipe["output_size"]))
            else:
                owner = samples if EXTENTS[name] == "source" else out["partner"].astype(np.int64)
                extent = hw[owner][..., [0, 1, 0, 1]]  # (y, x, h, w) against (H, W, H, W)
            code = columns[name].astype(np.int64)
            value = np.where(code >= ESCAPE, code - ESCAPE,
                             np.rint(code.astype(np.float64) / extent * COORD_SCALE))
            if (value < 0).any() or (value > COORD_SCALE).any():
                raise SpecError(f"records/{name} decodes outside 0..65535")
            out[name] = value.astype(np.uint16)
        return out

    def decode_probs(self, gaps: np.ndarray) -> np.ndarray:
        """spec 8.2: float32 probabilities from the stored gaps."""
        levels = int(self.attrs["prob_levels"])
        q = levels - np.cumsum(gaps.astype(np.int32), axis=-1)
        if q.size and q.min() < 1:
            raise SpecError("probability gaps sum past the quantisation levels")
        return (q.astype(np.float32) / np.float32(levels)) ** 2

    def read_view(self, sample: int, slot: int) -> tuple[np.void, np.ndarray, np.ndarray]:
        """spec 12, the worked example: one (sample, slot), reading one chunk per array."""
        block, group = sample // self.block_size, slot // self.slot_group
        if not self.committed()[block]:
            raise SpecError(f"block {block} is not committed")
        rows, slots = self.block_rows(block), self.group_slots(group)
        chunk = {name: self.raw(name, rows, slots) for name in self.data_names()}
        if group_digest(chunk, block, group) != int(self.commit[block, 1 + group]):
            raise SpecError(f"block {block}, slot group {group} does not match its digest")
        i, j = sample - rows.start, slot - slots.start
        columns = {name: chunk[f"records/{name}"][i:i + 1, j]
                   for name, _, _ in record_fields(self.recipe)}
        record = self.decode_records(columns, np.array([sample]))[0]
        classes = chunk["topk/classes"][i, j].astype(np.int64)
        return record, classes, self.decode_probs(chunk["topk/prob_gaps"][i, j])


def _read_manifest(group: zarr.Group) -> Manifest:
    """spec 7.1."""
    m = {name: np.asarray(group[f"manifest/{name}"][...]) for name in (
        "path_bytes", "path_offsets", "label", "size", "sha256", "image_hw", "skipped")}
    raw, offsets = m["path_bytes"].tobytes(), m["path_offsets"]
    if offsets[0] != 0 or offsets[-1] != len(raw) or (np.diff(offsets) < 0).any():
        raise SpecError("manifest/path_offsets do not index manifest/path_bytes")
    paths = [raw[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(),
                                                       offsets[1:].tolist(), strict=True)]
    for path in paths:  # spec 7.1: relative, inside the data root
        parts = path.split("/")
        if not path or path.startswith("/") or ".." in parts or "\x00" in path:
            raise SpecError(f"manifest path {path!r} is not a safe relative path")
    return Manifest(paths, m["path_bytes"], offsets, m["label"], m["size"], m["sha256"],
                    m["image_hw"], m["skipped"])


def open_spec_store(path: str | Path) -> SpecStore:
    """spec 3 and 11: open, check the version, the conventions and the attribute digest, read
    and fingerprint the manifest, read the commit map."""
    path = Path(path)
    root = json.loads((path / "zarr.json").read_text())  # spec 2: a zarr v3 group
    if root.get("zarr_format") != 3 or root.get("node_type") != "group":
        raise SpecError(f"{path}: not a zarr v3 group")
    attrs = root.get("attributes", {}).get(ATTRS_KEY)
    if not isinstance(attrs, dict) or "schema_version" not in attrs:
        raise SpecError(f"{path}: not a dalidr reinforcement store")
    if attrs["schema_version"] != SCHEMA_VERSION:
        raise SpecError(f"{path}: schema version {attrs['schema_version']}, this reads 3")
    for key, value in CONVENTIONS.items():
        if attrs.get(key) != value:
            raise SpecError(f"{path}: {key} {attrs.get(key)!r} is not implemented here")
    body = {key: value for key, value in attrs.items() if key != "digest"}
    text = canonical_json(body).encode()
    if hashlib.sha256(b"dalidr-attrs-v3:" + text).hexdigest() != attrs.get("digest"):
        raise SpecError(f"{path}: the attributes do not match their digest")
    group = zarr.open_group(str(path), mode="r")
    manifest = _read_manifest(group)
    if len(manifest.paths) != attrs["num_samples"]:
        raise SpecError(f"{path}: the manifest does not have num_samples entries")
    if manifest.fingerprint() != attrs["fingerprint"]:
        raise SpecError(f"{path}: the manifest does not match its fingerprint")
    commit = np.asarray(group["commit_map"][...]).astype(np.uint64)  # spec 5.1
    return SpecStore(path, group, attrs, manifest, commit)
