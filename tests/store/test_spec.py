"""`docs/store-format.md`, tested: real stores read by the specification alone.

Two stores. One is made by `dalidr reinforce` (real JPEGs, one of them unreadable and skipped,
a tiny timm teacher, RRC+Mix so partners and partner crops are stored; RandAugment is left out:
building its DALI graph would add ~25 s of CPU). The other is written through the
store's writer with the m*+r* recipe (every record field), LZMA top-k, crops that need escape
codes, and its last block left uncommitted.

`tests/store/spec_reader.py`, which imports neither `dalidr` nor `store`, checks the attribute
digest, the manifest fingerprint, the commit digests (skip marks included) and the derived
digest as the specification says, decodes
records and top-k probabilities, and must agree with dalidr's `StoreReader`: exactly for records
and classes, to float32 rounding for probabilities (both dequantise the same levels).
"""

from __future__ import annotations

import ast
import json
import lzma
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import zarr
from safetensors.torch import save_file

from dalidr.augment.recipe import recipe
from dalidr.cli import main as cli_main
from dalidr.data.dataset import list_dataset
from dalidr.data.sample_data import make_corpus
from dalidr.errors import StoreError
from dalidr.teacher.skips import skipped_views
from store.config import Compression
from store.reader import StoreReader
from store.writer import create_store
from tests.store import spec_reader
from tests.store.helpers import make_config, make_manifest, producer
from tests.store.spec_reader import SpecError, SpecStore, open_spec_store

# zarr warns that the LZMA top-k codec is not in the Zarr v3 spec (spec 4.3 says so too).
pytestmark = pytest.mark.filterwarnings("ignore:Numcodecs codecs are not in the Zarr")

SLOTS, K, BLOCK, GROUP = 4, 2, 4, 3  # 10 images: blocks of 4, 4, 2; slot groups of 3 and 1
BAD = 5  # the unreadable image's sample index
_MEMBER = {"name": "test_resnet", "weights": "random:1", "mean": [0.5, 0.5, 0.5],
           "std": [0.5, 0.5, 0.5], "input_size": 32, "interpolation": "linear-antialias"}


@pytest.fixture(scope="module")
def reinforced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store made by `dalidr reinforce --skip-bad` with one unreadable image."""
    base = tmp_path_factory.mktemp("spec-reinforce")
    make_corpus(base / "images", 10, seed=2, long_side=(96, 160))
    listing = list_dataset(base / "images", share=False)
    (base / "images" / listing.paths[BAD]).write_bytes(b"this is not an image")
    torch.manual_seed(3)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    save_file(model.state_dict(), str(base / "teacher.safetensors"))
    (base / "recipe.json").write_text(json.dumps({"base": "rrc+mix", "output_size": 32}))
    out = base / "store"
    code = cli_main([
        "reinforce", "--data", str(base / "images"),
        "--teacher", f"test_resnet@{base / 'teacher.safetensors'}",
        "--recipe", str(base / "recipe.json"), "--slots", str(SLOTS), "--topk", str(K),
        "--out", str(out), "--seed", "5", "--batch", "16", "--block-size", str(BLOCK),
        "--slot-group", str(GROUP), "--device", "cpu", "--threads", "2", "--compile", "off",
        "--no-progress", "--skip-bad"])
    assert code == 0
    return out


def _escaped(records: np.ndarray, seed: int) -> np.ndarray:
    """Records with some crop origins moved by one unit: valid, but not a whole pixel, so the
    store must keep them as escape codes."""
    records = records.copy()
    crop = records["crop"]
    room = crop[..., 0].astype(np.int64) + crop[..., 2] < 65535
    moved = room & (np.random.default_rng(seed).random(room.shape) < 0.3)
    crop[..., 0] += moved
    records["crop"] = crop
    return records


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, np.ndarray]]:
    """A store of every record field (m*+r*), LZMA top-k and escape codes, written through the
    writer; blocks 0 and 1 committed, block 2 (samples 16..19) not. Returns the records
    written, by block."""
    out = tmp_path_factory.mktemp("spec-writer") / "store"
    manifest = make_manifest(20)
    config = make_config(recipe=recipe("m*+r*", ra_magnitude_std=1.0), slots=7, slot_group=3,
                         compression=Compression.LZMA)
    writer = create_store(str(out), manifest, config)
    produce = producer(config, manifest)
    wrote = {}
    for block in range(writer.num_blocks - 1):
        records, classes, probs = produce(writer.block_range(block))
        records = _escaped(records, block)
        writer.write_block(block, records, classes, probs)
        wrote[block] = records
    return out, wrote


@pytest.fixture(scope="module", params=["reinforce", "writer"])
def store(request: pytest.FixtureRequest) -> Path:
    if request.param == "reinforce":
        return request.getfixturevalue("reinforced")
    return request.getfixturevalue("written")[0]


def _decode_block(spec: SpecStore, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """spec 6 and 8 over one whole block: records, classes and probabilities."""
    arrays = spec.block_arrays(block)
    columns = {name[len("records/"):]: values for name, values in arrays.items()
               if name.startswith("records/")}
    rows = spec.block_rows(block)
    records = spec.decode_records(columns, np.arange(rows.start, rows.stop))
    return (records, arrays["topk/classes"].astype(np.int64),
            spec.decode_probs(arrays["topk/prob_gaps"]))


def test_the_reading_half_imports_neither_dalidr_nor_store() -> None:
    tree = ast.parse(Path(spec_reader.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "hashlib", "json", "numpy", "zarr", "dataclasses",
                        "pathlib", "typing"}, imported


def test_attributes_hold_every_config_key_and_their_digest(store: Path, tmp_path: Path) -> None:
    spec = open_spec_store(store)  # checks version, conventions, digest, fingerprint
    reader = StoreReader(str(store))
    cfg = reader.config
    assert set(spec.attrs) == {
        "schema_version", "recipe", "teacher", "teacher_members", "seed", "slots", "k",
        "num_classes",
        "block_size", "slot_group", "prob_levels", "compression", "decode_convention",
        "op_set", "num_samples", "fingerprint", "digest"}
    assert spec.attrs["recipe"] == json.loads(json.dumps(cfg.recipe.to_dict()))
    assert (spec.n, spec.slots, spec.block_size, spec.slot_group, spec.attrs["k"]) == (
        reader.num_samples, cfg.slots, cfg.block_size, cfg.slot_group, cfg.k)
    assert spec.attrs["fingerprint"] == reader.layout.fingerprint

    # An edited attribute fails the digest, for the spec and for dalidr; so does a version 1.
    for edit, message in ((lambda a: a.update(seed=a["seed"] + 1), "digest"),
                          (lambda a: a.update(teacher_members=None if a["teacher_members"]
                                              else [_MEMBER]), "digest"),
                          (lambda a: a.update(schema_version=1), "schema version")):
        copy = tmp_path / f"edited-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(store, copy)
        meta = json.loads((copy / "zarr.json").read_text())
        edit(meta["attributes"]["dalidr_store"])
        (copy / "zarr.json").write_text(json.dumps(meta, indent=2))
        with pytest.raises(SpecError, match=message):
            open_spec_store(copy)
        with pytest.raises(StoreError, match=message):
            StoreReader(str(copy))


def test_manifest_columns_and_fingerprint(store: Path) -> None:
    spec = open_spec_store(store)
    stored = StoreReader(str(store)).manifest
    m = spec.manifest
    assert m.paths == list(stored.paths)
    np.testing.assert_array_equal(m.label, stored.labels)
    np.testing.assert_array_equal(m.size, stored.sizes)
    np.testing.assert_array_equal(m.sha256, stored.hashes)
    np.testing.assert_array_equal(m.image_hw, stored.image_hw)
    np.testing.assert_array_equal(m.skipped != 0, stored.skipped)
    assert m.fingerprint() == stored.fingerprint
    assert (m.label.dtype, m.size.dtype, m.image_hw.dtype, m.skipped.dtype) == (
        np.dtype("<i4"), np.dtype("<i8"), np.dtype("<u2"), np.dtype("u1"))


def test_commit_map_rows_and_digests(store: Path, request: pytest.FixtureRequest) -> None:
    made_by = request.node.callspec.params["store"]
    spec = open_spec_store(store)
    assert spec.commit.shape == (spec.num_blocks, 2 + spec.num_groups)
    for block in range(spec.num_blocks):
        key = store / "commit_map" / "c" / str(block) / "0"
        if spec.committed()[block]:
            spec.verify_block(block)
            # spec 5.1: one uncompressed object per block, little-endian uint64.
            raw = np.frombuffer(key.read_bytes(), dtype="<u8")
            np.testing.assert_array_equal(raw, spec.commit[block])
            assert (spec.commit[block, :-1] != 0).all()
            # spec 5.4: the teacher pass scores each block it commits; a store written
            # block by block has no derived arrays until `dalidr difficulty` runs.
            if made_by == "reinforce":
                confidence, strength = spec.read_derived(block)  # checks the digest
                assert confidence.shape == (len(spec.block_rows(block)), spec.slots)
            else:
                assert spec.commit[block, -1] == 0
        else:
            assert not key.exists() and (spec.commit[block] == 0).all()


def test_shards_are_indexed_checksummed_and_gaps_rank_major(store: Path) -> None:
    """spec 4.3: one shard object per block and array; its inner chunks are found through the
    index at its end; each ends in a CRC32C; prob_gaps chunks hold ranks outermost."""
    spec = open_spec_store(store)
    block = 0
    for name in spec.data_names():
        key = ["c", str(block)] + ["0"] * (spec.group[name].ndim - 1)  # spec 4.3
        data = store.joinpath(name, *key).read_bytes()
        index = spec_reader.read_shard_index(data, spec.num_groups)
        assert (index != 2**64 - 1).all()  # every inner chunk written, zeros included
        for group, (offset, nbytes) in enumerate(index):
            chunk = data[int(offset):int(offset + nbytes)]
            assert spec_reader.crc32c(chunk[:-4]) == int.from_bytes(chunk[-4:], "little")
            if name != "topk/prob_gaps" or spec.attrs["compression"] != "lzma":
                continue
            k = spec.attrs["k"]
            ranks = np.frombuffer(lzma.decompress(chunk[:-4]), np.uint8).reshape(
                k, spec.block_size, spec.slot_group)
            slots = spec.group_slots(group)
            want = spec.raw(name, spec.block_rows(block), slots)
            got = ranks.transpose(1, 2, 0)[:len(spec.block_rows(block)), :len(slots)]
            np.testing.assert_array_equal(got, want)


def test_decoded_views_equal_the_store_reader(store: Path) -> None:
    spec = open_spec_store(store)
    reader = StoreReader(str(store))
    levels = spec.attrs["prob_levels"]
    for block in np.flatnonzero(spec.committed()):
        records, classes, probs = _decode_block(spec, int(block))
        want_records, want = reader.read_block(int(block))
        assert records.dtype == want_records.dtype
        np.testing.assert_array_equal(records, want_records)
        np.testing.assert_array_equal(classes, want.classes)
        np.testing.assert_allclose(probs, want.probs, rtol=0, atol=1e-7)
        # spec 8: by decreasing probability, each p = (q / L)^2 for a level q in 1..L.
        assert (np.diff(probs, axis=-1) <= 0).all()
        q = np.sqrt(probs.astype(np.float64)) * levels
        np.testing.assert_allclose(q, np.rint(q), atol=1e-3)
        assert q.min() >= 1 - 1e-3 and q.max() <= levels + 1e-3

    # The worked example (spec 12): single views through one chunk per array.
    rng = np.random.default_rng(0)
    committed = np.concatenate([np.arange(spec.block_rows(int(b)).start,
                                          spec.block_rows(int(b)).stop)
                                for b in np.flatnonzero(spec.committed())])
    samples = rng.choice(committed, 4)
    slots = rng.integers(0, spec.slots, 4)
    want_records, want = reader.read_views(samples, slots)
    for i, (sample, slot) in enumerate(zip(samples.tolist(), slots.tolist(), strict=True)):
        record, cls, prob = spec.read_view(sample, slot)
        assert record == want_records[i]
        np.testing.assert_array_equal(cls, want.classes[i])
        np.testing.assert_allclose(prob, want.probs[i], rtol=0, atol=1e-7)


def test_escape_codes_and_uncommitted_blocks(
        written: tuple[Path, dict[int, np.ndarray]]) -> None:
    out, wrote = written
    spec = open_spec_store(out)
    assert spec.committed().tolist() == [True, True, False]
    for block, records in wrote.items():
        decoded, _, _ = _decode_block(spec, block)
        np.testing.assert_array_equal(decoded, records)  # bit for bit, escapes included
    codes = spec.raw("records/crop", spec.block_rows(0), range(spec.slots))
    assert (codes >= spec_reader.ESCAPE).any() and (codes < spec_reader.ESCAPE).any()
    assert (spec.raw("records/mags", spec.block_rows(0), range(spec.slots)) < 0).any()
    last = spec.block_rows(2).start
    with pytest.raises(SpecError, match="not committed"):
        spec.read_view(last, 0)
    with pytest.raises(StoreError, match="not committed"):
        StoreReader(str(out)).read_views(np.array([last]), np.array([0]))


def test_skip_marks_and_skipped_samples(reinforced: Path) -> None:
    spec = open_spec_store(reinforced)
    m = spec.manifest
    assert np.flatnonzero(m.skipped).tolist() == [BAD]
    assert (m.sha256[BAD] == 0).all() and m.image_hw[BAD].tolist() == [1, 1]
    assert m.size[BAD] == len(b"this is not an image")
    marks = np.asarray(spec.group["skipped"][...]) != 0
    np.testing.assert_array_equal(marks, skipped_views(str(reinforced)))
    records = np.concatenate([_decode_block(spec, b)[0] for b in range(spec.num_blocks)])
    expected = (records["mix"] != 0) & (records["partner"] == BAD)
    expected[BAD] = True
    np.testing.assert_array_equal(marks, expected)
    for block in range(spec.num_blocks):  # spec 4.2: every committed block has its shard
        assert (reinforced / "skipped" / "c" / str(block) / "0").exists()
    # spec 9: a skipped view's top-k is classes 0..k-1 at the lowest level.
    arrays = [spec.block_arrays(b) for b in range(spec.num_blocks)]
    classes = np.concatenate([a["topk/classes"] for a in arrays])
    gaps = np.concatenate([a["topk/prob_gaps"] for a in arrays])
    levels = spec.attrs["prob_levels"]
    assert (classes[marks] == np.arange(K)).all()
    assert (gaps[marks] == [levels - 1] + [0] * (K - 1)).all()
    assert (gaps[~marks][:, 0] < levels - 1).all()


def test_a_forged_skip_mark_fails_the_digests(reinforced: Path, tmp_path: Path) -> None:
    """spec 9: the skip marks are sealed by the commit row; an added mark fails the slot group's
    and the block's digest, for the spec and for dalidr (reader and inspect)."""
    from store.inspect import inspect_store

    copy = tmp_path / "forged"
    shutil.copytree(reinforced, copy)
    spec = open_spec_store(copy)
    block, sample, slot = 0, 1, 0
    assert not spec.group["skipped"][sample, slot]
    group = zarr.open_group(str(copy), mode="r+")
    group["skipped"].with_config({"write_empty_chunks": True})[sample, slot] = 1
    with pytest.raises(SpecError, match=f"block {block}.*does not match"):
        open_spec_store(copy).verify_block(block)
    with pytest.raises(StoreError, match=f"block {block} .*slot group 0: the data does not "
                                         "match its commit digest"):
        StoreReader(str(copy)).read_views(np.array([sample]), np.array([slot]))
    problems = inspect_store(str(copy)).problems
    assert problems and any(f"block {block} " in p and "commit digest" in p for p in problems)
    # The commit summary counted the block's marks: it disagrees now too.
    assert any(p.startswith(f"commit summary: block {block} counts ") for p in problems)


def test_derived_arrays_are_sealed_by_the_last_commit_column(
        written: tuple[Path, dict[int, np.ndarray]], tmp_path: Path) -> None:
    """spec 4.4, 5.4: the difficulty arrays of a committed block, written after it, checked by
    their digest; absent, edited or on an uncommitted block they are refused."""
    from store.derived import read_derived, write_derived_block
    from store.layout import open_layout

    copy = tmp_path / "derived"
    shutil.copytree(written[0], copy)
    layout = open_layout(str(copy), read_only=False)
    rows, slots = layout.block_range(0), layout.config.slots
    rng = np.random.default_rng(1)
    confidence = rng.integers(0, 256, (len(rows), slots), dtype=np.uint8)
    strength = rng.integers(0, 256, (len(rows), slots), dtype=np.uint8)
    before = layout.commit_rows()
    with pytest.raises(StoreError, match=f"{copy}: block 0 .*no derived arrays"):
        read_derived(layout, np.arange(rows.start, rows.stop), np.arange(slots))
    with pytest.raises(StoreError, match=f"{copy}: block 2 .*is not committed"):
        write_derived_block(layout, 2, confidence[:4], strength[:4])
    write_derived_block(layout, 0, confidence, strength)
    after = layout.commit_rows()
    np.testing.assert_array_equal(after[:, :-1], before[:, :-1])  # the teacher's seal untouched
    assert after[0, -1] != 0 and after[1, -1] == 0
    got = read_derived(layout, np.array([5, 0, 3]), np.array([6, 0]))
    np.testing.assert_array_equal(got[0], confidence[[5, 0, 3]][:, [6, 0]])
    np.testing.assert_array_equal(got[1], strength[[5, 0, 3]][:, [6, 0]])
    spec = open_spec_store(copy)
    spec.verify_block(0)  # the derived arrays are outside the block digest
    np.testing.assert_array_equal(spec.read_derived(0)[0], confidence)
    StoreReader(str(copy)).read_block(0)  # the views still read

    zarr.open_group(str(copy), mode="r+")["derived/strength"][2, 3] = int(strength[2, 3]) ^ 1
    with pytest.raises(SpecError, match="block 0: the derived arrays do not match"):
        open_spec_store(copy).read_derived(0)
    with pytest.raises(StoreError, match=rf"{copy}: block 0 \(samples 0\.\.7\): the derived "
                                         "arrays .* do not match their digest"):
        read_derived(open_layout(str(copy)), np.array([0]), np.array([0]))
