"""Dataset listings: ImageFolder order and file lists, with errors naming the line."""

from __future__ import annotations

import json
import mmap
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dalidr.data import node_cache
from dalidr.data.dataset import list_dataset
from dalidr.data.sample_data import link_tree, make_corpus
from dalidr.errors import DatasetError


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


def _tree(tmp_path: Path, count: int = 60, classes: int = 4) -> Path:
    sources = make_corpus(tmp_path / "src", 5)
    return link_tree(tmp_path / "data", sources, count, classes)


_CHILD = """
import json, os, sys
from dalidr.data.dataset import list_dataset
scandirs = []
sys.addaudithook(lambda event, args: scandirs.append(1) if event == "os.scandir" else None)
listing = list_dataset(sys.argv[1])
print(json.dumps({"scandirs": len(scandirs), "n": len(listing),
                  "digest": listing.paths.digest().hex(), "sizes": listing.sizes.tolist()}))
"""


def test_ranks_of_a_node_share_one_listing(tmp_path) -> None:
    """Two processes started together as torchrun's local ranks: one walks, one maps."""
    root = _tree(tmp_path, 200, 5)
    env = {**os.environ, "PYTHONPATH": str(Path.cwd()), "LOCAL_WORLD_SIZE": "2",
           "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    env.pop(node_cache.ENV, None)
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(root)], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    alone = list_dataset(root, share=False)
    folders = 1 + len(alone.classes)  # one walk: the root and each class folder
    assert sorted(o["scandirs"] for o in outs) == [0, folders]
    for out in outs:
        assert out["n"] == 200 and out["digest"] == alone.paths.digest().hex()
        assert out["sizes"] == alone.sizes.tolist()
    assert list((tmp_path / "tmp").rglob("*.bin"))  # the cache is node-local (under TMPDIR)


def _mapped(array: np.ndarray) -> bool:
    while isinstance(array, np.ndarray):
        array = array.base
    return isinstance(array, mmap.mmap)


def _count_scandirs(monkeypatch, root: Path) -> list[str]:
    """Folders of `root` listed from now on."""
    calls: list[str] = []
    real = os.scandir

    def counting(path):  # type: ignore[no-untyped-def]
        if str(path).startswith(str(root)):
            calls.append(str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", counting)
    return calls


def test_shared_listing_is_reused_until_the_tree_changes(tmp_path, monkeypatch) -> None:
    root = _tree(tmp_path)
    monkeypatch.setenv(node_cache.ENV, str(tmp_path / "cache"))
    calls = _count_scandirs(monkeypatch, root)
    first = list_dataset(root)
    assert len(calls) == 5 and len(first) == 60
    again = list_dataset(root)
    assert len(calls) == 5  # mapped, not walked
    assert again.paths == first.paths and (again.sizes == first.sizes).all()
    assert _mapped(again.paths.data) and _mapped(again.sizes)  # pages shared, not copied
    # A new image in a class folder changes its mtime: listed afresh.
    os.link(root / first.paths[0], root / "n00000002" / "extra.jpg")
    changed = list_dataset(root)
    assert len(calls) == 10 and len(changed) == 61
    expected = list(changed.paths)
    assert "n00000002/extra.jpg" in expected
    # A damaged cache file is listed afresh, never trusted. (The cache is only ever replaced,
    # never written in place: the listings mapped from it stay valid.)
    (cache,) = (tmp_path / "cache").glob("*.bin")
    damaged = cache.with_suffix(".damaged")
    damaged.write_bytes(b"DALIDR-NODE-CACHE-1\n" + b"\xff" * 40)
    damaged.replace(cache)
    assert list(changed.paths) == expected
    assert list(list_dataset(root).paths) == expected and len(calls) == 15
    # A lock left by a process that is gone does not block.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.split()[0]
    cache.unlink()
    cache.with_suffix(".lock").write_text(f"{socket.gethostname()} {dead}")
    assert list(list_dataset(root).paths) == expected and len(calls) == 20
    assert not cache.with_suffix(".lock").exists()
    # Off: no cache is read or written.
    monkeypatch.setenv(node_cache.ENV, "off")
    cache.unlink()
    list_dataset(root)
    assert not cache.exists() and len(calls) == 25


def test_file_list_listing_is_shared_and_follows_the_list(tmp_path, monkeypatch) -> None:
    root = _tree(tmp_path)
    monkeypatch.setenv(node_cache.ENV, str(tmp_path / "cache"))
    listed = tmp_path / "list.txt"
    listed.write_text("n00000000/n00000000_0.JPEG 3\nn00000001/n00000001_1.JPEG 1\n")
    assert list(list_dataset(root, listed).labels) == [3, 1]
    listed.write_text("n00000000/n00000000_0.JPEG 3\n")
    os.utime(listed, ns=(1, 2))  # an mtime that differs whatever the clock's resolution
    assert list(list_dataset(root, listed).labels) == [3]


def _torchvision_tree(tmp_path: Path) -> Path:
    """Class names whose order depends on the sort (case, digits, punctuation)."""
    sources = make_corpus(tmp_path / "src", 3)
    root = tmp_path / "data"
    for i, name in enumerate(["b", "B", "_x", "10", "9", "a-b", "a"]):
        (root / name).mkdir(parents=True)
        for j in range(1 + i % 2):
            os.link(sources[(i + j) % 3], root / name / f"{j}.jpg")
    return root


def test_class_indices_are_torchvisions(tmp_path) -> None:
    from torchvision.datasets import ImageFolder

    root = _torchvision_tree(tmp_path)
    theirs = ImageFolder(str(root))
    listing = list_dataset(root, share=False)
    assert listing.classes == tuple(theirs.classes)
    assert [Path(p).relative_to(root).as_posix() for p, _ in theirs.samples] == list(
        listing.paths)
    assert list(listing.labels) == theirs.targets
    # dalidr's own cache folder in the root is not a class (image sizes are kept there).
    (root / ".dalidr").mkdir()
    (root / ".dalidr" / "image-hw-0.npy").write_bytes(b"\x93NUMPY")
    again = list_dataset(root, share=False)
    assert again.classes == listing.classes and list(again.labels) == list(listing.labels)


@pytest.mark.parametrize("share", [False, True], ids=["alone", "node-cache"])
def test_a_hidden_class_folder_is_refused_by_name(tmp_path, monkeypatch, share) -> None:
    """torchvision counts `.hidden` as class 0; skipping it would shift every label."""
    from torchvision.datasets import ImageFolder

    root = _torchvision_tree(tmp_path)
    monkeypatch.setenv(node_cache.ENV, str(tmp_path / "cache"))
    before = list_dataset(root, share=share)  # stored in the node cache when shared
    (root / ".hidden").mkdir()
    os.link(root / "a" / "0.jpg", root / ".hidden" / "0.jpg")
    assert ImageFolder(str(root)).classes[0] == ".hidden"
    with pytest.raises(DatasetError, match=r"data: hidden folder\(s\) '\.hidden' would be class "
                                           r"folders: torchvision's ImageFolder counts them"):
        list_dataset(root, share=share)
    (root / ".hidden" / "0.jpg").unlink()
    (root / ".hidden").rmdir()
    assert list(list_dataset(root, share=share).labels) == list(before.labels)
    # Hidden files and folders inside a class folder are listed, as torchvision lists them.
    os.link(root / "a" / "0.jpg", root / "a" / ".dot.jpg")
    (root / "a" / ".sub").mkdir()
    os.link(root / "a" / "0.jpg", root / "a" / ".sub" / "1.jpg")
    theirs = ImageFolder(str(root))
    assert sorted(list_dataset(root, share=share).paths) == sorted(
        Path(p).relative_to(root).as_posix() for p, _ in theirs.samples)


def test_an_empty_class_folder_is_refused_by_name(tmp_path) -> None:
    from torchvision.datasets import ImageFolder

    root = _torchvision_tree(tmp_path)
    (root / "empty").mkdir()
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "nested" / "notes.txt").write_text("no image here")
    with pytest.raises(FileNotFoundError, match="empty, nested"):
        ImageFolder(str(root))
    with pytest.raises(DatasetError, match=r"class folder\(s\) 'empty', 'nested' hold no image "
                                           r"files \(\.jpg, .*torchvision's ImageFolder refuses"):
        list_dataset(root, share=False)


@pytest.mark.parametrize("command", [
    ["reinforce", "--teacher", "resnet10t", "--slots", "2", "--topk", "1", "--out", "s.zarr",
     "--device", "cpu", "--no-progress"],
    ["train", "--mode", "erm", "--model", "resnet10t", "--epochs", "1", "--out", "run",
     "--device", "cpu", "--no-progress"],
    ["eval", "--teacher", "resnet10t", "--device", "cpu", "--no-progress"],
], ids=lambda c: c[0])
def test_every_command_names_an_empty_class_folder(tmp_path, monkeypatch, capsys,
                                                   command) -> None:
    from dalidr.cli import main

    root = _torchvision_tree(tmp_path)
    (root / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main([command[0], "--data", str(root), *command[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dalidr {command[0]}: error: dataset root {root}: class folder(s) "
                          "'empty' hold no image files")
    assert not (tmp_path / "s.zarr").exists()


def test_a_node_cache_that_cannot_be_written_warns_and_leaves_nothing(tmp_path,
                                                                      monkeypatch) -> None:
    import errno

    root = _torchvision_tree(tmp_path)
    cache = tmp_path / "cache"
    monkeypatch.setenv(node_cache.ENV, str(cache))

    def full(src, dst):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(node_cache.os, "replace", full)
    with pytest.warns(UserWarning, match=rf"node cache {cache} unusable .*No space left"):
        listing = list_dataset(root)
    assert list(listing.labels) == list(list_dataset(root, share=False).labels)
    assert sorted(p.name for p in cache.iterdir()) == []  # no temporary file, no lock
