"""Every kind of bad input fails with an error naming its culprit; nothing is unpickled."""

from __future__ import annotations

import dataclasses
import json
import re
import resource
import shutil

import numpy as np
import pytest
import zarr

from dalidr.augment.recipe import recipe
from dalidr.errors import DatasetError, OptionError, StoreError
from dalidr.teacher.reinforce import ReinforceConfig, reinforce
from dalidr.teacher.skips import SKIPPED, skipped_views
from dalidr.training.loader import LastBatch, LoaderConfig, PlainLoader, ReinforcedLoader
from store.config import ATTRS_KEY, SCHEMA_VERSION
from store.inspect import format_report, inspect_store
from store.manifest import Manifest
from store.plan import PlanSpec, plan_epoch
from store.prefetch import EpochPrefetcher
from store.reader import StoreReader
from store.subset import subset_store
from store.writer import StoreWriter
from tests.store.helpers import edit_attrs, forge_path, make_config, make_manifest, write_store
from tests.store_builder import build_store


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
                                                  (2, "previous schema: run `dalidr upgrade"),
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
    # 7 manifest + 5 record columns + 2 top-k + skipped + 2 derived + the manifest digests
    # + the commit summary
    assert len(arrays) == 20
    # + commit map
    for name, array in arrays:
        assert array.dtype != object, name
    for path in store_dir.rglob("zarr.json"):
        text = path.read_text()
        assert "pickle" not in text and "vlen" not in text and "object" not in text, path


# ----------------------------------------------------------------- untrusted stores (issue 13)


def _set_json(path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _every_array_json(store_dir):
    return [p for p in store_dir.rglob("zarr.json") if json.loads(p.read_text())["node_type"]
            == "array"]


@pytest.mark.parametrize("count", [2**30, 2**40])
def test_a_forged_sample_count_is_refused_before_any_allocation(store_dir, count: int) -> None:
    """The count in the attributes (digest recomputed) and in every array's shape: the objects
    do not back it, so opening refuses it by name instead of allocating terabytes."""
    edit_attrs(store_dir, lambda attrs: attrs.update(num_samples=count))
    for path in _every_array_json(store_dir):
        name = path.parent.name
        if name == "commit":
            rows = -(-count // 8)
        elif name != "path_bytes":
            rows = count + (1 if name == "path_offsets" else 0)
        else:
            continue
        _set_json(path, lambda doc, rows=rows: doc["shape"].__setitem__(0, rows))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(StoreError, match=r"store.*manifest/path_offsets.*lacks its chunk"):
        StoreReader(str(store_dir))
    with pytest.raises(StoreError, match="lacks its chunk"):
        inspect_store(str(store_dir))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # kB


@pytest.mark.parametrize("name", ["manifest/size", "manifest/sha256", "records/crop"])
def test_a_huge_array_shape_is_refused(store_dir, name: str) -> None:
    _set_json(store_dir / name / "zarr.json", lambda doc: doc["shape"].__setitem__(0, 2**40))
    with pytest.raises(StoreError, match=f"store.*{name}"):
        _ = StoreReader(str(store_dir)).manifest


def test_huge_skip_marks_are_refused(store_dir) -> None:
    _set_json(store_dir / SKIPPED / "zarr.json", lambda doc: doc["shape"].__setitem__(0, 2**40))
    with pytest.raises(StoreError, match=f"store.*{SKIPPED}.*shape"):
        skipped_views(str(store_dir))


def _forge_block(store_dir, block: int, name: str, index: tuple, value: int) -> None:
    """Set one stored value and rewrite the block through the writer: every digest valid."""
    writer = StoreWriter(str(store_dir))
    r = writer.block_range(block)
    arrays = {n: np.array(writer.layout.array(n)[r.start:r.stop]) for n in writer.layout.data_names}
    arrays[name][index] = value
    writer.write_encoded(block, arrays)


@pytest.mark.parametrize(("name", "index", "value", "message"), [
    ("topk/classes", (3, 1, 2), 100, r"array 'topk/classes', block 1, sample 11, slot 1: a "
                                     r"class index is outside 0..99"),
    ("records/ops", (2, 1, 0), 99, r"block 1, sample 10, slot 1.*ops has an unknown op id"),
    ("records/crop", (0, 2, 2), 0, r"block 1, sample 8, slot 2.*crop has zero size"),
    ("records/flip", (4, 0), 2, r"block 1, sample 12, slot 0.*flip is not 0 or 1"),
    ("records/mags", (4, 0, 1), 31, r"block 1, sample 12, slot 0.*mags exceeds the bins"),
    ("topk/prob_gaps", (5, 3, 1), 200, r"array 'topk/prob_gaps', block 1, sample 13, slot 3: "
                                       r"the gaps sum to \d+, past the 127"),
])
def test_forged_values_are_refused_by_reader_and_inspect(store_dir, name, index, value,
                                                          message) -> None:
    _forge_block(store_dir, 1, name, index, value)
    reader = StoreReader(str(store_dir))
    reader.read_views(*_views_of_block(0))  # block 0 is intact
    samples = np.arange(8, 16)
    with pytest.raises(StoreError, match=f"{store_dir}.*{message}"):
        reader.read_views(samples, np.full(8, index[1]))
    with pytest.raises(StoreError, match=message):
        reader.read_block(1)
    problems = inspect_store(str(store_dir)).problems
    assert len(problems) == 1 and re.search(message, problems[0]), problems


def test_a_partner_outside_the_samples_is_refused(tmp_path) -> None:
    write_store(str(tmp_path / "mix"), make_manifest(20),
                make_config(recipe=recipe("rrc+mix"), slots=4, slot_group=2))
    _forge_block(tmp_path / "mix", 2, "records/partner", (1, 3), 2**31)
    with pytest.raises(StoreError, match=r"mix.*'records/partner', block 2, sample 17, slot 3: "
                                         r"partner 2147483648 is not in 0..19"):
        StoreReader(str(tmp_path / "mix")).read_block(2)
    assert "partner 2147483648" in inspect_store(str(tmp_path / "mix")).problems[0]


def test_a_class_twice_in_one_top_k_is_refused_by_loader_and_inspect(tmp_path, capsys) -> None:
    """[c, c] with its digests resealed: densified it would not sum to 1, so it is never
    served, by the reader, the loader or `dalidr inspect` (issue 23)."""
    from store.cli import main as store_main

    built = build_store(tmp_path, images=16, slots=3, k=2)
    writer = StoreWriter(built.url)
    r = writer.block_range(1)
    arrays = {n: np.array(writer.layout.array(n)[r.start:r.stop]) for n in writer.layout.data_names}
    arrays["topk/classes"][3, :, 1] = arrays["topk/classes"][3, :, 0]  # sample 11, every slot
    writer.write_encoded(1, arrays)
    message = (r"array 'topk/classes', block 1, sample 11, slot \d: class (\d+) appears twice "
               r"in one top-k: \[\1, \1\]")
    with pytest.raises(StoreError, match=message):
        StoreReader(built.url).read_block(1)
    config = LoaderConfig(batch_size=4, num_threads=1, read_threads=1)
    with ReinforcedLoader(built.url, built.root, config) as loader:
        with pytest.raises(StoreError, match=f"{re.escape(built.url)}: {message}"):
            list(loader)
    assert store_main(["inspect", built.url]) == 1
    assert re.search(message, capsys.readouterr().out)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda d: (d / "manifest/label/c/0").write_bytes((d / "manifest/label/c/0").read_bytes()[:9]),
     r"store.*manifest array 'label' is corrupt"),
    (lambda d: _set_json(d / "manifest/path_offsets/zarr.json",
                         lambda doc: doc.update(data_type="int32")),
     r"store.*manifest/path_offsets' has dtype int32"),
    (lambda d: (d / "records/ops/zarr.json").write_text('{"shape": [37, 12, 2'),
     r"store.*array 'records/ops': its metadata cannot be read: JSONDecodeError"),
    (lambda d: (d / "manifest/image_hw/zarr.json").write_text("[]"),
     r"store.*manifest/image_hw.*metadata cannot be read"),
])
def test_damaged_objects_are_store_errors_naming_the_store(store_dir, damage, message) -> None:
    damage(store_dir)
    with pytest.raises(StoreError, match=message):
        _ = StoreReader(str(store_dir)).manifest
    try:
        report = inspect_store(str(store_dir))
    except StoreError as exc:
        assert str(store_dir) in str(exc)
    else:
        assert report.problems and re.search(message.split("store.*")[-1], report.problems[0])


def test_inspect_reports_an_unsafe_manifest_path(store_dir) -> None:
    forge_path(store_dir, 5, "../../etc/passwd")
    report = inspect_store(str(store_dir))
    assert any("manifest path 5 is not a relative path" in p for p in report.problems)
    assert "FAILED" in format_report(report)


def test_a_label_outside_the_classes_is_refused(store_dir) -> None:
    manifest = make_manifest()
    labels = manifest.labels.copy()
    labels[7] = 100  # the store has 100 classes
    forged = Manifest(manifest.paths, labels, manifest.sizes, manifest.hashes, manifest.image_hw)
    zarr.open_array(str(store_dir / "manifest/label"), mode="r+")[...] = labels.astype("<i4")
    edit_attrs(store_dir, lambda attrs: attrs.update(fingerprint=forged.fingerprint))
    with pytest.raises(StoreError, match=r"store.*manifest sample 7 .*label 100, outside -1..99"):
        _ = StoreReader(str(store_dir)).manifest
    assert "label 100" in inspect_store(str(store_dir)).problems[0]


def test_oversized_chunks_are_refused(store_dir) -> None:
    _set_json(store_dir / "manifest/size/zarr.json",
              lambda doc: doc["chunk_grid"]["configuration"].update(chunk_shape=[2**40]))
    with pytest.raises(StoreError, match=r"store.*'manifest/size' has chunks \[1099511627776\]"):
        StoreReader(str(store_dir))


def test_a_stray_partial_skip_mark_is_removed_on_rewrite(store_dir) -> None:
    """A kill while writing a block's skip marks leaves `<key>.<uuid>.partial`; the resumed
    write of that block removes it."""
    stray = store_dir / SKIPPED / "c" / "1" / "0.0123abcd.partial"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"torn")
    _forge_block(store_dir, 1, SKIPPED, (0, 0), 0)
    for row in range(8):
        _forge_block(store_dir, 2, SKIPPED, (row, row), 1)
    assert not stray.exists()
    assert not list(store_dir.rglob("*.partial"))
    assert skipped_views(str(store_dir))[16:24].sum() == 8


# ----------------------------------------------------------------- bad options, before any work


def test_seed_out_of_range_is_an_option_error() -> None:
    for seed in (-1, 2**31, 1.5):
        with pytest.raises(OptionError, match=r"loader option 'seed' is .*; valid: an integer"):
            LoaderConfig(seed=seed)


def test_a_batch_larger_than_an_epoch_is_refused_not_a_hang(tmp_path) -> None:
    built = build_store(tmp_path, images=16, slots=3, k=2)
    config = LoaderConfig(batch_size=17, num_threads=1, read_threads=1)
    with pytest.raises(OptionError, match=r"'batch_size' is 17 but an epoch of rank 0 of 1 has "
                                          r"16 samples.*batch_size <= 16.*PARTIAL"):
        ReinforcedLoader(built.url, built.root, config)
    with pytest.raises(OptionError, match=r"'batch_size' is 17"):
        PlainLoader(built.root, config, size=32)
    # The same batch size serves one short batch when the last batch is kept.
    with ReinforcedLoader(built.url, built.root,
                          dataclasses.replace(config, last_batch=LastBatch.PARTIAL)) as loader:
        assert len(loader) == 1
        assert [images.shape[0] for images, _ in loader] == [16]


def test_reinforce_threads_zero_fails_before_any_work(tmp_path) -> None:
    out = tmp_path / "never.zarr"
    config = ReinforceConfig(data=tmp_path / "no-data", teacher="resnet10t",
                             recipe=recipe("rrc"), slots=2, k=1, out=str(out), num_threads=0)
    with pytest.raises(OptionError, match=r"option 'threads' is 0; must be at least 1.*--threads"):
        reinforce(config, rank=0, world=1)
    assert not out.exists()
