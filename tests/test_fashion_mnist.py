"""Fashion-MNIST's IDX files parsed and exported as ImageFolder JPEGs (no apt needed here)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from dalidr.data.dataset import list_dataset
from dalidr.data.fashion_mnist import (
    CLASSES,
    export_image_folder,
    load_digits_fallback,
    load_fashion_mnist,
    read_idx,
)
from dalidr.errors import DatasetError


def _write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_idx_round_trip_and_export(tmp_path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    labels = np.arange(30) % 10
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    loaded, loaded_labels = load_fashion_mnist("train", root=tmp_path)
    np.testing.assert_array_equal(loaded, images)
    np.testing.assert_array_equal(loaded_labels, labels)
    split = export_image_folder(loaded, loaded_labels, tmp_path / "folder", CLASSES, per_class=2)
    listing = list_dataset(split.root)
    assert split.count == 20 and len(listing) == 20
    assert listing.classes == tuple(sorted(CLASSES))


def test_corrupt_idx_is_named(tmp_path) -> None:
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b"\x00\x00\x08\x03" + struct.pack(">3I", 5, 28, 28) + b"\x00" * 10)
    with pytest.raises(DatasetError, match="bad.gz: header says"):
        read_idx(path)
    with pytest.raises(DatasetError, match="is missing"):
        load_fashion_mnist("test", root=tmp_path)


def test_digits_fallback_has_the_same_shape() -> None:
    images, labels = load_digits_fallback("train")
    assert images.shape[1:] == (28, 28) and images.dtype == np.uint8
    assert set(np.unique(labels)) == set(range(10))
