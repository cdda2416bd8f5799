"""Datasets users bring: a torchvision ImageFolder tree of images, or a file list with labels.

`list_dataset` returns relative paths in a fixed order (classes sorted, files sorted), so the
sample index of a file is the same on every machine and in every process; the store's manifest
records that listing. Listing a tree reads directories only: one `scandir` per folder, whose
entries also give each file's byte size (a `stat`, no open, no read), which is what a loader
compares with a store's manifest at start (content hashes are checked on a sample; see
`store.manifest`). Paths are held as a compact `PathList`, labels and sizes as numpy arrays.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dalidr.errors import DatasetError
from dalidr.image_formats import IMAGE_EXTENSIONS, has_image_extension
from dalidr.path_list import PathList

__all__ = ["DatasetListing", "list_dataset", "IMAGE_SUFFIXES", "is_image_name"]

# torchvision's ImageFolder extensions (`IMG_EXTENSIONS`), compared case-insensitively as it does.
IMAGE_SUFFIXES = IMAGE_EXTENSIONS
is_image_name = has_image_extension


@dataclass(frozen=True, eq=False)
class DatasetListing:
    """Relative paths, integer labels and class names of a dataset under `root`."""

    root: Path
    # Relative POSIX paths under root, in sample order.
    paths: PathList
    # Class label per sample, int64 [N].
    labels: np.ndarray
    # Class names (folder names; "0", "1", ... for a file list).
    classes: tuple[str, ...]
    # File size in bytes per sample, int64 [N], from the listing's stat; None if not listed
    # (a file list is taken as it is, without touching the files).
    sizes: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", PathList.from_strings(self.paths))
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
        """The absolute path of one sample."""
        return self.root / self.paths[index]


def list_dataset(root: str | Path, file_list: str | Path | None = None) -> DatasetListing:
    """An ImageFolder tree (`root/<class>/<image>`), or `file_list` lines `<path> <label>`."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a directory")
    if file_list is not None:
        return _from_file_list(root, Path(file_list))
    classes = sorted(e.name for e in os.scandir(root)
                     if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DatasetError(
            f"dataset root {root} has no class folders (expected root/<class>/<image>.jpg)"
        )
    paths: list[str] = []
    counts: list[int] = []
    sizes: list[int] = []
    for name in classes:
        found = sorted(_walk_images(root / name, name))
        paths += [rel for rel, _ in found]
        sizes += [size for _, size in found]
        counts.append(len(found))
    if not paths:
        raise DatasetError(f"dataset root {root} has class folders but no image files "
                           f"({', '.join(IMAGE_SUFFIXES)})")
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), counts)
    return DatasetListing(root, PathList.from_strings(paths), labels, tuple(classes),
                          np.asarray(sizes, dtype=np.int64))


def _walk_images(folder: Path, rel: str) -> list[tuple[str, int]]:
    """(relative path, byte size) of every image file below `folder` (following links)."""
    out: list[tuple[str, int]] = []
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        raise DatasetError(f"dataset folder {folder} cannot be listed: {exc}") from exc
    for entry in entries:
        if entry.is_dir():
            out += _walk_images(Path(entry.path), f"{rel}/{entry.name}")
        elif is_image_name(entry.name) and entry.is_file():
            out.append((f"{rel}/{entry.name}", entry.stat().st_size))
    return out


def _from_file_list(root: Path, file_list: Path) -> DatasetListing:
    if not file_list.is_file():
        raise DatasetError(f"file list {file_list} does not exist")
    paths: list[str] = []
    labels: list[int] = []
    for number, line in enumerate(file_list.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
            raise DatasetError(
                f"{file_list}:{number}: expected '<relative path> <label>', got {line!r}"
            )
        rel = parts[0]
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise DatasetError(f"{file_list}:{number}: {rel!r} is not a path inside {root}")
        paths.append(rel)
        labels.append(int(parts[1]))
    if not paths:
        raise DatasetError(f"file list {file_list} lists no images")
    num_classes = max(labels) + 1
    return DatasetListing(root, PathList.from_strings(paths), np.asarray(labels, np.int64),
                          tuple(str(c) for c in range(num_classes)))
