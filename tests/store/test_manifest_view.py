"""The manifest read per block: a loader that trusts the store's manifest reads only its share.

Real stores on disk, real JPEGs, real DALI CPU pipelines: the lazy loader (`DatasetCheck.MANIFEST`)
must serve exactly what the loader that reads the whole manifest serves, read no block of the
manifest it does not need, refuse damage by block, and fall back (then upgrade) on a store made
before the manifest's block digests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from dalidr.errors import DatasetError, StoreError
from dalidr.training.loader import DatasetCheck, LastBatch, LoaderConfig, ReinforcedLoader
from store.manifest import Manifest, sampled_positions
from store.manifest_view import DIGESTS, ManifestView, manifest_digests
from store.reader import StoreReader
from store.upgrade import upgrade_store
from tests.store_builder import BuiltStore, build_store


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltStore:
    return build_store(tmp_path_factory.mktemp("lazy"), images=24, block_size=4)


def _batches(loader: ReinforcedLoader, epochs: int = 2) -> list[tuple[list[int], np.ndarray,
                                                                       np.ndarray]]:
    out = []
    with loader:
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            for images, targets in loader:
                out.append((loader.served_samples.tolist(), images.numpy(), targets.numpy()))
    return out


@pytest.mark.parametrize("p", [1.0, 0.5])
def test_lazy_loader_serves_what_the_eager_loader_serves(built: BuiltStore, p: float) -> None:
    config = LoaderConfig(batch_size=4, p=p, last_batch=LastBatch.PARTIAL)
    eager = ReinforcedLoader(built.url, built.root, config, manifest=built.manifest, rank=1,
                             world=2)
    assert eager.listing is not None
    lazy = ReinforcedLoader(built.url, built.root, config, check=DatasetCheck.MANIFEST,
                            rank=1, world=2)
    assert lazy.listing is None  # no listing: paths come from the manifest per block
    expected, got = _batches(eager), _batches(lazy)
    assert [s for s, _, _ in got] == [s for s, _, _ in expected]
    for (_, images, targets), (_, want_images, want_targets) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(targets, want_targets)
    # The whole manifest was never read; only the blocks the rank served (and sampled).
    layout = lazy.reader.layout
    assert "manifest" not in layout.__dict__
    view = layout.manifest_view
    assert view is not None and view.blocks_read <= view.num_blocks


def test_a_rank_reads_its_share_of_the_manifest(tmp_path: Path) -> None:
    built = build_store(tmp_path, images=64, block_size=4, slots=2)
    for epoch in range(2):
        reader = StoreReader(built.url)
        reader.read_epoch(reader.plan(epoch, rank=1, world=4))
        view = reader.manifest_view
        assert view is not None
        # 16 blocks among 4 ranks: an epoch of rank 1 decodes its 4 (the plan keeps locality).
        assert view.blocks_read == view.num_blocks // 4, (epoch, view.blocks_read)
        assert "manifest" not in reader.layout.__dict__


def test_a_damaged_manifest_block_is_refused_by_name(tmp_path: Path) -> None:
    built = build_store(tmp_path, images=24, block_size=4)
    group = zarr.open_group(built.url, mode="r+")
    labels = group["manifest/label"]
    assert isinstance(labels, zarr.Array)
    values = np.asarray(labels[...])
    values[9] = (values[9] + 1) % 3  # block 2, a label still in range
    labels[...] = values
    reader = StoreReader(built.url)
    view = reader.manifest_view
    assert view is not None
    view.block(0)  # an untouched block still reads
    with pytest.raises(StoreError, match=r"manifest block 2 \(samples 8\.\.11\).*digest"):
        view.block(2)


def test_forged_block_digests_are_refused(tmp_path: Path) -> None:
    built = build_store(tmp_path, images=12, block_size=4)
    group = zarr.open_group(built.url, mode="r+")
    digests = group[DIGESTS]
    assert isinstance(digests, zarr.Array)
    forged = np.asarray(digests[...]).copy()
    forged[1, 0] ^= np.uint64(1)
    digests[...] = forged
    with pytest.raises(StoreError, match="block digests .* do not match their seal"):
        ManifestView.open(StoreReader(built.url).layout)


def test_a_data_root_that_differs_is_refused_at_start(tmp_path: Path) -> None:
    built = build_store(tmp_path, images=12, block_size=4)
    config = LoaderConfig(batch_size=4)
    for path in built.listing.paths:  # every file changes: the sampled ones too
        file = built.root / path
        file.write_bytes(file.read_bytes() + b"\0")
    with pytest.raises(DatasetError, match="sampled files differ"):
        ReinforcedLoader(built.url, built.root, config, check=DatasetCheck.MANIFEST)


def test_a_store_without_block_digests_falls_back_then_upgrades(tmp_path: Path) -> None:
    built = build_store(tmp_path, images=12, block_size=4)
    before = _batches(ReinforcedLoader(built.url, built.root, LoaderConfig(batch_size=4),
                                       check=DatasetCheck.MANIFEST), epochs=1)
    shutil.rmtree(Path(built.url) / DIGESTS)  # a store of the release before the digests
    old = ReinforcedLoader(built.url, built.root, LoaderConfig(batch_size=4),
                           check=DatasetCheck.MANIFEST)
    assert old.listing is not None  # the manifest read whole, as before
    assert [s for s, _, _ in _batches(old, epochs=1)] == [s for s, _, _ in before]
    report = upgrade_store(built.url)
    assert report.manifest_digests and report.changed
    assert StoreReader(built.url).manifest_view is not None
    assert not upgrade_store(built.url).changed  # a second run writes nothing


def test_block_digests_cover_every_column_and_count_skips() -> None:
    from dalidr.data.path_list import PathList

    n = 10
    base = dict(paths=PathList.from_strings([f"c/{i}.jpg" for i in range(n)]),
                labels=np.arange(n) % 3, sizes=np.arange(n) + 100,
                hashes=np.zeros((n, 32), np.uint8), image_hw=np.full((n, 2), 32),
                skipped=np.zeros(n, bool))
    reference = manifest_digests(Manifest(**base), 4)
    assert reference.shape == (3, 2) and (reference[:, 1] == 0).all()
    for column, change in [("labels", lambda a: np.where(np.arange(n) == 5, 2 - a, a)),
                           ("sizes", lambda a: a + (np.arange(n) == 5)),
                           ("image_hw", lambda a: a + (np.arange(n) == 5)[:, None]),
                           ("skipped", lambda a: np.arange(n) == 5)]:
        changed = manifest_digests(Manifest(**{**base, column: change(base[column])}), 4)
        assert changed[1, 0] != reference[1, 0], column  # sample 5 is in block 1
        assert (changed[[0, 2], 0] == reference[[0, 2], 0]).all(), column
    renamed = manifest_digests(Manifest(**{**base, "paths": PathList.from_strings(
        [f"c/{i}.jpg" if i != 5 else "c/x.jpg" for i in range(n)])}), 4)
    assert renamed[1, 0] != reference[1, 0]
    marks = np.isin(np.arange(n), [1, 2, 5])
    skipped = manifest_digests(Manifest(**{**base, "skipped": marks}), 4)
    assert skipped[:, 1].tolist() == [2, 1, 0]


@pytest.mark.parametrize("n", [20, 5_000, 10_000_000])
def test_sampled_positions_are_deterministic_and_skip_skipped_samples(n: int) -> None:
    def skipped(samples: np.ndarray) -> np.ndarray:
        return samples % 3 == 0

    chosen = sampled_positions(n, skipped, 32)
    assert np.array_equal(chosen, sampled_positions(n, skipped, 32))
    assert len(chosen) == min(32, n - len(range(0, n, 3)))
    assert len(set(chosen.tolist())) == len(chosen) and not (chosen % 3 == 0).any()
    assert (np.diff(chosen) > 0).all() and chosen.max() < n


def test_inspect_names_a_block_digest_that_disagrees(tmp_path: Path) -> None:
    from store.inspect import inspect_store

    built = build_store(tmp_path, images=12, block_size=4)
    assert inspect_store(built.url).problems == []
    group = zarr.open_group(built.url, mode="r+")
    digests = group[DIGESTS]
    assert isinstance(digests, zarr.Array)
    forged = np.asarray(digests[...]).copy()
    forged[2, 0] ^= np.uint64(1)
    digests[...] = forged  # resealed too: what only a comparison with the manifest catches
    seal = dict(digests.attrs["dalidr_manifest_digests"])  # type: ignore[arg-type]
    import hashlib

    seal["sha256"] = hashlib.sha256(forged.astype("<u8").tobytes()).hexdigest()
    digests.attrs["dalidr_manifest_digests"] = seal
    problems = inspect_store(built.url).problems
    assert problems and "block 2 (samples 8..11)" in problems[0], problems


# ------------------------------------------------------------------ the listing check, per block


@pytest.mark.parametrize("p", [1.0, 0.5])
def test_the_listing_check_reads_the_manifest_per_block(built: BuiltStore, p: float) -> None:
    """The default check (the data listed and compared with the manifest) streams the
    manifest's blocks and keeps none of them whole: the same batches as the eager loader."""
    config = LoaderConfig(batch_size=4, p=p, last_batch=LastBatch.PARTIAL)
    eager = ReinforcedLoader(built.url, built.root, config, manifest=built.manifest, rank=1,
                             world=2)
    listed = ReinforcedLoader(built.url, built.root, config, rank=1, world=2)
    assert listed.listing is not None and len(listed.listing) == len(built.manifest)
    assert "manifest" not in listed.reader.layout.__dict__  # never decoded whole
    expected, got = _batches(eager), _batches(listed)
    assert [s for s, _, _ in got] == [s for s, _, _ in expected]
    for (_, images, targets), (_, want_images, want_targets) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(targets, want_targets)


@pytest.mark.parametrize("change", ["size", "label", "path"])
def test_a_listing_that_differs_is_named_as_the_whole_manifest_names_it(
        tmp_path: Path, change: str) -> None:
    """Per block or whole, the first differing sample is named in the same words."""
    built = build_store(tmp_path, images=24, block_size=4)
    victim = 13  # block 3
    path = built.root / built.listing.paths[victim]
    if change == "size":
        path.write_bytes(path.read_bytes() + b"\0")
    elif change == "label":  # moved to another class folder
        classes = sorted(p.name for p in built.root.iterdir() if p.is_dir())
        other = next(c for c in classes if c != path.parent.name)
        path.rename(built.root / other / path.name)
    else:
        path.rename(path.with_name("renamed-" + path.name))
    config = LoaderConfig(batch_size=4)
    with pytest.raises(DatasetError) as lazy:
        ReinforcedLoader(built.url, built.root, config)
    shutil.rmtree(Path(built.url) / DIGESTS)  # the release before the digests: read whole
    with pytest.raises(DatasetError) as eager:
        ReinforcedLoader(built.url, built.root, config)
    assert str(lazy.value) == str(eager.value)
    assert "differs" in str(lazy.value) or "lists" in str(lazy.value)
