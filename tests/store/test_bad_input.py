"""Every kind of bad input fails with an error naming its culprit; nothing is unpickled."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from dalidr.errors import DatasetError, OptionError, StoreError
from store.config import ATTRS_KEY, SCHEMA_VERSION
from store.inspect import inspect_store
from store.manifest import Manifest
from store.plan import PlanSpec, plan_epoch
from store.prefetch import EpochPrefetcher
from store.reader import StoreReader
from store.subset import subset_store
from tests.store.helpers import make_config, make_manifest, write_store


@pytest.fixture()
def store_dir(tmp_path_factory: pytest.TempPathFactory, tmp_path):
    """A fresh copy of a complete store, free to damage."""
    cache = tmp_path_factory.getbasetemp() / "pristine-store"
    if not cache.exists():
        write_store(str(cache), make_manifest(), make_config())
    shutil.copytree(cache, tmp_path / "store")
    return tmp_path / "store"


def _views_of_block(block: int, slot: int = 0) -> tuple[np.ndarray, np.ndarray]:
    samples = np.arange(block * 8, min(block * 8 + 8, 37))
    return samples, np.full(samples.shape, slot)


def test_missing_chunk(store_dir) -> None:
    (store_dir / "records/erase/c/1/0/0").unlink()
    reader = StoreReader(str(store_dir))
    reader.read_views(*_views_of_block(0))  # other blocks still read
    with pytest.raises(StoreError, match=r"array 'records/erase', chunk of block 1: object "
                                         r"'records/erase/c/1/0/0' is missing"):
        reader.read_views(*_views_of_block(1))
    problems = inspect_store(str(store_dir)).problems
    assert problems == ["array 'records/erase', block 1: object 'records/erase/c/1/0/0' is missing"]


def test_corrupt_chunk(store_dir) -> None:
    shard = store_dir / "topk/classes/c/2/0/0"
    data = bytearray(shard.read_bytes())
    data[20] ^= 0x5A  # inside the first chunk (slot group 0); the index sits at the end
    shard.write_bytes(bytes(data))
    reader = StoreReader(str(store_dir))
    reader.read_views(*_views_of_block(2, slot=5))  # slot group 1 is intact
    with pytest.raises(StoreError, match=r"array 'topk/classes', chunk \(block 2, slot group 0\) "
                                         r"is corrupt"):
        reader.read_views(*_views_of_block(2, slot=1))
    report = inspect_store(str(store_dir))
    assert len(report.problems) == 1
    assert report.problems[0].startswith("array 'topk/classes', chunk (block 2, slot group 0) is "
                                         "corrupt")


def test_truncated_shard(store_dir) -> None:
    shard = store_dir / "records/crop/c/4/0/0"
    shard.write_bytes(shard.read_bytes()[:-30])
    with pytest.raises(StoreError, match=r"records/crop', chunk \(block 4, slot group"):
        StoreReader(str(store_dir)).read_views(*_views_of_block(4))
    assert "records/crop" in inspect_store(str(store_dir)).problems[0]


def test_valid_chunk_of_another_block_fails_the_digest(store_dir) -> None:
    shutil.copy(store_dir / "records/flip/c/0/0", store_dir / "records/flip/c/1/0")
    report = inspect_store(str(store_dir))
    assert report.problems == ["block 1 (samples 8..15): contents do not match its commit digest"]


def test_store_of_another_dataset(store_dir) -> None:
    original = make_manifest()
    labels = original.labels.copy()
    labels[5] += 1
    other = Manifest(original.paths, labels, original.sizes, original.hashes, original.image_hw)
    StoreReader(str(store_dir), dataset=original)
    with pytest.raises(DatasetError, match=r"sample 5 .*differs in its label"):
        StoreReader(str(store_dir), dataset=other)
    with pytest.raises(DatasetError, match="37 samples in one, 36 in the other"):
        StoreReader(str(store_dir), dataset=make_manifest(36))


@pytest.mark.parametrize(("version", "message"), [(SCHEMA_VERSION + 1, "newer dalidr"),
                                                  (1, "older schema.*re-create it")])
def test_other_schema_versions(store_dir, version: int, message: str) -> None:
    group = zarr.open_group(str(store_dir), mode="r+")
    attrs = dict(group.attrs[ATTRS_KEY])
    attrs["schema_version"] = version
    group.attrs[ATTRS_KEY] = attrs
    with pytest.raises(StoreError, match=f"schema version {version}.*{message}"):
        StoreReader(str(store_dir))


def test_not_a_store(tmp_path) -> None:
    with pytest.raises(StoreError, match="no reinforcement store"):
        StoreReader(str(tmp_path))
    zarr.open_group(str(tmp_path / "plain"), mode="w")
    with pytest.raises(StoreError, match="not a dalidr reinforcement store"):
        StoreReader(str(tmp_path / "plain"))
    with pytest.raises(StoreError, match="scheme 'nosuchscheme' is not available"):
        StoreReader("nosuchscheme://bucket/store")


@pytest.mark.parametrize(("changes", "option"), [
    ({"slots": 0}, "slots"),
    ({"k": 101}, "'k'"),
    ({"slot_group": 13}, "slot_group"),
    ({"block_size": 0}, "block_size"),
    ({"prob_levels": 300}, "prob_levels"),
    ({"num_classes": 70000}, "num_classes"),
    ({"seed": -1}, "seed"),
])
def test_store_options_out_of_range(changes: dict, option: str) -> None:
    with pytest.raises(OptionError, match=option):
        make_config(**changes)


def test_read_options_out_of_range(store_dir, tmp_path) -> None:
    reader = StoreReader(str(store_dir))
    spec = reader.plan_spec
    with pytest.raises(OptionError, match="epoch is -1"):
        plan_epoch(spec, -1)
    with pytest.raises(OptionError, match="rank 3 of world size 3"):
        reader.plan(0, rank=3, world=3)
    with pytest.raises(OptionError, match="world size 40 leaves no sample"):
        plan_epoch(PlanSpec(37, 12, 4, 8, 0, uneven=type(spec.uneven).DROP), 0, 0, 40)
    with pytest.raises(OptionError, match="slot_group"):
        PlanSpec(37, 4, 5, 8, 0)
    with pytest.raises(OptionError, match="start_epoch"):
        EpochPrefetcher(reader, start_epoch=-2)
    with pytest.raises(StoreError, match="slot is outside 0..11"):
        reader.read_views(np.array([0]), np.array([12]))
    with pytest.raises(OptionError, match="'slots' is 13; valid: 1..12"):
        subset_store(str(store_dir), str(tmp_path / "small"), slots=13, topk=2)
    with pytest.raises(OptionError, match="'topk' is 6; valid: 1..5"):
        subset_store(str(store_dir), str(tmp_path / "small"), slots=2, topk=6)


def test_nothing_is_unpickled(store_dir) -> None:
    """No stored array has an object dtype, and no codec in the store can hold pickles."""
    group = zarr.open_group(str(store_dir), mode="r")
    arrays = [(name, node) for name, node in group.members(max_depth=None)
              if isinstance(node, zarr.Array)]
    assert len(arrays) == 15  # 7 manifest + 5 record columns + 2 top-k + commit
    for name, array in arrays:
        assert array.dtype != object, name
    for path in store_dir.rglob("zarr.json"):
        text = path.read_text()
        assert "pickle" not in text and "vlen" not in text and "object" not in text, path
