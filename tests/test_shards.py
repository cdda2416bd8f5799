"""Webdataset tar shards on a local disk, end to end (issue 29, the local side).

- shards made by `dalidr pack` and, independently, by Python's `tarfile` (pax and GNU
  long-name headers) list as the folder does and read back its exact bytes;
- the guarantee: the same images as a folder and as shards give byte-identical stores (every
  store file compared; the shards' store adds its table of members, `/sources`) for
  `rrc+ra/re` and `m*+r*`, through the Python API and the CLI, and `ReinforcedLoader` (on
  `m*+r*`, whose replay reads partners too) and `PlainLoader` serve identical tensors and
  targets from either;
- every local bad input is refused by name (shard and member), or skipped with `--skip-bad`:
  0-byte, truncated, damaged, not a tar, compressed, not an image, missing or bad `.cls`,
  duplicate keys, `..` and absolute names, links, forged sizes, a shard replaced after the
  store was made, a shard that shrinks while being read.
"""

from __future__ import annotations

import dataclasses
import io
import os
import sys
import tarfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from dalidr.augment.recipe import recipe
from dalidr.cli import main as cli_main
from dalidr.data import node_cache, shards
from dalidr.data.data_source import LocalShardFile, ShardSource
from dalidr.data.dataset import list_dataset
from dalidr.data.pack import pack_shards
from dalidr.data.sample_data import make_corpus
from dalidr.data.shards import expand_braces, parse_wds_index
from dalidr.errors import DatasetError, ImageError
from dalidr.teacher.reinforce import CompileMode, ReinforceConfig, reinforce
from dalidr.training.loader import Augment, LoaderConfig, PlainLoader, ReinforcedLoader
from store import StoreReader
from store.config import StoreConfig
from store.manifest import scan_manifest
from store.writer import create_store
from tests.store.helpers import tree_bytes

IMAGES, SLOTS, K, BLOCK, BATCH = 12, 2, 2, 4, 6


@pytest.fixture(autouse=True)
def _no_node_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(node_cache.ENV, "off")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards") / "images"
    make_corpus(root, IMAGES, seed=3, long_side=(48, 72))
    return root


@pytest.fixture(scope="module")
def packed(folder: Path) -> str:
    """The folder as three shards (5, 5 and 2 samples) by `dalidr pack`."""
    report = pack_shards(folder, str(folder.parent / "packed" / "shard-%d.tar"),
                         samples_per_shard=5)
    assert len(report.shards) == 3 and report.samples == IMAGES
    assert report.spec == str(folder.parent / "packed" / "shard-{0..2}.tar")
    return report.spec


def _info(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mtime, info.mode = size, kind, 0, 0o644
    return info


def _tar(path: Path, members: list[tuple[str, bytes]],
         form: int = tarfile.PAX_FORMAT) -> Path:
    """A tar written by Python's tarfile, independently of `dalidr pack`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=form) as tar:
        for name, data in members:
            tar.addfile(_info(name, len(data)), io.BytesIO(data))
    return path


def _samples(folder: Path, names: list[str] | None = None) -> list[tuple[str, bytes]]:
    listing = list_dataset(folder)
    out = []
    for i, rel in enumerate(listing.paths):
        name = rel if names is None else names[i]
        out += [(name, (folder / rel).read_bytes()),
                (name.split(".")[0] + ".cls", str(int(listing.labels[i])).encode())]
    return out


# ------------------------------------------------------------------ naming and listing


def test_brace_patterns_expand_as_bash_does() -> None:
    assert expand_braces("a-{0000..0002}.tar") == ["a-0000.tar", "a-0001.tar", "a-0002.tar"]
    assert expand_braces("{x,y}-{8..10}.tar") == ["x-8.tar", "x-9.tar", "x-10.tar",
                                                  "y-8.tar", "y-9.tar", "y-10.tar"]
    assert expand_braces("{a,b{1..2}}.tar") == ["a.tar", "b1.tar", "b2.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"] and expand_braces("{x}.tar") == [
        "{x}.tar"]
    with pytest.raises(DatasetError, match="more than"):
        expand_braces("s-{0..99999999999}.tar")


def test_packed_shards_list_and_read_as_the_folder(folder: Path, packed: str) -> None:
    want = list_dataset(folder)
    got = list_dataset(packed)
    assert list(got.paths) == list(want.paths)
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.sizes, want.sizes)
    assert got.classes == ("0", "1", "2") and len(want.classes) == 3
    order = np.array([7, 0, 11, 3, 3])
    for a, b in zip(got.source.read(order), want.source.read(order), strict=True):
        np.testing.assert_array_equal(a, b)
    assert f"shard-1.tar member {want.paths[7]!r} (bytes " in got.source.describe(7)
    # Each shard has a wds2idx index; listing from it equals listing from the headers.
    shard = Path(packed.replace("{0..2}", "1"))
    index = shard.with_suffix(".idx")
    assert index.read_text().startswith("v1.2 5\n")
    assert len(parse_wds_index(index.read_text(), shard.stat().st_size)) == 10
    index.unlink()
    again = list_dataset(packed)
    np.testing.assert_array_equal(again.source.offsets, got.source.offsets)  # type: ignore[attr-defined]
    assert list(again.paths) == list(got.paths)
    # Packing is deterministic: the same shards, byte for byte (here through the CLI).
    out = folder.parent / "again"
    assert cli_main(["pack", str(folder), str(out / "shard-%d.tar"),
                     "--samples-per-shard", "5"]) == 0
    assert [(out / f"shard-{i}.tar").read_bytes() for i in range(3)] == [
        Path(packed.replace("{0..2}", str(i))).read_bytes() for i in range(3)]
    assert not (out / "shard-3.tar").exists()
    # A size limit cuts shards too; every shard stays under it.
    sized = pack_shards(folder, str(folder.parent / "sized" / "s-%02d.tar"), shard_size=12_288)
    assert len(sized.shards) > 3 and all(p.stat().st_size <= 12_288 for p in sized.shards)
    assert list(list_dataset(sized.spec).paths) == list(want.paths)


@pytest.mark.parametrize("form", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT],
                         ids=["pax", "gnu-longname"])
def test_tarfile_shards_with_long_names_are_read(folder: Path, tmp_path: Path,
                                                 form: int) -> None:
    want = list_dataset(folder)
    long = [f"{'deep/' * 30}naïve-{i:03d}.jpg" for i in range(IMAGES)]  # > 100 bytes, UTF-8
    members = _samples(folder, long)
    _tar(tmp_path / "a.tar", members[:10], form)
    _tar(tmp_path / "b.tar", members[10:], form)
    got = list_dataset([tmp_path / "a.tar", tmp_path / "b.tar"])
    assert list(got.paths) == long
    np.testing.assert_array_equal(got.labels, want.labels)
    for a, b in zip(got.source.read(range(IMAGES)), want.source.read(range(IMAGES)),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    assert list_dataset(f"{tmp_path}/{{a,b}}.tar").paths.digest() == got.paths.digest()


def test_labels_from_a_json_key(folder: Path, tmp_path: Path) -> None:
    listing = list_dataset(folder)
    members = []
    for i, rel in enumerate(listing.paths):
        members += [(rel, (folder / rel).read_bytes()),
                    (rel.split(".")[0] + ".json", f'{{"y": {int(listing.labels[i])}}}'.encode())]
    shard = _tar(tmp_path / "j.tar", members)
    got = list_dataset(f"{shard}::label=json:y")
    np.testing.assert_array_equal(got.labels, listing.labels)
    with pytest.raises(DatasetError, match="no .cls member"):
        list_dataset(shard)


def test_the_index_is_cached_per_node_until_a_shard_changes(
        packed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(node_cache.ENV, str(tmp_path / "cache"))
    first = list_dataset(packed)
    calls: list[str] = []
    real = shards.index_shard
    monkeypatch.setattr(shards, "index_shard",
                        lambda file, key=None: calls.append(file.url) or real(file, key))
    again = list_dataset(packed)
    assert calls == [] and list(again.paths) == list(first.paths)
    shard = Path(packed.replace("{0..2}", "2"))
    os.utime(shard, ns=(time.time_ns(), time.time_ns()))
    list_dataset(packed)
    assert len(calls) == 3


# ------------------------------------------------------------------ the guarantee


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.manual_seed(5)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    path = tmp_path_factory.mktemp("teacher") / "test_resnet.safetensors"
    save_file(model.state_dict(), str(path))
    return f"test_resnet@{path}"


def _config(data: object, teacher: str, out: Path, preset: str) -> ReinforceConfig:
    return ReinforceConfig(
        data=data, teacher=teacher,  # type: ignore[arg-type]
        recipe=recipe(preset, output_size=32, teacher_size=40), slots=SLOTS, k=K,
        out=str(out), seed=7, batch_size=BATCH, block_size=BLOCK, slot_group=2, device="cpu",
        num_threads=2, compile=CompileMode.OFF, progress=False)


def _epoch(store: Path, data: object) -> list[tuple[torch.Tensor, torch.Tensor]]:
    config = LoaderConfig(batch_size=4, num_threads=1, read_threads=2, read_ahead=2)
    with ReinforcedLoader(str(store), data, config) as loader:  # type: ignore[arg-type]
        loader.set_epoch(1)
        return [(images.clone(), targets.clone()) for images, targets in loader]


@pytest.mark.parametrize("preset, through", [("rrc+ra/re", "cli"), ("m*+r*", "api")])
def test_folder_and_shards_give_byte_identical_stores_and_batches(
        folder: Path, packed: str, teacher: str, tmp_path: Path, preset: str,
        through: str) -> None:
    from_folder = _config(folder, teacher, tmp_path / "folder.zarr", preset)
    reinforce(from_folder, rank=0, world=1)
    from_shards = dataclasses.replace(from_folder, data=packed, out=str(tmp_path / "shards.zarr"))
    if through == "api":
        reinforce(from_shards, rank=0, world=1)
    else:
        recipe_file = tmp_path / "recipe.json"
        recipe_file.write_text(from_shards.recipe.to_json())
        assert cli_main([
            "reinforce", "--data", packed, "--teacher", teacher, "--recipe", str(recipe_file),
            "--slots", str(SLOTS), "--topk", str(K), "--out", from_shards.out, "--seed", "7",
            "--batch", str(BATCH), "--block-size", str(BLOCK), "--slot-group", "2",
            "--device", "cpu", "--threads", "2", "--compile", "off", "--no-progress"]) == 0
    # Every file the same, besides the shards' table of members (`store.sources`, additive).
    shard_files = tree_bytes(Path(from_shards.out))
    assert any(name.startswith("sources/") for name in shard_files)
    assert {name: data for name, data in shard_files.items()
            if not name.startswith("sources/")} == tree_bytes(Path(from_folder.out))
    if preset != "m*+r*":
        return  # the loaders are compared on the recipe with every replay input (partners too)
    want = _epoch(Path(from_folder.out), folder)
    got = _epoch(Path(from_shards.out), packed)
    assert len(got) == len(want) == 3
    for (a, ta), (b, tb) in zip(got, want, strict=True):
        assert torch.equal(a, b) and torch.equal(ta, tb)


def test_plain_loader_serves_shards_as_the_folder(folder: Path, packed: str) -> None:
    """Evaluation batches, and fresh rrc crops (image sizes read from shard members)."""
    config = LoaderConfig(batch_size=4, num_threads=1, read_threads=2, read_ahead=2)
    for options in ({"augment": Augment.EVAL}, {"recipe": recipe("rrc")}):
        served = []
        for data in (folder, packed):
            with PlainLoader(data, config, size=32, **options) as loader:  # type: ignore[arg-type]
                served.append([(images.clone(), targets.clone()) for images, targets in loader])
        assert len(served[0]) == len(served[1]) == 3
        for (a, ta), (b, tb) in zip(*served, strict=True):
            assert torch.equal(a, b) and torch.equal(ta, tb)


# ------------------------------------------------------------------ bad input


def _shard(tmp_path: Path, folder: Path, count: int = 4, name: str = "s.tar") -> Path:
    return _tar(tmp_path / name, _samples(folder)[:2 * count])


def test_empty_truncated_damaged_and_foreign_shards_are_refused(
        folder: Path, tmp_path: Path) -> None:
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"empty.tar is empty \(0 bytes\)"):
        list_dataset(tmp_path / "empty.tar")
    whole = _shard(tmp_path, folder).read_bytes()
    first = list_dataset(tmp_path / "s.tar")
    cut = int(first.source.offsets[2]) + 100  # type: ignore[attr-defined]
    (tmp_path / "cut.tar").write_bytes(whole[:cut])
    with pytest.raises(DatasetError, match=r"cut.tar is truncated: member 'china/000006.jpg' "
                                           "needs"):
        list_dataset(tmp_path / "cut.tar")
    # Cut at a member boundary: every member whole, but no end-of-archive blocks.
    boundary = int(first.source.offsets[3]) - 512  # type: ignore[attr-defined]
    (tmp_path / "boundary.tar").write_bytes(whole[:boundary])
    with pytest.raises(DatasetError, match="boundary.tar is truncated.*end-of-archive"):
        list_dataset(tmp_path / "boundary.tar")
    damaged = bytearray(whole)
    damaged[boundary:boundary + 512] = b"\x17" * 512  # a header overwritten
    (tmp_path / "damaged.tar").write_bytes(bytes(damaged))
    with pytest.raises(DatasetError, match="damaged.tar: the bytes at offset .* neither a tar"):
        list_dataset(tmp_path / "damaged.tar")
    (tmp_path / "text.tar").write_bytes(b"hello, not a tar archive\n" * 40)
    with pytest.raises(DatasetError, match="text.tar is not a readable tar archive"):
        list_dataset(tmp_path / "text.tar")
    os.mkfifo(tmp_path / "fifo.tar")  # opening it blocking would wait for a writer forever
    with pytest.raises(DatasetError, match="fifo.tar is not a regular file"):
        list_dataset(tmp_path / "fifo.tar")
    with pytest.raises(DatasetError, match="compressed"):
        list_dataset(tmp_path / "x-{0..1}.tar.gz")
    with pytest.raises(DatasetError, match="file list"):
        list_dataset(tmp_path / "s.tar", tmp_path / "list.txt")


def test_forged_sizes_allocate_nothing_and_read_nothing_outside(tmp_path: Path) -> None:
    """A member claiming more bytes than the shard holds, and a pax header claiming 8 GB
    (read whole by tarfile were its reads not capped)."""
    info = _info("a/x.jpg", 10)
    header = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    header[124:136] = b"77777777777\0"  # size: 8 GB
    header[148:156] = b"        "
    header[148:155] = f"{sum(header):06o}\0".encode()
    (tmp_path / "size.tar").write_bytes(bytes(header) + b"\xff\xd8" * 256 + b"\0" * 1024)
    with pytest.raises(DatasetError, match=r"size.tar is truncated: member 'a/x.jpg' needs"):
        list_dataset(tmp_path / "size.tar")
    pax = bytearray(_info("././@PaxHeader", 10, tarfile.XHDTYPE).tobuf(tarfile.USTAR_FORMAT))
    pax[124:136] = b"77777777777\0"
    pax[148:156] = b"        "
    pax[148:155] = f"{sum(pax):06o}\0".encode()
    (tmp_path / "pax.tar").write_bytes(bytes(pax) + b"16 path=a/y.jpg\n" + b"\0" * 4000)
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match="pax.tar"):
            list_dataset(tmp_path / "pax.tar")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


@pytest.mark.parametrize("case, message", [
    ("missing-cls", r"sample 'china/000000' \('china/000000.jpg'\) has no .cls member"),
    ("text-cls", r"member 'china/000000.cls': label 'cat' is not an integer"),
    ("negative-cls", r"label '-1' is not an integer"),
    ("huge-cls", r"label '4294967296' is not an integer in 0..1048575"),
    ("long-cls", r"a label member of 100 bytes"),
    ("duplicate-in-shard", r"key 'china/000000' names two samples"),
    ("dotdot", r"member name 'china/../../etc/x.jpg' is outside the archive"),
    ("absolute", r"member name '/etc/x.jpg' is absolute"),
    ("link", r"member 'china/000099.jpg' is a link"),
    ("two-images", r"sample 'china/000000' has two image members"),
    ("no-image", r"sample 'china/000099' has no image member"),
])
def test_malformed_samples_are_refused_naming_shard_and_member(
        folder: Path, tmp_path: Path, case: str, message: str) -> None:
    members = _samples(folder)[:4]  # china/000000 and china/000003, each with its .cls
    image = members[0][1]
    change = {
        "missing-cls": lambda m: m[:1] + m[2:],
        "text-cls": lambda m: [m[0], (m[1][0], b"cat")] + m[2:],
        "negative-cls": lambda m: [m[0], (m[1][0], b"-1")] + m[2:],
        "huge-cls": lambda m: [m[0], (m[1][0], b"4294967296")] + m[2:],
        "long-cls": lambda m: [m[0], (m[1][0], b"1" * 100)] + m[2:],
        "duplicate-in-shard": lambda m: m + m[:2],
        "dotdot": lambda m: m + [("china/../../etc/x.jpg", image)],
        "absolute": lambda m: m + [("/etc/x.jpg", image)],
        "two-images": lambda m: m[:1] + [("china/000000.png", image)] + m[1:],
        "no-image": lambda m: m + [("china/000099.txt", b"x"), ("china/000099.cls", b"0")],
        "link": lambda m: m,
    }[case]
    shard = _tar(tmp_path / "bad.tar", change(members))
    if case == "link":
        with tarfile.open(shard, "a") as tar:
            link = _info("china/000099.jpg", 0, tarfile.SYMTYPE)
            link.linkname = "china/000000.jpg"
            tar.addfile(link)
    with pytest.raises(DatasetError, match=message) as caught:
        list_dataset(shard)
    assert "bad.tar" in str(caught.value)


def test_duplicate_keys_across_shards_are_refused(folder: Path, tmp_path: Path) -> None:
    members = _samples(folder)
    _tar(tmp_path / "a.tar", members[:6])
    _tar(tmp_path / "b.tar", members[4:10])
    with pytest.raises(DatasetError, match=r"key 'china/000006' names two samples, "
                                           r"member .* of .*a.tar and member .* of .*b.tar"):
        list_dataset(f"{tmp_path}/a.tar::{tmp_path}/b.tar")


def test_a_stale_or_malformed_index_falls_back_to_the_headers(
        folder: Path, tmp_path: Path) -> None:
    shard = _shard(tmp_path, folder)
    want = list_dataset(shard)
    index = tmp_path / "s.idx"
    index.write_text("v1.2 1\njpg 999999999 10 china/000000.jpg cls 1024 1 china/000000.cls\n")
    with pytest.warns(UserWarning, match="s.tar: its wds2idx index is not usable .* is not a "
                                         "data range"):
        got = list_dataset(shard)
    assert list(got.paths) == list(want.paths)
    os.utime(index, ns=(0, 0))  # older than the shard: stale, not read
    assert list(list_dataset(shard).paths) == list(want.paths)


def test_a_member_that_is_not_an_image_is_named_or_skipped(
        folder: Path, tmp_path: Path) -> None:
    members = _samples(folder)[:6]
    members[2] = (members[2][0], b"this is not an image")
    shard = _tar(tmp_path / "s.tar", members)
    listing = list_dataset(shard)
    with pytest.raises(ImageError, match=r"s.tar member 'china/000003.jpg' \(bytes \d+\.\.\d+\) "
                                         "is not a readable image"):
        scan_manifest(listing.source, listing.paths, listing.labels)
    manifest = scan_manifest(listing.source, listing.paths, listing.labels, skip_bad=True)
    assert manifest.skipped.tolist() == [False, True, False]
    assert manifest.sizes[1] == len(b"this is not an image")


def test_a_shard_replaced_after_the_store_was_made_is_named(
        folder: Path, tmp_path: Path) -> None:
    spec = pack_shards(folder, str(tmp_path / "s-%d.tar"), samples_per_shard=6).spec
    listing = list_dataset(spec)
    manifest = scan_manifest(listing.source, listing.paths, listing.labels)
    config = StoreConfig(recipe=recipe("rrc", output_size=32), teacher="test", seed=0, slots=1,
                         k=1, num_classes=3, block_size=4, slot_group=1)
    url = str(tmp_path / "store.zarr")
    create_store(url, manifest, config)
    StoreReader(url).check_dataset(list_dataset(spec))  # the same shards: no complaint
    # Same names and sizes, other bytes (one sampled member's content flipped).
    replaced = tmp_path / "s-1.tar"
    data = bytearray(replaced.read_bytes())
    start = int(listing.source.offsets[6])  # type: ignore[attr-defined]
    data[start + 200] ^= 0xFF
    replaced.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=rf"s-1.tar member '{listing.paths[6]}' .*content "
                                           "differs"):
        StoreReader(url).check_dataset(list_dataset(spec))
    assert cli_main(["verify", url, "--data", spec, "--no-progress"]) == 1
    # Other sizes: the listing check names shard and member.
    members = _samples(folder)[12:]
    members[0] = (members[0][0], members[0][1] + b"\0" * 10)
    _tar(replaced, members)
    with pytest.raises(DatasetError, match=rf"'{listing.paths[6]}': \d+ bytes in the store, \d+ "
                                           r"in the data \(shard .*s-1.tar member"):
        StoreReader(url).check_dataset(list_dataset(spec))


def test_a_shard_that_shrinks_while_read_is_named(folder: Path, tmp_path: Path) -> None:
    shard = _shard(tmp_path, folder)
    source = list_dataset(shard).source
    assert isinstance(source, ShardSource)
    source.read([3])  # opens the shard, as a loader's reading thread does
    os.truncate(shard, int(source.offsets[2]) + 10)
    with pytest.raises(DatasetError, match=r"s.tar member 'china/000009.jpg': read 0 of its "
                                           r"\d+ bytes at offset \d+; the shard ends early"):
        source.read([3])
    with pytest.raises(DatasetError, match=r"member 'china/000006.jpg': read 10 of"):
        source.read([2])
    file = LocalShardFile(str(shard))
    assert file.nbytes == int(source.offsets[2]) + 10
    file.close()


# ------------------------------------------------------------------ indexing in bulk


def test_worker_processes_index_as_threads_do(folder: Path, packed: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    want = list_dataset(packed, share=False)  # 3 shards: indexed in threads
    monkeypatch.setattr(shards, "default_workers", lambda count, per, ranks: 2)
    got = list_dataset(packed, share=False)
    assert got.paths.digest() == want.paths.digest()
    for a, b in ((got.labels, want.labels), (got.sizes, want.sizes),
                 (got.source.offsets, want.source.offsets),  # type: ignore[attr-defined]
                 (got.source.shard, want.source.shard)):  # type: ignore[attr-defined]
        np.testing.assert_array_equal(a, b)
    # Key hashes made in two processes still meet: a key in shards of both workers is found.
    members = _samples(folder)
    _tar(tmp_path / "a.tar", members[:6])
    _tar(tmp_path / "b.tar", members[4:10])
    with pytest.raises(DatasetError, match=r"key 'china/000006' names two samples"):
        list_dataset(f"{tmp_path}/a.tar::{tmp_path}/b.tar", share=False)
    # A worker's refusal is raised here, naming the shard.
    (tmp_path / "c.tar").write_bytes(b"not a tar archive" * 100)
    with pytest.raises(DatasetError, match=r"c.tar is not a readable tar archive"):
        list_dataset(f"{tmp_path}/a.tar::{tmp_path}/c.tar", share=False)
    # A refusal in a worker's second shard names that shard (not the worker's first): a label
    # nested too deeply for `json`, refused as such rather than as a RecursionError.
    image = members[0][1]
    _tar(tmp_path / "j1.tar", [("x/000001.jpg", image), ("x/000001.json", b'{"label": 1}')])
    _tar(tmp_path / "j2.tar", [("x/000002.jpg", image), ("x/000002.json", b"[" * 100_000)])
    with pytest.raises(DatasetError, match=r"shard \S*j2.tar member 'x/000002.json' is not "
                                           r"JSON: nested too deeply"):
        list_dataset(f"{tmp_path}/j1.tar::{tmp_path}/j2.tar::label=json:label", share=False)
    # A worker that cannot start is named with its shards; none is left running.
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    with pytest.raises(DatasetError, match=r"indexing shards \S*a.tar and 0 more: could not "
                                           r"start a worker process .*FileNotFoundError"):
        list_dataset(f"{tmp_path}/a.tar::{tmp_path}/b.tar", share=False)


def test_ranks_of_a_node_share_its_cores_for_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    from dalidr.data.index_workers import default_workers, ranks_on_node
    from dalidr.training.cpu_threads import available_cores

    cores = available_cores()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert ranks_on_node() == 8
    assert default_workers(10_000, 1, ranks_on_node()) == max(1, min(cores // 8, 32))
    assert default_workers(10_000, 1) == max(1, min(cores, 32))
    for odd in ("", "x", "0"):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", odd)
        assert ranks_on_node() == 1


def test_bulk_grouping_agrees_with_member_by_member(folder: Path, tmp_path: Path) -> None:
    # Packed afresh: other tests touch the shared shards (their index files then go stale).
    packed = pack_shards(folder, str(tmp_path / "shard-%d.tar"), samples_per_shard=5).spec
    for url in shards.parse_shard_spec(packed).urls():
        file = LocalShardFile(url)
        members = shards._Members.of(shards.tar_members(file))
        bulk = shards._samples_in_bulk(url, members, "cls", 32)
        assert bulk is not None
        slow = shards._samples_one_by_one(url, members, None)
        np.testing.assert_array_equal(bulk[0], slow[0])
        np.testing.assert_array_equal(bulk[1], slow[1])
        assert bulk[2] == slow[2]
        text = file.index_text()
        assert text is not None
        fast = shards._wds_index_members(text, file.nbytes)
        assert fast.names == [m[0] for m in shards.tar_members(file)]
        assert fast.keys == members.keys and fast.exts == members.exts
        np.testing.assert_array_equal(fast.offsets, members.offsets)
        # Odd members (a hidden one, a sample with two images) leave bulk grouping to the
        # member-by-member reading, which skips or names them.
        for odd in (("._x.jpg", 0), ("x/y.png", 1)):
            names = [*members.names]
            names.insert(odd[1], odd[0])
            odd_members = shards._Members.of(list(zip(
                names, [512] * len(names), [1] * len(names), strict=True)))
            assert shards._samples_in_bulk(url, odd_members, "cls", 32) is None
        file.close()


def _write_index(shard: Path, text: str) -> None:
    index = shard.with_suffix(".idx")
    index.write_text(text, encoding="utf-8")
    os.utime(index, ns=(shard.stat().st_mtime_ns + 1,) * 2)  # not older than the shard


def test_an_index_read_with_numpy_agrees_with_the_exact_reading(
        folder: Path, tmp_path: Path) -> None:
    spec = pack_shards(folder, str(tmp_path / "p-%d.tar"), samples_per_shard=6).spec
    shard = Path(shards.parse_shard_spec(spec).urls()[0])
    file = LocalShardFile(str(shard))
    text = file.index_text()
    assert text is not None
    headers = shards.tar_members(file)
    table = shards._index_table(text, file.nbytes)
    assert table is not None  # dalidr pack's index is read in bulk
    assert list(zip(table.names(), table.offsets.tolist(), table.sizes.tolist(),
                    strict=True)) == headers == shards._parse_wds_index_slowly(text, file.nbytes)
    found = shards._table_samples(table, "cls", 32)
    slow = shards._samples_one_by_one(str(shard), shards._Members.of(headers), None)
    assert found is not None
    np.testing.assert_array_equal(found[0], slow[0])
    np.testing.assert_array_equal(found[1], slow[1])
    assert list(table.keys(found[2])) == slow[2]
    file.close()
    want = list_dataset(shard)
    # Unusual but valid spellings of the same index: the exact reading, the same listing.
    first = text.split("\n")[1]
    for variant, bulk in ((text.replace(" ", "  "), True), (text.replace("\n", " \n"), True),
                          (text.replace("\n", "\r\n"), False), (text.replace(" ", "\t"), False),
                          (text.replace("\n", "\n\n"), True)):
        assert (shards._index_table(variant, shard.stat().st_size) is not None) == bulk
        assert parse_wds_index(variant, shard.stat().st_size) == headers
        _write_index(shard, variant)
        got = list_dataset(shard)
        assert list(got.paths) == list(want.paths)
        np.testing.assert_array_equal(got.labels, want.labels)
    # Non-ASCII names are read in bulk too, as the exact reading reads them.
    image = headers[0][0]
    renamed = text.replace(image.split("/")[0] + "/", "çhïna/", 1)
    assert shards._index_table(renamed, shard.stat().st_size) is not None
    assert (parse_wds_index(renamed, shard.stat().st_size)
            == shards._parse_wds_index_slowly(renamed, shard.stat().st_size))
    # Refused by name: a '..' component, a key listed twice.
    key = image[:image.index(".")]
    for bad, message in ((text.replace(f" {key}.", f" ../{key}."), r"outside the archive"),
                         (text.replace(f"v1.2 {len(want)}", f"v1.2 {len(want) + 1}")
                          + first + "\n", r"names two samples")):
        _write_index(shard, bad)
        with pytest.raises(DatasetError, match=message) as caught:
            list_dataset(shard)
        assert "p-0.tar" in str(caught.value)
    # A number past 18 digits (zero-padded): left to the exact reading, which reads it.
    offset = first.split()[1]
    padded = text.replace(f" {offset} ", " " + offset.zfill(19) + " ", 1)
    assert shards._index_table(padded, shard.stat().st_size) is None
    _write_index(shard, padded)
    assert list(list_dataset(shard).paths) == list(want.paths)


def test_cls_labels_are_read_in_bulk_or_named(folder: Path, tmp_path: Path) -> None:
    members = _samples(folder)[:6]
    members[1] = (members[1][0], b" 007\n")
    got = list_dataset(_tar(tmp_path / "ok.tar", members))
    assert int(got.labels[0]) == 7
    for bad in (b"1 2", b"", b"99999999999999999999"):
        members[1] = (members[1][0], bad)
        shard = _tar(tmp_path / "bad.tar", members)
        with pytest.raises(DatasetError, match=r"bad.tar member '.*\.cls': label .* is not an "
                                               "integer"):
            list_dataset(shard)
