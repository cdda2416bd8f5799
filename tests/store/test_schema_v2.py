"""Schema v2: conventions and digests in the attributes, a manifest fingerprint over every column,
per slot-group digests checked on read, and the metadata-only check against a data root."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr

from dalidr.data.dataset import list_dataset
from dalidr.data.path_list import PathList
from dalidr.errors import DalidrError, DatasetError, StoreError
from store.config import ATTRS_KEY, SCHEMA_VERSION
from store.manifest import scan_manifest
from store.reader import StoreReader
from tests.store.helpers import edit_attrs, forge_path, make_config, make_manifest, write_store


@pytest.fixture()
def store_dir(tmp_path_factory: pytest.TempPathFactory, tmp_path):
    cache = tmp_path_factory.getbasetemp() / "pristine-store-v2"
    if not cache.exists():
        write_store(str(cache), make_manifest(), make_config())
    shutil.copytree(cache, tmp_path / "store")
    return tmp_path / "store"


def test_a_version_1_store_is_refused_with_what_to_do(store_dir) -> None:
    def as_v1(attrs):
        attrs["schema_version"] = 1
        for key in ("decode_convention", "op_set", "digest"):
            attrs.pop(key)

    edit_attrs(store_dir, as_v1, redigest=False)
    with pytest.raises(StoreError, match=r"schema version 1.*EXIF.*dalidr reinforce.*import-mldr"):
        StoreReader(str(store_dir))


@pytest.mark.parametrize("key", ["decode_convention", "op_set"])
def test_another_convention_is_refused(store_dir, key: str) -> None:
    edit_attrs(store_dir, lambda attrs: attrs.update({key: "dali-exif-opencv"}), redigest=True)
    with pytest.raises(StoreError, match=f"{key} 'dali-exif-opencv'.*re-create"):
        StoreReader(str(store_dir))


@pytest.mark.parametrize("edit", [
    lambda a: a["recipe"].update(output_size=2 * a["recipe"]["output_size"]),
    lambda a: a["recipe"].update(erase_fill=[1, 2, 3]),
    lambda a: a.update(teacher="someone else"),
    lambda a: a.update(seed=a["seed"] + 1),
    lambda a: a.update(fingerprint="0" * 64),
])
def test_edited_attributes_fail_their_digest(store_dir, edit) -> None:
    edit_attrs(store_dir, edit, redigest=False)
    with pytest.raises(StoreError, match=r"store.*attributes do not match their digest"):
        StoreReader(str(store_dir))


def test_image_sizes_are_fingerprinted(store_dir) -> None:
    array = zarr.open_array(str(store_dir / "manifest/image_hw"), mode="r+")
    array[...] = np.asarray(array[...]) * 2
    reader = StoreReader(str(store_dir))
    # Read per block, the damage is caught by the block's digest (whole: the fingerprint).
    with pytest.raises(StoreError, match=r"store: (manifest's arrays do not match.*fingerprint"
                                         r"|manifest block 0 \(samples 0..7\): the rows do not "
                                         r"match the block's digest)"):
        reader.epoch(0)


def test_a_chunk_copied_from_another_block_is_caught_on_read(store_dir) -> None:
    # Chunk keys are records/<field>/c/<block>/<shard slot>/...: the whole shard of block 1 of
    # one array replaced by block 0's, a valid chunk whose CRC passes.
    shard0 = store_dir / "topk/classes/c/0/0/0"
    shard1 = store_dir / "topk/classes/c/1/0/0"
    shutil.copyfile(shard0, shard1)
    reader = StoreReader(str(store_dir))
    reader.read_views(np.arange(8), np.zeros(8, int))  # block 0 is intact
    with pytest.raises(StoreError, match=r"store.*block 1 \(samples 8..15\), slot group 0.*"
                                         r"commit digest"):
        reader.read_views(np.arange(8, 16), np.zeros(8, int))


def test_unsafe_manifest_paths_are_refused(store_dir) -> None:
    """A forged store (fingerprint and digest recomputed) still cannot point outside the root."""
    forge_path(store_dir, 5, "../../etc/passwd")
    with pytest.raises(StoreError, match="store.*manifest path 5 is not a relative path"):
        _ = StoreReader(str(store_dir)).manifest


def test_path_list_flags_every_unsafe_form() -> None:
    ok = ["a/b.jpg", "a..b/c.jpg", "x/..y.jpg", "x/y..jpg"]
    for bad in ["/etc/passwd", "../x.jpg", "a/../../b.jpg", "a/..", "", "a\x00b.jpg"]:
        paths = PathList.from_strings(ok + [bad])
        assert paths.unsafe_index() == len(ok), bad
    assert PathList.from_strings(ok).unsafe_index() is None


def test_dataset_check_reads_metadata_and_a_sample(tmp_path) -> None:
    from dalidr.data.sample_data import make_corpus

    root = tmp_path / "data"
    make_corpus(root, 12, seed=3)
    listing = list_dataset(root)
    manifest = scan_manifest(root, listing.paths, listing.labels)
    write_store(str(tmp_path / "store"), manifest, make_config(num_classes=100))
    reader = StoreReader(str(tmp_path / "store"))
    reader.check_dataset(list_dataset(root))
    victim = root / listing.paths[4]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content: only the hash sees it
    victim.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=rf"{listing.paths[4]}.*content differs.*dalidr verify"):
        reader.check_dataset(list_dataset(root))
    victim.write_bytes(bytes(data) + b"\0")
    with pytest.raises(DatasetError, match=rf"sample 4 differs: '{listing.paths[4]}'.*bytes"):
        reader.check_dataset(list_dataset(root))


def test_skipped_samples_are_not_compared(tmp_path) -> None:
    from dalidr.data.sample_data import make_corpus

    root = tmp_path / "data"
    make_corpus(root, 6, seed=3)
    broken = root / list_dataset(root).paths[2]
    broken.write_bytes(b"")
    listing = list_dataset(root)
    with pytest.raises(DalidrError, match=str(broken.name)):
        scan_manifest(root, listing.paths, listing.labels)
    manifest = scan_manifest(root, listing.paths, listing.labels, skip_bad=True)
    assert manifest.skipped.tolist() == [False, False, True, False, False, False]
    write_store(str(tmp_path / "store"), manifest, make_config(num_classes=100))
    reader = StoreReader(str(tmp_path / "store"))
    reader.check_dataset(list_dataset(root))
    broken.write_bytes(b"still not an image")  # the skipped file changed: not served, fine
    reader.check_dataset(list_dataset(root))
    broken.unlink()  # and gone
    reader.check_dataset(list_dataset(root))
    other = root / listing.paths[3]
    other.write_bytes(other.read_bytes() + b"\0")  # any other change is still caught
    with pytest.raises(DatasetError, match=rf"{listing.paths[3]}.*bytes"):
        reader.check_dataset(list_dataset(root))


def test_attributes_are_plain_json(store_dir) -> None:
    attrs = json.loads((store_dir / "zarr.json").read_text())["attributes"][ATTRS_KEY]
    assert attrs["schema_version"] == SCHEMA_VERSION == 3 and len(attrs["digest"]) == 64
    assert attrs["decode_convention"] and attrs["op_set"]
