"""Dataset listings: ImageFolder order and file lists, with errors naming the line."""

from __future__ import annotations

import pytest

from dalidr.dataset import list_dataset
from dalidr.errors import DatasetError
from dalidr.sample_data import make_corpus


def test_image_folder_is_listed_in_a_fixed_order(tmp_path) -> None:
    make_corpus(tmp_path, 6)
    listing = list_dataset(tmp_path)
    assert len(listing) == 6
    assert list(listing.paths) == sorted(listing.paths)
    assert listing.labels == tuple(sorted(listing.labels))
    assert listing.classes == tuple(sorted(listing.classes))


def test_file_list(tmp_path) -> None:
    paths = make_corpus(tmp_path, 3)
    rel = [p.relative_to(tmp_path).as_posix() for p in paths]
    (tmp_path / "list.txt").write_text(f"# comment\n{rel[0]} 4\n{rel[2]} 0\n")
    listing = list_dataset(tmp_path, tmp_path / "list.txt")
    assert listing.paths == (rel[0], rel[2]) and listing.labels == (4, 0)
    (tmp_path / "bad.txt").write_text(f"{rel[0]} cat\n")
    with pytest.raises(DatasetError, match=r"bad.txt:1: expected"):
        list_dataset(tmp_path, tmp_path / "bad.txt")
    (tmp_path / "missing.txt").write_text("nope.jpg 1\n")
    with pytest.raises(DatasetError, match=r"missing.txt:1: .*nope.jpg does not exist"):
        list_dataset(tmp_path, tmp_path / "missing.txt")
