"""The dataset manifest: which images a store belongs to, fingerprinted, stored without pickles.

Per sample the manifest keeps its relative path, label, byte size and SHA-256 content hash (the
fingerprint), plus its height and width: records store crops as fractions of the source image,
and the store packs them back into source pixels (`store.encoding`), which needs the size.

Stored in the `manifest/` group as plain arrays: paths as one uint8 array of UTF-8 bytes with
int64 offsets (no object or variable-length string dtype, so nothing is ever unpickled and any
zarr reader can decode it), the rest as fixed-width integers. The fingerprint, a SHA-256 over the
four identifying fields, is also saved in the root attributes, so checking a store against a
dataset costs one hash; the arrays are read only to name the first sample that differs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from PIL import Image, UnidentifiedImageError

from dalidr.errors import DatasetError, ImageError, StoreError

__all__ = ["Manifest", "scan_manifest", "write_manifest", "read_manifest"]

_GROUP = "manifest"
_CHUNK = 1 << 20


@dataclass(frozen=True, eq=False)
class Manifest:
    """Per-sample identity of a dataset; sample i of the store is sample i of this list."""

    # Paths relative to the dataset root, as given (compared exactly).
    paths: tuple[str, ...]
    # Class label per sample (-1: unlabelled).
    labels: np.ndarray
    # File size in bytes per sample.
    sizes: np.ndarray
    # SHA-256 of each file's bytes, [N, 32] uint8.
    hashes: np.ndarray
    # (height, width) of each decoded image, [N, 2]; records are drawn against these.
    image_hw: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.paths)
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.int64))
        object.__setattr__(self, "sizes", np.asarray(self.sizes, dtype=np.int64))
        object.__setattr__(self, "hashes", np.asarray(self.hashes, dtype=np.uint8))
        object.__setattr__(self, "image_hw", np.asarray(self.image_hw, dtype=np.int64))
        if n == 0:
            raise DatasetError("a manifest needs at least one sample")
        for name, shape in (("labels", (n,)), ("sizes", (n,)), ("hashes", (n, 32)),
                            ("image_hw", (n, 2))):
            if getattr(self, name).shape != shape:
                raise DatasetError(f"manifest {name} has shape {getattr(self, name).shape}, "
                                   f"expected {shape} for {n} samples")
        bad = np.flatnonzero((self.image_hw <= 0).any(axis=1) | (self.image_hw > 65535).any(axis=1))
        if bad.size:
            i = int(bad[0])
            raise DatasetError(f"sample {i} ({self.paths[i]}) has image size "
                               f"{tuple(self.image_hw[i])}; must be 1..65535")

    def __len__(self) -> int:
        return len(self.paths)

    def _path_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        encoded = [p.encode("utf-8") for p in self.paths]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets

    @property
    def fingerprint(self) -> str:
        """SHA-256 over paths, labels, sizes and content hashes (not image sizes: derived)."""
        data, offsets = self._path_arrays()
        h = hashlib.sha256(b"dalidr-manifest-v1")
        for part in (np.int64(len(self)), offsets, data, self.labels.astype("<i8"),
                     self.sizes.astype("<i8"), self.hashes):
            h.update(np.ascontiguousarray(part).tobytes())
        return h.hexdigest()

    def first_difference(self, other: Manifest) -> str | None:
        """Describe the first sample where `other` differs from this manifest, or None."""
        if len(self) != len(other):
            return f"{len(self)} samples in one, {len(other)} in the other"
        paths = [a != b for a, b in zip(self.paths, other.paths, strict=True)]
        checks = (("path", np.array(paths, dtype=bool)),
                  ("label", self.labels != other.labels),
                  ("byte size", self.sizes != other.sizes),
                  ("content hash", (self.hashes != other.hashes).any(axis=1)))
        found = [(int(np.flatnonzero(bad)[0]), what) for what, bad in checks if bad.any()]
        if not found:
            return None
        i, what = min(found)
        return f"sample {i} ({self.paths[i]!r} vs {other.paths[i]!r}) differs in its {what}"


def _scan_one(root: Path, rel: str) -> tuple[int, bytes, tuple[int, int]]:
    path = root / rel
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"dataset file {path} cannot be read: {exc}") from exc
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"dataset file {path} is not a readable image: {exc}") from exc
    return len(data), hashlib.sha256(data).digest(), (height, width)


def scan_manifest(
    root: str | Path, paths: Sequence[str], labels: Sequence[int], workers: int = 8
) -> Manifest:
    """Hash, size and measure every file of a dataset (relative `paths` under `root`)."""
    root = Path(root)
    if len(paths) != len(labels):
        raise DatasetError(f"{len(paths)} paths but {len(labels)} labels under {root}")
    with ThreadPoolExecutor(max(1, min(workers, os.cpu_count() or 1))) as pool:
        scanned = list(pool.map(lambda rel: _scan_one(root, rel), paths))
    return Manifest(
        paths=tuple(paths),
        labels=np.asarray(labels, dtype=np.int64),
        sizes=np.array([s for s, _, _ in scanned], dtype=np.int64),
        hashes=np.frombuffer(b"".join(h for _, h, _ in scanned), dtype=np.uint8).reshape(-1, 32),
        image_hw=np.array([hw for _, _, hw in scanned], dtype=np.int64),
    )


def _column(group: zarr.Group, name: str, values: np.ndarray) -> None:
    chunks = (min(_CHUNK, max(len(values), 1)),) + values.shape[1:]
    array = group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=chunks,
                               compressors=zarr.codecs.ZstdCodec(level=9), fill_value=0)
    array[...] = values


def write_manifest(root: zarr.Group, manifest: Manifest) -> None:
    """Create the `manifest/` group (once, at store creation)."""
    group = root.create_group(_GROUP)
    data, offsets = manifest._path_arrays()
    _column(group, "path_bytes", data if data.size else np.zeros(0, np.uint8))
    _column(group, "path_offsets", offsets)
    _column(group, "label", manifest.labels.astype(np.int32))
    _column(group, "size", manifest.sizes)
    _column(group, "sha256", manifest.hashes)
    _column(group, "image_hw", manifest.image_hw.astype(np.uint16))


def read_manifest(root: zarr.Group, where: str) -> Manifest:
    """The manifest saved by `write_manifest`; StoreError naming what is missing or malformed."""
    try:
        group = root[_GROUP]
        arrays = {name: group[name][...] for name in
                  ("path_bytes", "path_offsets", "label", "size", "sha256", "image_hw")}
    except KeyError as exc:
        raise StoreError(f"{where}: manifest array {exc} is missing") from exc
    offsets, data = arrays["path_offsets"], arrays["path_bytes"].tobytes()
    if offsets.ndim != 1 or offsets[0] != 0 or offsets[-1] != len(data) or (
            np.diff(offsets) < 0).any():
        raise StoreError(f"{where}: manifest/path_offsets does not index manifest/path_bytes")
    try:
        bounds = zip(offsets[:-1], offsets[1:], strict=True)
        paths = tuple(data[a:b].decode("utf-8") for a, b in bounds)
        return Manifest(paths, arrays["label"], arrays["size"], arrays["sha256"],
                        arrays["image_hw"])
    except (UnicodeDecodeError, DatasetError) as exc:
        raise StoreError(f"{where}: malformed manifest: {exc}") from exc
