"""Datasets users bring: a torchvision ImageFolder tree of JPEGs, or a file list with labels.

`list_dataset` returns relative paths in a fixed order (classes sorted, files sorted), so the
sample index of a file is the same on every machine and in every process; the store's manifest
fingerprints that listing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dalidr.errors import DatasetError

__all__ = ["DatasetListing", "list_dataset", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".JPG", ".JPEG")


@dataclass(frozen=True)
class DatasetListing:
    """Relative paths, integer labels and class names of a dataset under `root`."""

    root: Path
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)


def list_dataset(root: str | Path, file_list: str | Path | None = None) -> DatasetListing:
    """An ImageFolder tree (`root/<class>/<image>.jpg`), or `file_list` lines `<path> <label>`."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a directory")
    if file_list is not None:
        return _from_file_list(root, Path(file_list))
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(
            f"dataset root {root} has no class folders (expected root/<class>/*.jpg)"
        )
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = sorted(
            p.relative_to(root).as_posix()
            for p in (root / name).rglob("*")
            if p.suffix in IMAGE_SUFFIXES and p.is_file()
        )
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DatasetError(f"dataset root {root} has class folders but no JPEG files")
    return DatasetListing(root, tuple(paths), tuple(labels), tuple(classes))


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
        if not (root / parts[0]).is_file():
            raise DatasetError(f"{file_list}:{number}: {root / parts[0]} does not exist")
        paths.append(parts[0])
        labels.append(int(parts[1]))
    if not paths:
        raise DatasetError(f"file list {file_list} lists no images")
    num_classes = max(labels) + 1
    return DatasetListing(
        root, tuple(paths), tuple(labels), tuple(str(c) for c in range(num_classes))
    )
