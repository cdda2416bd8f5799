"""Image sizes from JPEG headers, read when a batch needs them and cached beside the data."""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dalidr.data import data_source, node_cache
from dalidr.data.dataset import list_dataset
from dalidr.data.image_sizes import ImageSizes, jpeg_size, read_image_size
from dalidr.data.sample_data import make_corpus
from dalidr.errors import ImageError


def _pil_hw(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size[1], image.size[0]


def test_header_sizes_are_pils(tmp_path) -> None:
    paths = make_corpus(tmp_path / "data", 12)  # varied sizes, qualities and subsampling
    photo = Image.open(paths[0]).convert("RGB").resize((333, 517))
    extra = {
        "progressive.jpg": dict(progressive=True, quality=80),
        # An ICC profile of 20 KB puts the frame header past the first read.
        "icc.jpg": dict(icc_profile=bytes(range(256)) * 80),
    }
    for name, options in extra.items():
        photo.save(tmp_path / name, format="JPEG", **options)
        paths.append(tmp_path / name)
    photo.save(tmp_path / "image.png")
    paths.append(tmp_path / "image.png")  # not a JPEG: PIL reads it
    for path in paths:
        assert read_image_size(path) == _pil_hw(path), path
    assert jpeg_size((tmp_path / "icc.jpg").read_bytes()[:4096]) is None  # needs more bytes
    assert jpeg_size(b"GIF89a....") is None
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10garbage")
    with pytest.raises(ImageError, match="broken.jpg"):
        read_image_size(tmp_path / "broken.jpg")


def _count_opens(monkeypatch) -> list[str]:
    opened: list[str] = []

    def counting(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(data_source, "open", counting, raising=False)
    return opened


def test_sizes_are_read_once_when_needed_and_kept_beside_the_data(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(node_cache.ENV, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    make_corpus(tmp_path / "data", 20)
    listing = list_dataset(tmp_path / "data")
    truth = np.array([_pil_hw(listing.file(i)) for i in range(len(listing))])
    opened = _count_opens(monkeypatch)
    sizes = ImageSizes(listing)
    assert opened == []  # nothing is read at construction
    full = sizes.full(np.array([3, 7, 3]))
    assert len(opened) == 2 and full.shape == (20, 2)
    np.testing.assert_array_equal(full[[3, 7]], truth[[3, 7]])
    sizes.full(np.array([7]))
    assert len(opened) == 2  # read once
    # Another process (or the next run) finds them in the file beside the data.
    assert sizes.path is not None and sizes.path.parent == tmp_path / "data" / ".dalidr"
    again = ImageSizes(listing)
    full = again.full(np.arange(20))
    assert len(opened) == 20
    np.testing.assert_array_equal(full, truth)
    assert len(list_dataset(tmp_path / "data")) == 20  # the cache folder is not a class


def test_sizes_go_to_the_node_cache_or_memory_where_the_data_is_read_only(
        tmp_path, monkeypatch) -> None:
    make_corpus(tmp_path / "data", 4)
    (tmp_path / "data" / ".dalidr").write_text("not a folder")  # cannot hold the cache
    listing = list_dataset(tmp_path / "data")
    monkeypatch.setenv(node_cache.ENV, str(tmp_path / "node"))
    sizes = ImageSizes(listing)
    assert sizes.path is not None and sizes.path.parent == tmp_path / "node"
    monkeypatch.setenv(node_cache.ENV, "off")
    in_memory = ImageSizes(listing)
    assert in_memory.path is None
    assert (in_memory.full(np.arange(4)) == sizes.full(np.arange(4))).all()


def test_a_full_disk_keeps_sizes_in_memory_instead_of_crashing(tmp_path) -> None:
    """A memory map of a sparse cache file dies of SIGBUS at its first write to a page the
    full disk cannot hold; the cache file's blocks are allocated when it is made, so a full
    disk is an OSError there and the sizes stay in memory. In a child: SIGBUS kills it."""
    import os
    import shutil
    import subprocess
    import sys

    from dalidr.data.sample_data import link_tree
    from tests.faults import PAGE, full_disk

    mount = tmp_path / "mnt"
    with full_disk(mount, 96 * PAGE):
        sources = make_corpus(mount / "src", 3)
        root = link_tree(mount / "data", sources, 4000, 4)  # a 16 kB cache file: 4 pages
        free = shutil.disk_usage(mount).free
        try:
            (mount / "filler").write_bytes(b"\0" * (free - 2 * PAGE))  # 2 pages left
        except OSError:
            pytest.skip("cannot fill the tmpfs to a known number of free pages")
        code = ("import numpy as np\n"
                "from dalidr.data.dataset import list_dataset\n"
                "from dalidr.data.image_sizes import ImageSizes\n"
                f"listing = list_dataset({str(root)!r}, share=False)\n"
                "sizes = ImageSizes(listing)\n"
                "hw = sizes.full(np.arange(len(listing)))\n"
                "print(sizes.path, len(listing), hw.min(), flush=True)\n")
        env = {**os.environ, node_cache.ENV: "off", "PYTHONPATH": str(Path.cwd())}
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
        assert result.stdout.split()[:2] == ["None", "4000"]  # kept in memory
        assert int(result.stdout.split()[2]) > 0
        assert not list((root / ".dalidr").glob("*")) if (root / ".dalidr").exists() else True
