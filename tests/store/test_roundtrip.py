"""Records and targets come back from a store as they went in (targets within the KL budget)."""

from __future__ import annotations

import numpy as np
import pytest

from dalidr.augment.recipe import PRESETS, recipe
from dalidr.augment.records import draw_records
from store.config import Compression
from store.encoding import topk_kl
from store.prefetch import EpochPrefetcher
from store.reader import StoreReader
from store.synthetic import synthetic_teacher
from tests.store.helpers import NUM_SAMPLES, make_config, make_manifest, producer, write_store


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, object, object]:
    manifest, config = make_manifest(), make_config()
    url = str(tmp_path_factory.mktemp("store") / "store")
    write_store(url, manifest, config)
    return url, manifest, config


def test_blocks_round_trip(written) -> None:
    url, manifest, config = written
    reader = StoreReader(url, dataset=manifest)
    produce = producer(config, manifest)
    for block in range(reader.num_blocks):
        samples = reader.layout.block_range(block)
        records, classes, probs = produce(samples)
        got_records, got = reader.read_block(block)
        assert got_records.dtype == records.dtype
        assert got_records.tobytes() == records.tobytes()
        assert np.array_equal(got.classes, classes)  # the teacher gave them sorted already
        # sqrt-quantised: within half a level of sqrt(p), and KL well under the 1e-3 budget
        levels = config.prob_levels
        assert np.abs(np.sqrt(got.probs) - np.sqrt(np.maximum(probs, 1 / levels**2))).max() \
            <= 0.5 / levels + 1e-6
        assert topk_kl(probs, got.probs) < 1e-3


def test_epoch_reads_the_planned_views(written) -> None:
    url, manifest, config = written
    reader = StoreReader(url)
    samples = np.arange(manifest.labels.size)
    records = draw_records(config.recipe, config.seed, samples, np.arange(config.slots),
                           manifest.image_hw)
    classes, _ = synthetic_teacher(config.seed, samples, config.slots, config.k,
                                   config.num_classes, manifest.labels)
    for epoch in (0, 1, 7, 12, 30):
        data = reader.epoch(epoch)
        plan = data.plan
        assert data.records.tobytes() == records[plan.samples, plan.slots].tobytes()
        assert np.array_equal(data.targets.classes, classes[plan.samples, plan.slots])
        assert data.targets.probs.dtype == np.float32 and data.targets.probs.shape == (37, 5)


def test_prefetcher_matches_direct_reads(written) -> None:
    url, _, _ = written
    reader = StoreReader(url)
    with EpochPrefetcher(reader, rank=1, world=3, start_epoch=4) as prefetcher:
        # An epoch of 13 views is one piece with the default sizes.
        got = [data for _, data in zip(range(3), prefetcher, strict=False)]
        again = prefetcher.get(5)  # going back works too (read on demand)
    for epoch, data in zip((4, 5, 6), got, strict=True):
        direct = reader.epoch(epoch, rank=1, world=3)
        assert data.plan.epoch == epoch and data.steps == range(len(direct))
        assert np.array_equal(data.samples, direct.plan.samples)
        assert data.records.tobytes() == direct.records.tobytes()
        assert np.array_equal(data.targets.probs, direct.targets.probs)
    assert again.records.tobytes() == got[1].records.tobytes()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_recipe_round_trips(tmp_path, preset: str) -> None:
    manifest = make_manifest(20)
    config = make_config(recipe=PRESETS[preset], slots=5, slot_group=2, block_size=6)
    write_store(str(tmp_path / "s"), manifest, config)
    reader = StoreReader(str(tmp_path / "s"))
    records, _, _ = producer(config, manifest)(range(0, 20))
    got = np.concatenate([reader.read_block(b)[0] for b in range(reader.num_blocks)])
    assert got.tobytes() == records.tobytes()


@pytest.mark.parametrize("scheme", ["memory://", "file://"])
def test_fsspec_urls(tmp_path, scheme: str) -> None:
    url = f"memory://dalidr-test/{tmp_path.name}" if scheme == "memory://" else \
        f"file://{tmp_path}/store"
    manifest, config = make_manifest(12), make_config(compression=Compression.LZMA)
    write_store(url, manifest, config)
    reader = StoreReader(url, dataset=manifest)
    assert reader.committed().all()
    records, classes, _ = producer(config, manifest)(range(0, 8))
    got_records, got = reader.read_block(0)
    assert got_records.tobytes() == records.tobytes()
    assert np.array_equal(got.classes, classes)
    assert reader.epoch(3).records.shape == (12,)


def test_all_zero_columns_are_stored_and_read(tmp_path) -> None:
    """zarr skips chunks equal to the fill value; a committed block must still be complete."""
    config = make_config(recipe=recipe("rrc+ra/re", erase_prob=0.0))
    manifest = make_manifest()
    write_store(str(tmp_path / "s"), manifest, config)
    reader = StoreReader(str(tmp_path / "s"))
    records, _ = reader.read_block(0)
    assert (records["erase"] == 0).all()
    assert reader.epoch(0).records.shape == (NUM_SAMPLES,)
