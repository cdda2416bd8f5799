"""The dataset manifest: which images a store belongs to, fingerprinted, stored without pickles.

Per sample the manifest keeps its relative path, label, byte size and SHA-256 content hash, its
height and width as PIL reports them (`dalidr.augment.conventions`: records store crops as
fractions of
the source image, and the store packs them back into source pixels, `store.encoding`), and
whether the teacher pass skipped it as unreadable (`--skip-bad`: never read, never served, never
compared with the data).

Stored in the `manifest/` group as plain arrays: paths as one uint8 array of UTF-8 bytes with
int64 offsets (a `PathList`; no object or variable-length string dtype, so nothing is ever
unpickled and any zarr reader can decode it), the rest as fixed-width integers. Every
per-sample column is chunked by the store's block size (schema 3), so a block's entries are
one chunk of each; the path bytes in chunks of 1 MiB. The
fingerprint, a SHA-256 over every column, is saved in the root attributes (which carry their own
digest), so a manifest edited or damaged on disk is refused when it is read.

Checking a store against a data root at every training start must not read the dataset
(1.28M files, 140 GB): `check_listing` compares the listing's paths, labels and file sizes with
the manifest, vectorised, and `check_content` hashes a small deterministic sample of files
(`sampled_indices`); `dalidr verify` hashes every file (`store.verify`). Every read goes
through the data's `DataSource` (files under a folder, or members of tar shards, named by
member in the manifest), so a sample in a shard is named by shard, member and offset.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
import zarr.codecs
from PIL import Image, UnidentifiedImageError

from dalidr.augment.hashing import mix64
from dalidr.data.data_source import DataSource, FileSource
from dalidr.data.dataset import DatasetListing
from dalidr.data.path_list import PathList
from dalidr.errors import DatasetError, ImageError, StoreError
from store.location import CORRUPT_CHUNK_ERRORS, redacted

__all__ = ["Manifest", "scan_manifest", "write_manifest", "read_manifest",
           "MANIFEST_COLUMNS", "SAMPLED_HASHES", "sampled_positions", "content_differences"]

_GROUP = "manifest"
_BYTES_CHUNK = 1 << 20  # path bytes per chunk
# name -> (dtype on disk, trailing shape) of every manifest array besides the paths.
MANIFEST_COLUMNS = {"label": ("<i4", ()), "size": ("<i8", ()), "sha256": ("u1", (32,)),
                    "image_hw": ("<u2", (2,)), "skipped": ("u1", ())}
# Files hashed at every loader start to check a store belongs to a data root.
SAMPLED_HASHES = 32


@dataclass(frozen=True, eq=False)
class Manifest:
    """Per-sample identity of a dataset; sample i of the store is sample i of this list."""

    # Paths relative to the dataset root, as listed (compared exactly).
    paths: PathList
    # Class label per sample (-1: unlabelled).
    labels: np.ndarray
    # File size in bytes per sample.
    sizes: np.ndarray
    # SHA-256 of each file's bytes, [N, 32] uint8 (zeros for a skipped sample).
    hashes: np.ndarray
    # (height, width) of each image as PIL reports it, [N, 2]; records are drawn against these.
    image_hw: np.ndarray
    # Unreadable at the teacher pass (`--skip-bad`): never read or served, [N] bool (None: none;
    # __post_init__ always makes it an array).
    skipped: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        n = len(self.paths)
        object.__setattr__(self, "paths", PathList.from_strings(self.paths))
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.int64))
        object.__setattr__(self, "sizes", np.asarray(self.sizes, dtype=np.int64))
        object.__setattr__(self, "hashes", np.asarray(self.hashes, dtype=np.uint8))
        object.__setattr__(self, "image_hw", np.asarray(self.image_hw, dtype=np.int64))
        skipped = np.zeros(n, bool) if self.skipped is None else np.asarray(self.skipped) != 0
        object.__setattr__(self, "skipped", skipped)
        if n == 0:
            raise DatasetError("a manifest needs at least one sample")
        for name, shape in (("labels", (n,)), ("sizes", (n,)), ("hashes", (n, 32)),
                            ("image_hw", (n, 2)), ("skipped", (n,))):
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

    @property
    def fingerprint(self) -> str:
        """SHA-256 over every column: paths, labels, sizes, hashes, image sizes, skip marks."""
        h = hashlib.sha256(b"dalidr-manifest-v2")
        h.update(self.paths.digest())
        for part in (self.labels.astype("<i8"), self.sizes.astype("<i8"), self.hashes,
                     self.image_hw.astype("<i8"), self.skipped.astype("u1")):
            h.update(np.ascontiguousarray(part).tobytes())
        return h.hexdigest()

    @property
    def served(self) -> np.ndarray:
        """Indices of the samples that are read and served (not skipped)."""
        return np.flatnonzero(~self.skipped)

    def first_difference(self, other: Manifest) -> str | None:
        """Describe the first sample where `other` differs from this manifest, or None."""
        if len(self) != len(other):
            return f"{len(self)} samples in one, {len(other)} in the other"
        first_path = self.paths.first_difference(other.paths)
        paths = np.zeros(len(self), bool)
        if first_path is not None:
            paths[first_path] = True
        checks = (("path", paths),
                  ("label", self.labels != other.labels),
                  ("byte size", self.sizes != other.sizes),
                  ("content hash", (self.hashes != other.hashes).any(axis=1)),
                  ("image size", (self.image_hw != other.image_hw).any(axis=1)),
                  ("skip mark", self.skipped != other.skipped))
        found = [(int(np.flatnonzero(bad)[0]), what) for what, bad in checks if bad.any()]
        if not found:
            return None
        i, what = min(found)
        return f"sample {i} ({self.paths[i]!r} vs {other.paths[i]!r}) differs in its {what}"

    # ------------------------------------------------------------ against a data root

    def check_listing(self, listing: DatasetListing) -> str | None:
        """Metadata check against a listing of the data root (no file is opened): the same
        paths and labels in the same order, and the same byte sizes where the listing has them.
        Samples skipped by the teacher pass may have changed or gone. None: they agree."""
        paths, labels, sizes = listing.paths, listing.labels, listing.sizes
        if len(listing) != len(self) and self.skipped.any():
            # Skipped files may have been deleted since: compare what the store serves.
            keep = self.served
            gone = set(self.paths[int(i)] for i in np.flatnonzero(self.skipped))
            theirs = np.array([p not in gone for p in paths], dtype=bool)
            mine = Manifest(PathList.from_strings(self.paths[int(i)] for i in keep),
                            self.labels[keep], self.sizes[keep], self.hashes[keep],
                            self.image_hw[keep])
            kept = PathList.from_strings(p for p, ok in zip(paths, theirs, strict=True) if ok)
            sub = DatasetListing(listing.root, kept, labels[theirs], listing.classes,
                                 None if sizes is None else sizes[theirs],
                                 listing.source.for_paths(kept))
            return mine.check_listing(sub)
        if len(listing) != len(self):
            return (f"the store's manifest lists {len(self)} images, {listing.root} has "
                    f"{len(listing)}")
        found: list[tuple[int, str]] = []
        first = self.paths.first_difference(paths)
        if first is not None:
            found.append((first, f"path {self.paths[first]!r} in the store, {paths[first]!r} "
                                 "in the data"))
        bad = np.flatnonzero(self.labels != labels)
        if bad.size:
            i = int(bad[0])
            found.append((i, f"{self.paths[i]!r}: label {self.labels[i]} in the store, "
                             f"{labels[i]} in the data ({listing.source.describe(i)})"))
        if sizes is not None:
            bad = np.flatnonzero((self.sizes != sizes) & ~self.skipped)
            if bad.size:
                i = int(bad[0])
                found.append((i, f"{self.paths[i]!r}: {self.sizes[i]} bytes in the store, "
                                 f"{sizes[i]} in the data ({listing.source.describe(i)})"))
        if not found:
            return None
        i, what = min(found)
        return f"sample {i} differs: {what}"

    def sampled_indices(self, count: int = SAMPLED_HASHES) -> np.ndarray:
        """A deterministic sample of served samples whose content is hashed at every start."""
        return sampled_positions(len(self), lambda samples: self.skipped[samples], count)

    def check_content(self, data: str | Path | DataSource, indices: Sequence[int] | np.ndarray,
                      workers: int = 8, progress: bool = False) -> list[str]:
        """Hash the samples `indices` of `data` (a folder root, or a source whose sample i is
        this manifest's sample i); one line per sample that differs."""
        source = data if isinstance(data, DataSource) else FileSource(data, self.paths)
        kept = np.array([int(i) for i in indices if not self.skipped[int(i)]], np.int64)
        return content_differences(source, kept, self.hashes[kept], workers, progress)


def content_differences(source: DataSource, indices: np.ndarray, hashes: np.ndarray,
                        workers: int = 8, progress: bool = False) -> list[str]:
    """Hash the samples `indices` of `source` against their manifest `hashes` ([n, 32]
    uint8); one line per sample that differs or cannot be read."""
    expected = {int(i): h.tobytes() for i, h in zip(indices, hashes, strict=True)}

    def one(i: int) -> str | None:
        where = source.describe(i)
        try:
            digest = hashlib.sha256(source.read([i])[0].tobytes()).digest()
        except DatasetError as exc:
            return f"sample {i} ({where}): cannot be read: {exc}"
        if digest != expected[i]:
            return f"sample {i} ({where}): content differs from the store's manifest"
        return None

    with ThreadPoolExecutor(max(1, min(workers, len(expected) or 1))) as pool:
        lines: Iterable[str | None] = pool.map(one, list(expected))
        if progress:
            from tqdm import tqdm

            lines = tqdm(lines, total=len(expected), desc="verifying", unit="file")
        return [line for line in lines if line]


def _scan_one(source: DataSource, i: int) -> tuple[int, bytes, tuple[int, int]]:
    where = source.describe(i)
    data = source.read([i])[0].tobytes()  # DatasetError naming the file, or shard and member
    try:
        # PIL's size ignores EXIF orientation, as replay does (dalidr.augment.conventions).
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageError(f"dataset file {where} is not a readable image: {exc}") from exc
    if not data:
        raise ImageError(f"dataset file {where} is empty")
    return len(data), hashlib.sha256(data).digest(), (height, width)


def _scan_one_or_skip(source: DataSource, i: int) -> tuple[int, bytes, tuple[int, int]] | int:
    """A scanned sample, or its byte size (-1: missing) when it is unreadable."""
    try:
        return _scan_one(source, i)
    except (ImageError, DatasetError):
        return source.size(i)


def scan_manifest(
    root: str | Path | DataSource, paths: Sequence[str], labels: Sequence[int] | np.ndarray,
    workers: int = 8, skip_bad: bool = False, progress: bool = False,
) -> Manifest:
    """Hash, size and measure every sample of a dataset: relative `paths` under a folder
    `root`, or the samples of a source (a listing's `source`, whose sample i is `paths[i]`).

    With `skip_bad`, an unreadable sample becomes a skipped sample instead of an error."""
    source = root if isinstance(root, DataSource) else FileSource(root, paths)
    if len(paths) != len(labels) or len(source) != len(paths):
        raise DatasetError(f"{len(paths)} paths but {len(labels)} labels "
                           f"({len(source)} samples) in {source.name}")
    scan = _scan_one_or_skip if skip_bad else _scan_one
    with ThreadPoolExecutor(max(1, min(workers, os.cpu_count() or 1))) as pool:
        results: Iterable[tuple[int, bytes, tuple[int, int]] | int] = pool.map(
            lambda i: scan(source, i), range(len(paths)))
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(paths), desc="hashing the dataset", unit="file")
        scanned = list(results)
    n = len(scanned)
    sizes = np.zeros(n, np.int64)
    hashes = np.zeros((n, 32), np.uint8)
    image_hw = np.ones((n, 2), np.int64)  # a skipped sample's records are drawn for 1x1
    skipped = np.zeros(n, bool)
    for i, item in enumerate(scanned):
        if isinstance(item, int):
            sizes[i], skipped[i] = item, True
        else:
            sizes[i] = item[0]
            hashes[i] = np.frombuffer(item[1], np.uint8)
            image_hw[i] = item[2]
    return Manifest(PathList.from_strings(paths), np.asarray(labels, np.int64), sizes, hashes,
                    image_hw, skipped)


def _column(group: zarr.Group, name: str, values: np.ndarray, chunk: int) -> None:
    chunks = (min(chunk, max(len(values), 1)),) + values.shape[1:]
    array = group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=chunks,
                               compressors=zarr.codecs.ZstdCodec(level=9), fill_value=0)
    array[...] = values


def write_manifest(root: zarr.Group, manifest: Manifest, block_size: int) -> None:
    """Create the `manifest/` group (once, at store creation), per-sample columns chunked by
    `block_size` samples."""
    group = root.create_group(_GROUP)
    data, offsets = manifest.paths.data, manifest.paths.offsets
    _column(group, "path_bytes", data if data.size else np.zeros(0, np.uint8), _BYTES_CHUNK)
    _column(group, "path_offsets", offsets, block_size)
    values = {"label": manifest.labels, "size": manifest.sizes, "sha256": manifest.hashes,
              "image_hw": manifest.image_hw, "skipped": manifest.skipped}
    for name, (dtype, _) in MANIFEST_COLUMNS.items():
        _column(group, name, values[name].astype(dtype), block_size)


def _read_arrays(root: zarr.Group, where: str, num_samples: int) -> dict[str, np.ndarray]:
    """Every manifest array, its shape and dtype checked against the sample count before any
    of it is read (a forged count cannot make this allocate more than the objects justify)."""
    try:
        group = root[_GROUP]
        if not isinstance(group, zarr.Group):
            raise TypeError(f"{_GROUP!r} is an array, not a group")
        arrays: dict[str, zarr.Array] = {}
        for name in ("path_bytes", "path_offsets", *MANIFEST_COLUMNS):
            node = group[name]
            if not isinstance(node, zarr.Array):
                raise TypeError(f"{name!r} is a group, not an array")
            arrays[name] = node
    except KeyError as exc:
        raise StoreError(f"{where}: manifest array {exc} is missing") from exc
    except (ValueError, TypeError, OSError) as exc:
        raise StoreError(f"{where}: manifest metadata is malformed: {exc}") from exc
    expected = {"path_offsets": ("<i8", (num_samples + 1,)),
                **{name: (dtype, (num_samples,) + shape)
                   for name, (dtype, shape) in MANIFEST_COLUMNS.items()}}
    for name, (dtype, shape) in expected.items():
        array = arrays[name]
        if array.dtype != np.dtype(dtype) or tuple(array.shape) != shape:
            raise StoreError(f"{where}: manifest array {name!r} is {array.dtype}{list(array.shape)}"
                             f", the store's {num_samples} samples need {np.dtype(dtype)}"
                             f"{list(shape)}")
    path_bytes = arrays["path_bytes"]
    if path_bytes.dtype != np.uint8 or path_bytes.ndim != 1 or (
            path_bytes.shape[0] > num_samples * 4096):
        raise StoreError(f"{where}: manifest array 'path_bytes' is {path_bytes.dtype}"
                         f"{list(path_bytes.shape)}; expected uint8, at most 4096 bytes a path")
    out: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        try:
            out[name] = np.asarray(array[...])
        except CORRUPT_CHUNK_ERRORS as exc:
            raise StoreError(f"{where}: manifest array {name!r} is corrupt: "
                             f"{redacted(exc)}") from exc
    return out


def read_manifest(root: zarr.Group, where: str, num_samples: int, fingerprint: str) -> Manifest:
    """The manifest saved by `write_manifest`, checked against the store's attributes (count
    and fingerprint); StoreError naming what is missing, malformed or altered."""
    arrays = _read_arrays(root, where, num_samples)
    try:
        paths = PathList(arrays["path_bytes"], arrays["path_offsets"])
        unsafe = paths.unsafe_index()
        if unsafe is not None:
            raise StoreError(f"{where}: manifest path {unsafe} is not a relative path inside the "
                             "data root (absolute, '..', empty or not UTF-8); refusing the store")
        manifest = Manifest(paths, arrays["label"], arrays["size"], arrays["sha256"],
                            arrays["image_hw"], arrays["skipped"])
    except (ValueError, DatasetError) as exc:
        raise StoreError(f"{where}: malformed manifest: {exc}") from exc
    if manifest.fingerprint != fingerprint:
        raise StoreError(f"{where}: the manifest's arrays do not match the store's fingerprint "
                         "(edited or damaged on disk); run `dalidr inspect` on it")
    return manifest


def sampled_positions(num_samples: int, skipped: Callable[[np.ndarray], np.ndarray],
                      count: int = SAMPLED_HASHES) -> np.ndarray:
    """A deterministic sample of `count` served samples (sorted), whose content is hashed at
    every start to check a store belongs to a data root. Candidates come from a counter hash,
    so choosing reads the skip marks of the candidates only (O(count) at any N); `skipped`
    maps sample indices to their marks."""
    if num_samples <= 4 * count:
        candidates = np.arange(num_samples, dtype=np.int64)
        keys = mix64(candidates.astype(np.uint64) ^ np.uint64(0x5A3D_11E5))
        candidates = candidates[np.argsort(keys, kind="stable")]
        served = candidates[~np.asarray(skipped(candidates), bool)]
        return np.sort(served[:count])
    chosen: list[int] = []
    taken: set[int] = set()
    for round_ in range(64):
        counter = np.arange(round_ * 4 * count, (round_ + 1) * 4 * count, dtype=np.uint64)
        draws = (mix64(counter ^ np.uint64(0x5A3D_11E5)) % np.uint64(num_samples)).astype(np.int64)
        marks = np.asarray(skipped(draws), bool)
        for sample, mark in zip(draws.tolist(), marks.tolist(), strict=True):
            if not mark and sample not in taken:
                taken.add(sample)
                chosen.append(sample)
                if len(chosen) == count:
                    return np.sort(np.array(chosen, np.int64))
    return np.sort(np.array(chosen, np.int64))
