"""Datasets users bring: a torchvision ImageFolder tree of images, or a file list with labels
(or webdataset tar shards, indexed by `dalidr.data.shards`; every listing reads through its
`source`, `dalidr.data.data_source`).

`list_dataset` returns relative paths in a fixed order (classes sorted, files sorted), so the
sample index of a file is the same on every machine and in every process; the store's manifest
records that listing. Listing a tree reads directories only: one `scandir` per folder, whose
entries also give each file's byte size (a `stat`, no open, no read), which is what a loader
compares with a store's manifest at start (content hashes are checked on a sample; see
`store.manifest`). Paths are held as a compact `PathList`, labels and sizes as numpy arrays
(about 55 bytes per sample: 70 MB for ImageNet, against ~200 MB as Python strings and ints).

Many ranks, one listing: under `torchrun` (or with `DALIDR_NODE_CACHE` set) the first process
of a node lists and stores the arrays in a node-local file, and the others map it
(`dalidr.data.node_cache`; trade-offs there). The stored listing is reused while every directory it
read keeps its mtime (for a file list: the list's mtime), so it notices added, removed and
renamed files, not a file rewritten in place with another size; the loaders' sampled hashes
and `dalidr verify` are the content checks.

Class folders are those of torchvision's `ImageFolder` (`find_classes`: every sub-directory,
sorted), so a label is the class index torchvision would give. Where the two could disagree
the listing refuses, naming the folder, instead of choosing: a hidden class folder (a name
starting with "."; torchvision counts it, a user rarely means it) and a class folder without
images (torchvision raises on it). dalidr's own cache folder, `CACHE_FOLDER`, is passed over:
torchvision would take it for an empty class and raise, so no index can differ silently.
Trade-off: a tree that lists under torchvision with a hidden class needs that folder moved or
renamed first, or a `--file-list`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dalidr.augment.image_formats import IMAGE_EXTENSIONS
from dalidr.data.data_source import DataSource, FileSource
from dalidr.data.node_cache import cache_key, node_cache_dir, shared_arrays
from dalidr.data.path_list import PathList
from dalidr.data.shards import DataSpec, is_shard_spec, list_shards
from dalidr.errors import DatasetError

__all__ = ["DatasetListing", "list_dataset", "source_for", "IMAGE_SUFFIXES", "CACHE_FOLDER"]

# torchvision's ImageFolder extensions (`IMG_EXTENSIONS`), compared case-insensitively as it does.
IMAGE_SUFFIXES = IMAGE_EXTENSIONS
# dalidr's own folder in a dataset root (`dalidr.data.image_sizes` keeps image sizes there):
# never a class folder.
CACHE_FOLDER = ".dalidr"


@dataclass(frozen=True, eq=False)
class DatasetListing:
    """Relative paths, integer labels and class names of a dataset under `root`."""

    # The folder (or the file list's root); for tar shards, the shard spec as text, URLs
    # intact (`Path` would make `s3://bucket/x` into `s3:/bucket/x`).
    root: Path | str
    # Relative POSIX paths under root, in sample order.
    paths: PathList
    # Class label per sample, int64 [N].
    labels: np.ndarray
    # Class names (folder names; "0", "1", ... for a file list).
    classes: tuple[str, ...]
    # File size in bytes per sample, int64 [N], from the listing's stat; None if not listed
    # (a file list is taken as it is, without touching the files).
    sizes: np.ndarray | None = None
    # Where each sample's bytes are read (`dalidr.data.data_source`): the files under root
    # (the default), or members of tar shards (`dalidr.data.shards`; root is then the spec).
    source: DataSource = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", PathList.from_strings(self.paths))
        if self.source is None:
            object.__setattr__(self, "source", FileSource(self.root, self.paths))
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.int64).reshape(-1))
        if self.sizes is not None:
            object.__setattr__(self, "sizes", np.asarray(self.sizes, dtype=np.int64).reshape(-1))
        if len(self.labels) != len(self.paths) or (
                self.sizes is not None and len(self.sizes) != len(self.paths)):
            raise DatasetError(f"dataset {self.root}: {len(self.paths)} paths, "
                               f"{len(self.labels)} labels"
                               + ("" if self.sizes is None else f", {len(self.sizes)} sizes"))

    def __len__(self) -> int:
        return len(self.paths)

    def file(self, index: int) -> Path:
        """The absolute path of one sample (of a folder or file list; shard members have
        none: read them through `source`)."""
        if not isinstance(self.source, FileSource):
            raise DatasetError(f"sample {index} of {self.root} is a shard member "
                               f"({self.source.describe(index)}), not a file")
        return self.source.file(index)


def list_dataset(root: DataSpec, file_list: str | Path | None = None, *,
                 share: bool = True) -> DatasetListing:
    """An ImageFolder tree (`root/<class>/<image>`), or `file_list` lines `<path> <label>`,
    or webdataset tar shards (`dalidr.data.shards`: a `.tar`, a brace pattern, a list).

    With `share` (the default) and a node cache in effect (`dalidr.data.node_cache`: under
    `torchrun`, or `DALIDR_NODE_CACHE` set), one process per node lists and the others map its
    result; the listing is reused while no listed directory (nor the file list, nor shard)
    has changed."""
    if is_shard_spec(root):
        if file_list is not None:
            raise DatasetError(f"a file list ({file_list}) names files under a folder; shards "
                               f"({root}) carry their own labels: give one or the other")
        shards = list_shards(root, share=share)
        return DatasetListing(shards.spec.text, shards.names, shards.labels,
                              shards.classes, shards.sizes, shards.source())
    root = Path(root)  # type: ignore[arg-type]
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a directory")
    directory = node_cache_dir() if share else None
    if directory is None:
        return _list(root, file_list)[0]
    source = "" if file_list is None else os.path.realpath(file_list)
    # "listing-2": listings stored before hidden and empty class folders were refused are
    # not reused (they may have skipped a hidden folder silently).
    key = cache_key("listing-2", os.path.realpath(root), source)

    def produce() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        listing, stamps = _list(root, file_list)
        header: dict[str, Any] = {"root": os.path.realpath(root), "file_list": source,
                                  "classes": list(listing.classes), "stamps": stamps}
        arrays: dict[str, np.ndarray] = {"path_bytes": listing.paths.data,
                                         "path_offsets": listing.paths.offsets,
                                         "labels": listing.labels}
        if listing.sizes is not None:
            arrays["sizes"] = listing.sizes
        return header, arrays

    def is_valid(header: dict[str, Any]) -> bool:
        return (header.get("root") == os.path.realpath(root)
                and header.get("file_list") == source and _unchanged(root, header["stamps"]))

    try:
        header, arrays = shared_arrays(directory, key, is_valid, produce)
        return DatasetListing(root, PathList(arrays["path_bytes"], arrays["path_offsets"]),
                              arrays["labels"], tuple(header["classes"]), arrays.get("sizes"))
    except (OSError, KeyError, TypeError, ValueError) as exc:
        warnings.warn(f"dataset {root}: node cache {directory} unusable ({exc}); "
                      "listing in this process", stacklevel=2)
        return _list(root, file_list)[0]


def source_for(data: DataSpec, paths: PathList) -> DataSource:
    """The bytes of the samples named `paths` (a store's manifest) in `data`: a folder's files
    (nothing listed), or shard members (the shards indexed, or their cached index)."""
    if is_shard_spec(data):
        return list_dataset(data).source.for_paths(paths)
    return FileSource(Path(data), paths)  # type: ignore[arg-type]


_CHUNK_LINES = 1 << 16  # file list lines parsed per compact chunk

# (path relative to the root, st_mtime_ns) of every directory or file list a listing read:
# the listing is still valid while none of them changed.
_Stamps = list[tuple[str, int]]


def _unchanged(root: Path, stamps: _Stamps) -> bool:
    try:
        return all(os.stat(os.path.join(root, rel)).st_mtime_ns == int(mtime)
                   for rel, mtime in stamps)
    except (OSError, TypeError, ValueError):
        return False


def _list(root: Path, file_list: str | Path | None) -> tuple[DatasetListing, _Stamps]:
    if file_list is not None:
        path = Path(file_list)
        stamp = path.stat().st_mtime_ns if path.is_file() else 0
        return _from_file_list(root, path), [(os.path.realpath(path), stamp)]
    return _walk_tree(root)


def _named(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _walk_tree(root: Path) -> tuple[DatasetListing, _Stamps]:
    """One scandir per folder; each image's size from its directory entry's stat."""
    stamps: _Stamps = [("", os.stat(root).st_mtime_ns)]
    with os.scandir(root) as entries:
        classes = sorted(e.name for e in entries if e.is_dir() and e.name != CACHE_FOLDER)
    hidden = [name for name in classes if name.startswith(".")]
    if hidden:
        raise DatasetError(
            f"dataset root {root}: hidden folder(s) {_named(hidden)} would be class folders: "
            "torchvision's ImageFolder counts them as classes (shifting every class index "
            "after them), so dalidr refuses rather than choose an order silently; move or "
            f"rename them (only dalidr's own {CACHE_FOLDER!r} folder is ignored)")
    if not classes:
        raise DatasetError(
            f"dataset root {root} has no class folders (expected root/<class>/<image>.jpg)"
        )
    parts: list[PathList] = []
    sizes: list[np.ndarray] = []
    counts: list[int] = []
    for name in classes:
        names: list[str] = []
        found: list[int] = []
        _walk_images(os.path.join(root, name), name, names, found, stamps)
        order = sorted(range(len(names)), key=names.__getitem__)
        parts.append(PathList.from_strings([names[i] for i in order]))
        sizes.append(np.asarray(found, dtype=np.int64)[order])
        counts.append(len(names))
    if not sum(counts):
        raise DatasetError(f"dataset root {root} has class folders but no image files "
                           f"({', '.join(IMAGE_SUFFIXES)})")
    empty = [name for name, count in zip(classes, counts, strict=True) if not count]
    if empty:
        raise DatasetError(
            f"dataset root {root}: class folder(s) {_named(empty)} hold no image files "
            f"({', '.join(IMAGE_SUFFIXES)}); torchvision's ImageFolder refuses such a tree "
            "and a class without samples cannot be learnt: add images or remove the folder(s)")
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), counts)
    return DatasetListing(root, PathList.concatenate(parts), labels, tuple(classes),
                          np.concatenate(sizes)), stamps


def _walk_images(folder: str, rel: str, names: list[str], sizes: list[int],
                 stamps: _Stamps) -> None:
    """Append (relative path, byte size) of every image file below `folder` (following
    links), and the folder's mtime (taken before reading it, so a later change shows)."""
    subfolders: list[tuple[str, str]] = []
    try:
        stamps.append((rel, os.stat(folder).st_mtime_ns))
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir():
                    subfolders.append((entry.path, f"{rel}/{entry.name}"))
                elif entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file():
                    names.append(f"{rel}/{entry.name}")
                    sizes.append(entry.stat().st_size)
    except OSError as exc:
        raise DatasetError(f"dataset folder {folder} cannot be listed: {exc}") from exc
    for path, sub in subfolders:
        _walk_images(path, sub, names, sizes, stamps)


def _from_file_list(root: Path, file_list: Path) -> DatasetListing:
    """Parsed line by line into compact chunks, so no Python string per path outlives its
    chunk of `_CHUNK_LINES` (memory stays near the PathList's for ImageNet-sized lists)."""
    if not file_list.is_file():
        raise DatasetError(f"file list {file_list} does not exist")
    parts: list[PathList] = []
    labels: list[np.ndarray] = []
    paths: list[str] = []
    values: list[str] = []

    def flush() -> None:
        if paths:
            parts.append(PathList.from_strings(paths))
            labels.append(np.asarray(values, dtype=np.int64))
            paths.clear()
            values.clear()

    with open(file_list, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            fields = line.rsplit(maxsplit=1)
            if (len(fields) == 2 and fields[1].isdigit() and fields[1].isascii()
                    and not fields[0].lstrip().startswith("#")):
                rel = fields[0]
                if rel.startswith("/") or "/../" in f"/{rel}/":
                    raise DatasetError(
                        f"{file_list}:{number}: {rel!r} is not a path inside {root}")
                paths.append(rel)
                values.append(fields[1])
                if len(paths) >= _CHUNK_LINES:
                    flush()
            elif line.strip() and not line.lstrip().startswith("#"):
                raise DatasetError(f"{file_list}:{number}: expected '<relative path> <label>', "
                                   f"got {line.rstrip(chr(10))!r}")
    flush()
    if not parts:
        raise DatasetError(f"file list {file_list} lists no images")
    label = np.concatenate(labels)
    return DatasetListing(root, PathList.concatenate(parts), label,
                          tuple(str(c) for c in range(int(label.max()) + 1)))
