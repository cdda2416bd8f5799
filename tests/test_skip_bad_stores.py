"""Stores made with `dalidr reinforce --skip-bad`, past the teacher pass.

- `dalidr subset` keeps the skip marks (the `skipped` array) of the slots it keeps, so a view
  skipped only because its mix partner is unreadable stays skipped, and the loader on the subset
  serves none of those samples (nor the unreadable one), and every other.
- A listed file that cannot even be stat'ed (a file list naming a dangling link or a missing
  file) is skipped like any unreadable file, and the new store is accepted (its manifest size
  is -1, which the specification allows on a skipped sample only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from dalidr.augment.recipe import recipe
from dalidr.cli import main as cli_main
from dalidr.data.dataset import list_dataset
from dalidr.data.sample_data import make_corpus
from dalidr.errors import StoreError
from dalidr.teacher.reinforce import CompileMode, ReinforceConfig, reinforce
from dalidr.teacher.skips import skipped_views
from dalidr.training.loader import LastBatch, LoaderConfig, ReinforcedLoader
from store import StoreReader

IMAGES, SLOTS, KEEP, BAD = 8, 8, 4, 3


def _teacher(folder: Path) -> str:
    torch.manual_seed(0)
    checkpoint = folder / "teacher.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=3).state_dict(), str(checkpoint))
    return f"test_resnet@{checkpoint}"


def _config(folder: Path, root: Path, preset: str, **fields: object) -> ReinforceConfig:
    return ReinforceConfig(
        data=root, teacher=_teacher(folder), recipe=recipe(preset, output_size=32),
        slots=SLOTS, k=2, out=str(folder / "store"), seed=3, batch_size=16, block_size=4,
        slot_group=4, device="cpu", num_threads=2, compile=CompileMode.OFF, progress=False,
        skip_bad=True, **fields)  # type: ignore[arg-type]


def _served(url: str, root: Path) -> set[int]:
    config = LoaderConfig(batch_size=4, last_batch=LastBatch.PARTIAL)
    with ReinforcedLoader(url, root, config) as loader:
        return {int(s) for _ in loader for s in loader.served_samples}


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """RRC+Mix over 8 images, one of them not an image: its views and its partners' skipped."""
    folder = tmp_path_factory.mktemp("skip-mix")
    root = folder / "images"
    make_corpus(root, IMAGES, seed=2, long_side=(96, 160))
    (root / list_dataset(root, share=False).paths[BAD]).write_bytes(b"this is not an image")
    config = _config(folder, root, "rrc+mix")
    report = reinforce(config, rank=0, world=1)
    assert report.committed == report.num_blocks
    return root, config.out


def test_subset_keeps_the_skip_marks_of_the_kept_slots(mixed_store, tmp_path) -> None:
    root, url = mixed_store
    marks = skipped_views(url)
    kept = marks[:, :KEEP]
    assert kept[BAD].all()
    partner_only = [int(s) for s in np.flatnonzero(kept.any(axis=1)) if s != BAD]
    assert partner_only, "no view of the kept slots is skipped for its partner alone (seed?)"
    out = str(tmp_path / "small")
    assert cli_main(["subset", url, "--slots", str(KEEP), "--topk", "1", out]) == 0
    np.testing.assert_array_equal(skipped_views(out), kept)
    unserved = set(np.flatnonzero(kept.any(axis=1)).tolist())
    assert _served(out, root) == set(range(IMAGES)) - unserved
    # Run again: nothing pending, the marks unchanged (the copy resumes like a teacher pass).
    assert cli_main(["subset", url, "--slots", str(KEEP), "--topk", "1", out]) == 0
    np.testing.assert_array_equal(skipped_views(out), kept)


def test_a_file_that_cannot_be_stated_is_skipped_and_the_store_accepted(tmp_path) -> None:
    root = tmp_path / "images"
    make_corpus(root, 6, seed=5, long_side=(64, 96))
    listing = list_dataset(root, share=False)
    dangling = root / listing.paths[1]
    dangling.unlink()
    dangling.symlink_to(root / "no-such-file.jpg")
    (root / listing.paths[4]).unlink()  # listed, then gone before the scan
    file_list = tmp_path / "files.txt"
    file_list.write_text("".join(f"{p} {int(label)}\n"
                                 for p, label in zip(listing.paths, listing.labels, strict=True)))
    config = _config(tmp_path, root, "rrc", file_list=file_list)
    report = reinforce(config, rank=0, world=1)
    assert report.committed == report.num_blocks
    manifest = StoreReader(config.out).manifest
    assert np.flatnonzero(manifest.skipped).tolist() == [1, 4]
    assert manifest.sizes[[1, 4]].tolist() == [-1, -1]
    assert _served(config.out, root) == {0, 2, 3, 5}


def test_a_negative_size_is_refused_on_a_sample_that_is_not_skipped(tmp_path) -> None:
    from store.layout import open_layout
    from store.validate import check_manifest
    from store.writer import create_store
    from tests.store.helpers import make_config, make_manifest

    manifest = make_manifest(8, 3)
    url = str(tmp_path / "store")
    create_store(url, manifest, make_config())
    layout = open_layout(url)
    sizes = manifest.sizes.copy()
    sizes[2] = -1
    forged = type(manifest)(manifest.paths, manifest.labels, sizes, manifest.hashes,
                            manifest.image_hw, manifest.skipped)
    with pytest.raises(StoreError, match=r"manifest sample 2 .* byte size -1"):
        check_manifest(layout, forged)
    skipped = manifest.skipped.copy()
    skipped[2] = True
    check_manifest(layout, type(manifest)(manifest.paths, manifest.labels, sizes,
                                          manifest.hashes, manifest.image_hw, skipped))


def test_the_manifest_read_per_block_leaves_out_the_same_samples(mixed_store) -> None:
    """A loader reading the manifest per block finds the unreadable sample from the blocks'
    skip counts and serves exactly what the loader reading it whole serves (partners too)."""
    from dalidr.training.loader import DatasetCheck

    root, url = mixed_store
    config = LoaderConfig(batch_size=4, last_batch=LastBatch.PARTIAL)
    with ReinforcedLoader(url, root, config, check=DatasetCheck.MANIFEST) as loader:
        assert loader.listing is None  # read per block
        lazy = {int(s) for _ in loader for s in loader.served_samples}
    assert lazy == _served(url, root) and BAD not in lazy
