"""Tar shards through the lazy manifest: a store's `/sources` (issue 28, "a billion samples").

Real shards made by `dalidr pack`, real stores (made by `dalidr reinforce` from the shards, or
by `build_store` from the folder and given their sources by `add_sources`), real DALI CPU
pipelines: a `DatasetCheck.MANIFEST` loader on shards with sources serves what the listing
loader serves without indexing a shard, reads only its rank's blocks of the table, and refuses
a forged block, a broken seal, a renamed shard and a shard whose size changed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
import zarr
from safetensors.torch import save_file

from dalidr.augment.recipe import recipe
from dalidr.data import data_source, dataset, node_cache, shards
from dalidr.data.dataset import list_dataset
from dalidr.data.pack import pack_shards
from dalidr.data.sample_data import make_corpus
from dalidr.errors import DatasetError, StoreError
from dalidr.teacher.reinforce import CompileMode, ReinforceConfig, reinforce
from dalidr.training.loader import DatasetCheck, LastBatch, LoaderConfig, ReinforcedLoader
from store.inspect import inspect_store
from store.manifest import scan_manifest
from store.reader import StoreReader
from store.sources import SOURCES, SourcesBlockError, SourcesView, add_sources
from store.subset import subset_store
from tests.store.helpers import tree_bytes
from tests.store.test_manifest_view import _batches
from tests.store_builder import BuiltStore, build_store

IMAGES, BLOCK = 12, 4


@pytest.fixture(autouse=True)
def _no_node_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(node_cache.ENV, "off")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sources") / "images"
    make_corpus(root, IMAGES, seed=3, long_side=(48, 72))
    return root


@pytest.fixture(scope="module")
def packed(folder: Path) -> str:
    """The folder as three shards (5, 5 and 2 samples)."""
    return pack_shards(folder, str(folder.parent / "packed" / "shard-%d.tar"),
                       samples_per_shard=5).spec


@pytest.fixture(scope="module")
def made(folder: Path, packed: str) -> str:
    """A store made by `dalidr reinforce` from the shards (a mixing recipe: partners are read
    through the source too)."""
    torch.manual_seed(5)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    weights = folder.parent / "test_resnet.safetensors"
    save_file(model.state_dict(), str(weights))
    out = str(folder.parent / "shards.zarr")
    config = ReinforceConfig(
        data=packed, teacher=f"test_resnet@{weights}",
        recipe=recipe("m*+r*", output_size=32, teacher_size=40), slots=2, k=2, out=out,
        seed=7, batch_size=6, block_size=BLOCK, slot_group=2, device="cpu", num_threads=2,
        compile=CompileMode.OFF, progress=False)
    reinforce(config, rank=0, world=1)
    return out


class _Calls:
    """Counts calls of the functions that index shards (instrumentation: each still runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: dict[str, int] = {}
        for owner, name in [(shards, "list_shards"), (dataset, "list_shards"),
                            (shards, "index_shard"), (shards, "tar_members"),
                            (data_source.LocalShardFile, "index_text"),
                            (data_source.LocalShardFile, "stream")]:
            monkeypatch.setattr(owner, name, self._counted(getattr(owner, name), name))

    def _counted(self, function: Callable[..., Any], name: str) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.counts[name] = self.counts.get(name, 0) + 1
            return function(*args, **kwargs)
        return counted

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _urls(spec: str) -> tuple[str, ...]:
    return shards.parse_shard_spec(spec).urls()


# ------------------------------------------------------------------ written at creation


def test_a_store_made_from_shards_records_where_each_member_lies(
        folder: Path, packed: str, made: str) -> None:
    layout = StoreReader(made).layout
    view = SourcesView.open(layout)
    assert view is not None and view.num_shards == 3
    listing = shards.list_shards(packed)
    assert list(view.names) == ["shard-0.tar", "shard-1.tar", "shard-2.tar"]
    assert view.sizes.tolist() == [os.path.getsize(u) for u in _urls(packed)]
    shard, offset = view.members(np.arange(IMAGES))
    assert shard.tolist() == listing.shard.tolist() and offset.tolist() == listing.offsets.tolist()
    # The manifest is the folder's: its sizes are the members' data sizes, its fingerprint the
    # folder's (the table is beside the manifest, not in it).
    listed = list_dataset(folder)
    assert layout.fingerprint == scan_manifest(folder, listed.paths, listed.labels).fingerprint
    assert StoreReader(made).manifest.sizes.tolist() == listing.sizes.tolist()


def test_resume_rewrites_sources_cut_short(folder: Path, packed: str, made: str,
                                           tmp_path: Path) -> None:
    store = tmp_path / "store.zarr"
    shutil.copytree(made, store)
    want = tree_bytes(store)
    group = zarr.open_group(str(store / SOURCES), mode="r+")
    group.attrs.clear()  # a kill between the arrays and the seal
    with pytest.raises(StoreError, match="has no seal: its writing was cut short"):
        SourcesView.open(StoreReader(str(store)).layout)
    weights = folder.parent / "test_resnet.safetensors"
    config = ReinforceConfig(
        data=packed, teacher=f"test_resnet@{weights}",
        recipe=recipe("m*+r*", output_size=32, teacher_size=40), slots=2, k=2, out=str(store),
        seed=7, batch_size=6, block_size=BLOCK, slot_group=2, device="cpu", num_threads=2,
        compile=CompileMode.OFF, progress=False)
    report = reinforce(config, rank=0, world=1)
    assert report.blocks_written == ()  # every block was committed: only the sources were redone
    assert tree_bytes(store) == want


def test_the_table_reads_by_the_specification_alone(packed: str, made: str) -> None:
    """docs/store-format.md 7.4, with zarr and hashlib only: digests, seal, member bytes."""
    import hashlib
    import json

    root = zarr.open_group(made, mode="r")
    group = root[SOURCES]
    assert isinstance(group, zarr.Group)
    arrays = {name: np.asarray(group[name][...]) for name in  # type: ignore[index]
              ("name_bytes", "name_offsets", "sizes", "members", "digests")}
    n, block = 12, BLOCK
    for b in range(-(-n // block)):
        h = hashlib.blake2b(digest_size=8, person=b"dalidr-sources")
        h.update(np.array(b, "<i8").tobytes())
        h.update(arrays["members"][b * block:(b + 1) * block].astype("<u8").tobytes())
        assert int.from_bytes(h.digest(), "little") == int(arrays["digests"][b])
    offsets, names = arrays["name_offsets"], arrays["name_bytes"]
    names_digest = hashlib.sha256(np.array(len(offsets) - 1, "<i8").tobytes()
                                  + offsets.astype("<i8").tobytes() + names.tobytes()).digest()
    seal = hashlib.sha256(b"dalidr-sources-v1" + names_digest
                          + arrays["sizes"].astype("<u8").tobytes()
                          + arrays["digests"].astype("<u8").tobytes()).hexdigest()
    attrs = json.loads((Path(made) / SOURCES / "zarr.json").read_text())["attributes"]
    fingerprint = json.loads((Path(made) / "zarr.json").read_text())["attributes"][
        "dalidr_store"]["fingerprint"]
    assert attrs["dalidr_sources"] == {"fingerprint": fingerprint, "sha256": seal}
    sizes = np.asarray(root["manifest/size"][...])  # type: ignore[index]
    digests = np.asarray(root["manifest/sha256"][...])  # type: ignore[index]
    folder = Path(_urls(packed)[0]).parent
    for i in range(n):
        shard, offset = (int(v) for v in arrays["members"][i])
        name = names[offsets[shard]:offsets[shard + 1]].tobytes().decode()
        with open(folder / name, "rb") as f:
            f.seek(offset)
            data = f.read(int(sizes[i]))
        assert hashlib.sha256(data).digest() == digests[i].tobytes()


# ------------------------------------------------------------------ the lazy loader


@pytest.mark.parametrize("p", [1.0, 0.5])
def test_the_manifest_loader_serves_the_listing_loaders_batches_indexing_nothing(
        packed: str, made: str, monkeypatch: pytest.MonkeyPatch, p: float) -> None:
    config = LoaderConfig(batch_size=4, p=p, num_threads=1, read_threads=2, read_ahead=2,
                          last_batch=LastBatch.PARTIAL)
    calls = _Calls(monkeypatch)
    eager = ReinforcedLoader(made, packed, config, check=DatasetCheck.LISTING, rank=1, world=2)
    assert calls.counts.get("index_shard", 0) == 3  # the instrumentation sees indexing
    calls.counts.clear()
    lazy = ReinforcedLoader(made, packed, config, check=DatasetCheck.MANIFEST, rank=1, world=2)
    assert lazy.listing is None and lazy.sources is not None
    expected, got = _batches(eager, 2), _batches(lazy, 2)
    assert calls.total == 0, calls.counts  # no shard indexed: no header, no wds2idx read
    assert [s for s, _, _ in got] == [s for s, _, _ in expected] and len(got) == 4
    for (_, images, targets), (_, want_images, want_targets) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(targets, want_targets)
    assert "manifest" not in lazy.reader.layout.__dict__  # never read whole


def test_shards_moved_to_another_folder_still_serve(packed: str, made: str,
                                                    tmp_path: Path) -> None:
    for url in _urls(packed):
        shutil.copy(url, tmp_path / os.path.basename(url))
    moved = str(tmp_path / "shard-{0..2}.tar")
    config = LoaderConfig(batch_size=4, num_threads=1)
    want = _batches(ReinforcedLoader(made, packed, config, check=DatasetCheck.MANIFEST), 1)
    got = _batches(ReinforcedLoader(made, moved, config, check=DatasetCheck.MANIFEST), 1)
    assert len(got) == len(want) == 3
    for (_, a, ta), (_, b, tb) in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ta, tb)


def test_a_renamed_or_missing_shard_is_refused_naming_it(packed: str, made: str,
                                                         tmp_path: Path) -> None:
    urls = _urls(packed)
    renamed = tmp_path / "other-1.tar"
    shutil.copy(urls[1], renamed)
    config = LoaderConfig(batch_size=4, num_threads=1)
    with pytest.raises(DatasetError, match=r"shard 1 is .*other-1.tar, the store .* was made "
                                           r"with 'shard-1.tar' there; use "
                                           r"check=DatasetCheck.LISTING"):
        ReinforcedLoader(made, [urls[0], str(renamed), urls[2]], config,
                         check=DatasetCheck.MANIFEST)
    with pytest.raises(DatasetError, match="2 shards, the store .* was made from 3"):
        ReinforcedLoader(made, list(urls[:2]), config, check=DatasetCheck.MANIFEST)


def test_a_shard_whose_size_changed_is_refused_when_opened(packed: str, made: str,
                                                           tmp_path: Path) -> None:
    for url in _urls(packed):
        shutil.copy(url, tmp_path / os.path.basename(url))
    grown = tmp_path / "shard-2.tar"
    with open(grown, "ab") as f:
        f.write(b"\0" * 512)  # still a valid tar (more zero blocks), other size
    config = LoaderConfig(batch_size=4, num_threads=1)
    size = os.path.getsize(grown)
    with pytest.raises(DatasetError, match=rf"shard .*shard-2.tar is {size} bytes, the store "
                                           rf".* was made from {size - 512} bytes"):
        ReinforcedLoader(made, str(tmp_path / "shard-{0..2}.tar"), config,
                         check=DatasetCheck.MANIFEST)


# ------------------------------------------------------------------ per block, and trust


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> tuple[BuiltStore, str]:
    """A store of 160 samples in 40 blocks made from the folder, given the sources of the
    folder packed as 10 shards by `add_sources`."""
    built = build_store(tmp_path_factory.mktemp("wide"), images=160, block_size=4, slots=1,
                        preset="rrc")
    spec = pack_shards(built.root, str(built.root.parent / "w-%d.tar"),
                       samples_per_shard=16).spec
    assert add_sources(built.url, spec)
    return built, spec


def test_a_rank_reads_only_its_share_of_the_sources(wide: tuple[BuiltStore, str]) -> None:
    built, spec = wide
    reader = StoreReader(built.url)
    view = SourcesView.open(reader.layout)
    assert view is not None and view.num_blocks == 40
    # 40 blocks among 4 ranks: an epoch of rank 1 locates its 10 blocks' members only.
    view.members(reader.plan(0, rank=1, world=4).samples)
    assert view.blocks_read == 10 and len(set(view.read_blocks)) == 10
    # A loader: at start the blocks of the sampled hashes, then exactly its epoch's blocks,
    # each read once.
    config = LoaderConfig(batch_size=8, num_threads=1, read_threads=2)
    loader = ReinforcedLoader(built.url, spec, config, check=DatasetCheck.MANIFEST, rank=1,
                              world=4)
    sources = loader.sources
    assert sources is not None
    manifest_view = loader.reader.layout.manifest_view
    assert manifest_view is not None
    sampled = set((manifest_view.sampled_indices() // BLOCK).tolist())
    assert set(sources.read_blocks) == sampled
    served = [s for samples, _, _ in _batches(loader, 1) for s in samples]
    mine = set((np.array(served) // BLOCK).tolist())
    assert mine == set((reader.plan(0, rank=1, world=4).samples // BLOCK).tolist())
    # The reading ahead may have begun the rank's next epoch (10 blocks of its own as well).
    ahead = set((reader.plan(1, rank=1, world=4).samples // BLOCK).tolist())
    assert len(mine) == len(ahead) == 10
    assert sampled | mine <= set(sources.read_blocks) <= sampled | mine | ahead
    assert len(set(sources.read_blocks)) < 40
    assert len(sources.read_blocks) == len(set(sources.read_blocks))  # each block read once


def test_a_forged_members_block_is_refused_naming_it(wide: tuple[BuiltStore, str],
                                                     tmp_path: Path) -> None:
    built, _ = wide
    store = tmp_path / "store.zarr"
    shutil.copytree(built.url, store)
    members = zarr.open_array(str(store / SOURCES / "members"), mode="r+")
    forged = np.asarray(members[...]).copy()
    forged[9, 1] += np.uint64(512)  # block 2, still inside its shard: valid zarr, wrong offset
    members[...] = forged
    view = SourcesView.open(StoreReader(str(store)).layout)
    assert view is not None
    view.block(0)  # an untouched block still reads
    with pytest.raises(SourcesBlockError, match=r"sources block 2 \(samples 8\.\.11\): the "
                                                "members rows do not match the block's digest"):
        view.members(np.array([9]))
    problems = inspect_store(str(store)).problems  # `dalidr inspect` reads every block
    assert problems and any(p.startswith("shard sources: ") and "sources block 2" in p
                            for p in problems)


def test_a_subset_keeps_the_shard_table(packed: str, made: str, tmp_path: Path) -> None:
    """`dalidr subset` of a store made from shards: same samples, same blocks, same table (so
    its loaders index no shard either), each block verified on the way."""
    out = tmp_path / "small.zarr"
    subset_store(made, str(out), slots=1, topk=1)
    assert tree_bytes(out / SOURCES) == tree_bytes(Path(made) / SOURCES)
    config = LoaderConfig(batch_size=4, num_threads=1)
    loader = ReinforcedLoader(str(out), packed, config, check=DatasetCheck.MANIFEST)
    assert loader.sources is not None
    loader.close()
    assert inspect_store(str(out)).problems == []


def test_a_broken_seal_or_shape_is_refused(wide: tuple[BuiltStore, str],
                                           tmp_path: Path) -> None:
    built, _ = wide
    store = tmp_path / "store.zarr"
    shutil.copytree(built.url, store)
    sizes = zarr.open_array(str(store / SOURCES / "sizes"), mode="r+")
    original = np.asarray(sizes[...]).copy()
    sizes[...] = original + np.uint64(1)
    with pytest.raises(StoreError, match=r"shard sources \('sources'\) do not match their "
                                         "seal"):
        SourcesView.open(StoreReader(str(store)).layout)
    sizes[...] = original
    assert SourcesView.open(StoreReader(str(store)).layout) is not None
    # Sources sealed for another manifest (copied from another store) are refused too.
    group = zarr.open_group(str(store / SOURCES), mode="r+")
    seal = dict(group.attrs["dalidr_sources"])  # type: ignore[arg-type]
    group.attrs["dalidr_sources"] = {**seal, "fingerprint": "0" * 64}
    with pytest.raises(StoreError, match="do not match their seal or the manifest's"):
        SourcesView.open(StoreReader(str(store)).layout)
    group.attrs["dalidr_sources"] = seal
    # A members array of the wrong shape is refused from its metadata, before any read.
    shutil.rmtree(store / SOURCES / "members")
    group.create_array("members", shape=(159, 2), dtype="<u8", chunks=(4, 2))
    with pytest.raises(StoreError, match=r"array 'sources/members' is uint64\[159, 2\], the "
                                         r"store needs uint64\[160, 2\]"):
        SourcesView.open(StoreReader(str(store)).layout)


# ------------------------------------------------------------------ add_sources


def test_add_sources_writes_what_reinforce_writes(packed: str, made: str,
                                                  tmp_path: Path) -> None:
    store = tmp_path / "store.zarr"
    shutil.copytree(made, store)
    want = tree_bytes(store)
    shutil.rmtree(store / SOURCES)  # a store of the release before the table
    config = LoaderConfig(batch_size=4, num_threads=1)
    old = ReinforcedLoader(str(store), packed, config, check=DatasetCheck.MANIFEST)
    assert old.sources is None and old.listing is not None  # the shards indexed, as before
    old.close()
    assert add_sources(str(store), packed)
    assert tree_bytes(store) == want
    assert not add_sources(str(store), packed)  # a second run writes nothing
    assert tree_bytes(store) == want


def test_dalidr_upgrade_data_adds_the_table(packed: str, made: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`dalidr upgrade STORE --data SHARDS`: the command users run on an older store."""
    from dalidr.cli import main

    store = tmp_path / "store.zarr"
    shutil.copytree(made, store)
    want = tree_bytes(store)
    shutil.rmtree(store / SOURCES)
    assert main(["upgrade", str(store), "--data", packed, "--no-progress"]) == 0
    assert "recorded where each sample lies" in capsys.readouterr().out
    assert tree_bytes(store) == want
    assert main(["upgrade", str(store), "--data", packed, "--no-progress"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert tree_bytes(store) == want


def test_add_sources_refuses_shards_that_are_not_the_stores(
        folder: Path, packed: str, made: str, tmp_path: Path) -> None:
    store = tmp_path / "store.zarr"
    shutil.copytree(made, store)
    shutil.rmtree(store / SOURCES)
    urls = _urls(packed)
    with pytest.raises(DatasetError, match="lists 12 samples, the shards hold 10"):
        add_sources(str(store), list(urls[:2]))
    with pytest.raises(DatasetError, match=r"sample 0 is '.*' in the store, shard .*shard-1.tar "
                                           r"member '.*' .* in the shards; not the store's"):
        add_sources(str(store), [urls[1], urls[0], urls[2]])
    other = tmp_path / "other"
    make_corpus(other, IMAGES, seed=4, long_side=(48, 72))  # the same names, other images
    spec = pack_shards(other, str(tmp_path / "o-%d.tar"), samples_per_shard=5).spec
    listed = list_dataset(spec)
    assert list(listed.paths) == list(StoreReader(str(store)).manifest.paths)
    with pytest.raises(DatasetError, match=r"sample \d+ \('.*'\) is \d+ bytes in the store, \d+ "
                                           r"in the shards \(shard .*o-\d.tar member"):
        add_sources(str(store), spec)
    assert not (store / SOURCES).exists()  # nothing written


def test_the_listing_check_still_indexes_the_shards(packed: str, made: str) -> None:
    """The default check lists the shards and compares them member by member, as before."""
    loader = ReinforcedLoader(made, packed, LoaderConfig(batch_size=4, num_threads=1))
    assert loader.sources is None and loader.listing is not None
    loader.close()


def test_shards_over_http_are_located_through_the_table(
        packed: str, made: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.remote_servers import serve_http

    config = LoaderConfig(batch_size=4, num_threads=1, read_threads=2)
    want = _batches(ReinforcedLoader(made, packed, config, check=DatasetCheck.MANIFEST), 1)
    store = tmp_path / "store.zarr"
    shutil.copytree(made, store)
    table = tree_bytes(store)
    with serve_http(Path(_urls(packed)[0]).parent) as server:
        remote = f"{server.url}/shard-{{0..2}}.tar"
        calls = _Calls(monkeypatch)
        got = _batches(ReinforcedLoader(made, remote, config, check=DatasetCheck.MANIFEST), 1)
        assert calls.total == 0, calls.counts
        assert server.gets > 0
        # The table made from the remote shards (sizes from the server) is the local one's.
        shutil.rmtree(store / SOURCES)
        assert add_sources(str(store), remote)
    assert tree_bytes(store) == table
    assert len(got) == len(want) == 3
    for (_, a, ta), (_, b, tb) in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ta, tb)
