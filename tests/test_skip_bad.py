"""A store made with `--skip-bad` is loadable: unreadable files are recorded, never read or
served, and any other change to the dataset is still caught (issue 12, point 5)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from dalidr.augment.recipe import recipe
from dalidr.data.dataset import list_dataset
from dalidr.data.sample_data import make_corpus
from dalidr.errors import DatasetError
from dalidr.teacher.reinforce import CompileMode, ReinforceConfig, reinforce
from dalidr.training.loader import LastBatch, LoaderConfig, ReinforcedLoader
from store import StoreReader

IMAGES = 16


@pytest.fixture(scope="module")
def skipped_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[int]]:
    folder = tmp_path_factory.mktemp("skip-bad")
    root = folder / "images"
    make_corpus(root, IMAGES, seed=4)
    listing = list_dataset(root)
    files = [root / p for p in listing.paths]
    bad = {2: b"", 6: np.random.default_rng(0).bytes(5000),
           9: files[9].read_bytes()[: files[9].stat().st_size // 2]}
    for i, data in bad.items():
        files[i].write_bytes(data)
    text = files[12].with_suffix(".png")  # a text file under an image name: a new sample
    text.write_text("PNG? no, a note someone saved with the wrong name\n" * 20)
    listing = list_dataset(root)
    bad_samples = sorted([*bad, listing.paths.index(text.relative_to(root).as_posix())])
    torch.manual_seed(0)
    checkpoint = folder / "teacher.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=3).state_dict(), str(checkpoint))
    config = ReinforceConfig(
        data=root, teacher=f"test_resnet@{checkpoint}", recipe=recipe("rrc", output_size=32),
        slots=2, k=2, out=str(folder / "store"), seed=3, batch_size=8, block_size=4,
        slot_group=2, device="cpu", num_threads=2, compile=CompileMode.OFF, progress=False,
        skip_bad=True)
    report = reinforce(config, rank=0, world=1)
    assert report.committed == report.num_blocks
    return root, config.out, bad_samples


def _served(url: str, root: Path) -> list[int]:
    config = LoaderConfig(batch_size=4, last_batch=LastBatch.PARTIAL)
    with ReinforcedLoader(url, root, config) as loader:
        return sorted(int(s) for _ in loader for s in loader.served_samples)


def test_the_loader_serves_every_other_sample(skipped_store) -> None:
    root, url, bad = skipped_store
    total = len(list_dataset(root))
    assert _served(url, root) == [i for i in range(total) if i not in bad]
    skipped = StoreReader(url).manifest.skipped
    assert set(np.flatnonzero(skipped)) <= set(bad)  # unreadable at scan time; the rest at decode


def test_skipped_files_may_change_or_go_but_nothing_else(skipped_store, tmp_path) -> None:
    import shutil

    root, url, bad = skipped_store
    copy = tmp_path / "images"
    shutil.copytree(root, copy)
    listing = list_dataset(copy)
    (copy / listing.paths[bad[0]]).unlink()  # the zero-byte file, deleted
    assert _served(url, copy) == [i for i in range(len(listing)) if i not in bad]
    victim = copy / listing.paths[0]
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(DatasetError, match=rf"{listing.paths[0]}.*bytes"):
        ReinforcedLoader(url, copy, dataclasses.replace(LoaderConfig(batch_size=4)))
