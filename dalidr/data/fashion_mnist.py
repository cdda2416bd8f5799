"""Real data offline: Fashion-MNIST from Debian's `dataset-fashion-mnist`, as JPEG ImageFolders.

The package puts the four IDX files under `/usr/share/datasets/fashion-mnist/`. Users bring
ImageFolder trees of JPEGs, so the demo and `bench/reproduce.py` convert a subset (or all) of it
into `root/train/<class>/<index>.jpg` and `root/test/<class>/<index>.jpg`, the format every
dalidr command reads. Where the package is missing and apt may be used, `ensure_package`
installs it; where apt is not allowed, `load_digits_fallback` gives scikit-learn's bundled
8x8 digits (upscaled) in the same layout.

IDX is parsed with numpy from its documented header (magic, dims, big-endian sizes); nothing is
unpickled.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dalidr.errors import DatasetError

__all__ = [
    "FASHION_MNIST_DIR",
    "CLASSES",
    "IDX_FILES",
    "ExportedSplit",
    "ensure_package",
    "read_idx",
    "load_fashion_mnist",
    "load_digits_fallback",
    "export_image_folder",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)  # fmt: skip
# The IDX files of each split, as Debian installs them.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def ensure_package(allow_apt: bool = True) -> bool:
    """Whether Fashion-MNIST is on disk, installing Debian's package when allowed."""
    if all((FASHION_MNIST_DIR / f).is_file() for pair in IDX_FILES.values() for f in pair):
        return True
    if not allow_apt or shutil.which("apt-get") is None:
        return False
    command = ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"]
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            return False
        command = ["sudo", "-n", *command]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    return result.returncode == 0 and ensure_package(allow_apt=False)


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (uint8 data) from a gzip file."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path} is not a uint8 IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DatasetError(f"{path}: header says {dims.tolist()}, file holds {data.size} values")
    return data.reshape(dims)


def load_fashion_mnist(split: str, root: Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 28, 28] uint8, labels [N]) of the "train" or "test" split."""
    if split not in IDX_FILES:
        raise DatasetError(f"split {split!r} is not one of {sorted(IDX_FILES)}")
    images_file, labels_file = (root / name for name in IDX_FILES[split])
    for path in (images_file, labels_file):
        if not path.is_file():
            raise DatasetError(f"{path} is missing: install Debian's dataset-fashion-mnist")
    images, labels = read_idx(images_file), read_idx(labels_file)
    if len(images) != len(labels):
        raise DatasetError(f"{images_file} has {len(images)} images, {labels_file} {len(labels)}")
    return images, labels


def load_digits_fallback(split: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits, upscaled to 28x28; 80/20 train/test by index."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = np.stack(
        [np.asarray(Image.fromarray(i).resize((28, 28), Image.Resampling.BICUBIC)) for i in images]
    )
    cut = int(0.8 * len(images))
    part = slice(0, cut) if split == "train" else slice(cut, None)
    return images[part], digits.target[part].astype(np.int64)


@dataclass(frozen=True)
class ExportedSplit:
    """Where a split was written and how many images of each class it holds."""

    root: Path
    count: int
    classes: tuple[str, ...]


def export_image_folder(
    images: np.ndarray,
    labels: np.ndarray,
    root: str | Path,
    classes: tuple[str, ...],
    per_class: int | None = None,
    quality: int = 95,
) -> ExportedSplit:
    """Write `root/<class>/<index>.jpg` (RGB JPEGs); the first `per_class` of each class.

    Files already there are kept, so an interrupted export resumes where it stopped.
    """
    root = Path(root)
    chosen = np.arange(len(labels))
    if per_class is not None:
        chosen = np.concatenate(
            [np.flatnonzero(labels == c)[:per_class] for c in range(len(classes))]
        )
        chosen.sort()
    for index in chosen:
        path = root / classes[int(labels[index])] / f"{index:05d}.jpg"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        Image.fromarray(images[index]).convert("RGB").save(tmp, format="JPEG", quality=quality)
        tmp.replace(path)
    return ExportedSplit(root, len(chosen), classes)
