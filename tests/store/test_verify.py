"""`dalidr verify` and `dalidr inspect --data`: every served file against the store, by path."""

from __future__ import annotations

import pytest

from dalidr.cli import main
from dalidr.data.dataset import list_dataset
from dalidr.data.sample_data import make_corpus
from store.manifest import scan_manifest
from tests.store.helpers import make_config, write_store


@pytest.fixture()
def tree_and_store(tmp_path):
    root = tmp_path / "data"
    make_corpus(root, 8, seed=5)
    listing = list_dataset(root)
    damaged = root / listing.paths[3]
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2] + b"\xff\xd9")  # cut short, then closed
    manifest = scan_manifest(root, listing.paths, listing.labels)
    url = str(tmp_path / "store")
    write_store(url, manifest, make_config(num_classes=100))
    return root, url, listing


@pytest.mark.parametrize("command", [["verify"], ["inspect", "--no-verify"]])
def test_every_problem_is_named(tree_and_store, capsys, command) -> None:
    root, url, listing = tree_and_store
    changed = root / listing.paths[6]
    data = bytearray(changed.read_bytes())
    data[100] ^= 0x55
    changed.write_bytes(bytes(data))
    assert main([*command, url, "--data", str(root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"sample 3 ({root / listing.paths[3]}): damaged JPEG data" in out
    assert f"sample 6 ({changed}): content differs" in out
    assert "2 problem(s)" in out


def test_a_clean_tree_passes(tmp_path, capsys) -> None:
    root = tmp_path / "data"
    make_corpus(root, 5, seed=6)
    listing = list_dataset(root)
    url = str(tmp_path / "store")
    write_store(url, scan_manifest(root, listing.paths, listing.labels),
                make_config(num_classes=100))
    assert main(["verify", url, "--data", str(root), "--no-progress"]) == 0
    assert "5 files" in capsys.readouterr().out
    (root / listing.paths[0]).unlink()
    assert main(["verify", url, "--data", str(root), "--no-progress"]) == 1
    assert "listing of" in capsys.readouterr().out
