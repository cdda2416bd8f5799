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
    assert list(listing.labels) == sorted(listing.labels)
    assert listing.sizes is not None and (listing.sizes > 0).all()
    assert listing.classes == tuple(sorted(listing.classes))


def test_file_list(tmp_path) -> None:
    paths = make_corpus(tmp_path, 3)
    rel = [p.relative_to(tmp_path).as_posix() for p in paths]
    (tmp_path / "list.txt").write_text(f"# comment\n{rel[0]} 4\n{rel[2]} 0\n")
    listing = list_dataset(tmp_path, tmp_path / "list.txt")
    assert list(listing.paths) == [rel[0], rel[2]] and list(listing.labels) == [4, 0]
    assert listing.sizes is None  # a file list is taken as it is: no file is touched
    (tmp_path / "bad.txt").write_text(f"{rel[0]} cat\n")
    with pytest.raises(DatasetError, match=r"bad.txt:1: expected"):
        list_dataset(tmp_path, tmp_path / "bad.txt")
    (tmp_path / "outside.txt").write_text("../nope.jpg 1\n")
    with pytest.raises(DatasetError, match=r"outside.txt:1: .*not a path inside"):
        list_dataset(tmp_path, tmp_path / "outside.txt")


def test_extensions_are_torchvisions_in_any_case(tmp_path) -> None:
    paths = make_corpus(tmp_path, 2)
    odd = paths[0].with_name("odd.Jpg")
    odd.write_bytes(paths[0].read_bytes())
    paths[0].with_name("notes.txt").write_text("not an image")
    listing = list_dataset(tmp_path)
    assert odd.relative_to(tmp_path).as_posix() in list(listing.paths)
    assert len(listing) == 3
