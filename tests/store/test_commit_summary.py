"""The commit summary (`store.commit_summary`): a complete store's commit rows and skip counts
in a few objects, so that a reader starts without one read per block."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from dalidr.errors import StoreError
from store.commit_summary import SUMMARY, read_commit_summary, summarise
from store.guarded import GuardedLocalStore
from store.inspect import inspect_store
from store.layout import open_layout
from store.location import StoreLocation
from store.reader import StoreReader
from store.skip_marks import skipped_samples
from store.upgrade import upgrade_store
from store.writer import StoreWriter, create_store
from tests.store.helpers import make_config, make_manifest, producer

# Views marked skipped per block: blocks 1 and 3 have some, the others none.
MARKS = {1: [(0, 0), (0, 5), (3, 11)], 3: [(7, 2)]}


def _write(url: str, blocks: list[int] | None = None) -> StoreWriter:
    """The test store (37 samples, blocks of 8, 12 slots), with MARKS, written block by block
    (`blocks`: only those, in that order; the writer is not finished)."""
    manifest, config = make_manifest(), make_config()
    writer = StoreWriter(url) if Path(url).exists() else create_store(url, manifest, config)
    produce = producer(config, manifest)
    for block in range(writer.num_blocks) if blocks is None else blocks:
        r = writer.block_range(block)
        marks = np.zeros((len(r), config.slots), bool)
        for row, slot in MARKS.get(block, []):
            marks[row, slot] = True
        writer.write_block(block, *produce(r), skipped=marks)
    return writer


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    url = tmp_path_factory.mktemp("summary") / "store"
    assert _write(str(url)).finish()
    return url


@pytest.fixture()
def store(pristine: Path, tmp_path: Path) -> Path:
    shutil.copytree(pristine, tmp_path / "store")
    return tmp_path / "store"


def _marked_samples() -> np.ndarray:
    return np.array(sorted({8 * b + row for b, views in MARKS.items() for row, _ in views}))


class _Reads:
    """Keys the guarded local store is asked for (instrumentation of the real store)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.keys: list[str] = []
        original = GuardedLocalStore.get

        async def get(store, key, *args, **kwargs):
            self.keys.append(key)
            return await original(store, key, *args, **kwargs)

        monkeypatch.setattr(GuardedLocalStore, "get", get)

    def under(self, prefix: str) -> list[str]:
        return sorted(k for k in self.keys if k.startswith(prefix) and not k.endswith(".json"))


def test_a_finished_store_holds_its_commit_rows_and_skip_counts(store: Path) -> None:
    layout = open_layout(str(store))
    summary = read_commit_summary(layout)
    assert summary is not None
    rows = layout.commit_rows()
    assert np.array_equal(summary.digests, rows[:, :1 + layout.config.num_groups])
    assert summary.skipped_views.tolist() == [len(MARKS.get(b, [])) for b in range(5)]
    assert inspect_store(str(store)).problems == []


def test_the_start_reads_no_commit_row_and_only_marked_blocks(store: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    reads = _Reads(monkeypatch)
    reader = StoreReader(str(store))
    assert reader.committed().all()
    assert np.array_equal(skipped_samples(reader.layout), _marked_samples())
    assert reads.under("commit_map/") == []
    assert reads.under("skipped/") == ["skipped/c/1/0", "skipped/c/3/0"]  # one shard a block
    assert set(reads.under(SUMMARY)) == {f"{SUMMARY}/c/0/0"}
    # Reads are checked against the summary's digests, as against the commit map's, and no
    # shard object is looked up one by one (a request each on object storage).
    looked_up: list[str] = []
    exists = StoreLocation.exists
    monkeypatch.setattr(StoreLocation, "exists",
                        lambda self, key: looked_up.append(key) or exists(self, key))
    records, targets = reader.read_block(2)
    reader.read_views(np.arange(37), np.zeros(37, np.int64))
    assert len(records) == 8 and reads.under("commit_map/") == []
    assert not [key for key in looked_up if key.startswith(("records/", "topk/", "skipped/"))]


def test_without_a_summary_everything_is_read_and_found_the_same(store: Path,
                                                                  monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    layout = open_layout(str(store), read_only=False)
    with_summary = StoreReader(str(store)).epoch(0, 1, 3, skipped=_marked_samples())
    shutil.rmtree(store / SUMMARY)
    reads = _Reads(monkeypatch)
    assert np.array_equal(skipped_samples(open_layout(str(store))), _marked_samples())
    assert len(reads.under("skipped/")) == 5 and reads.under(SUMMARY) == []
    without = StoreReader(str(store)).epoch(0, 1, 3, skipped=_marked_samples())
    assert len(reads.under("commit_map/")) == 5
    assert np.array_equal(with_summary.records, without.records)
    assert np.array_equal(with_summary.targets.probs, without.targets.probs)
    assert read_commit_summary(layout) is None


def test_only_a_complete_store_gets_one_and_a_rewrite_removes_it(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    writer = _write(url, [0, 2, 4])
    assert not writer.finish()
    assert not (tmp_path / "store" / SUMMARY).exists()
    assert summarise(writer.layout) is None
    _write(url, [3, 1])
    assert writer.finish()
    expected = read_commit_summary(writer.layout)
    assert expected is not None
    # Rewriting a committed block (a store builder's copy, a test's reseal) drops the summary
    # first, so it never describes other data; finishing again writes the same one.
    _write(url, [1])
    assert not (tmp_path / "store" / SUMMARY / "zarr.json").exists()
    assert writer.finish()
    again = read_commit_summary(open_layout(url))
    assert again is not None and np.array_equal(again.table(), expected.table())


def test_the_last_of_several_writers_writes_it(tmp_path: Path) -> None:
    """Each writer calls finish after its last block; only the one that completes the store
    writes the summary, and it is the one a single writer would have written."""
    url = str(tmp_path / "store")
    first = _write(url, [0, 2, 4])
    second = _write(url, [1, 3])
    assert not first.finish() or second.finish()
    assert second.finish()
    one = tmp_path / "one"
    assert _write(str(one)).finish()
    for name in ("zarr.json", "c/0/0"):
        assert (tmp_path / "store" / SUMMARY / name).read_bytes() == (
            one / SUMMARY / name).read_bytes()


def test_a_forged_summary_is_refused_by_name_and_upgrade_rewrites_it(store: Path) -> None:
    array = zarr.open_array(str(store / SUMMARY), mode="r+")
    table = np.asarray(array[...])
    table[3, -1] = 0  # hides block 3's skipped view
    array[...] = table
    with pytest.raises(StoreError, match=rf"{SUMMARY}.*does not match its seal.*dalidr upgrade"):
        StoreReader(str(store)).committed()
    problems = inspect_store(str(store)).problems
    assert problems and problems[0].startswith("commit summary: ") and SUMMARY in problems[0]
    report = upgrade_store(str(store))
    assert report.commit_summary and report.changed
    summary = read_commit_summary(open_layout(str(store)))
    assert summary is not None and summary.skipped_views[3] == 1
    assert not upgrade_store(str(store)).changed  # current now: nothing written


def test_a_summary_whose_counts_lie_is_caught_where_the_marks_are_read(store: Path) -> None:
    """A summary resealed by a forger (valid seal) that moves a block's count: the block it
    points to is read, its marks disagree, and the reader says which block."""
    from store.commit_summary import _ATTRS, _seal

    layout = open_layout(str(store))
    array = zarr.open_array(str(store / SUMMARY), mode="r+")
    table = np.asarray(array[...])
    table[3, -1], table[2, -1] = 0, 1
    array[...] = table
    array.attrs[_ATTRS] = _seal(table, layout.fingerprint)
    with pytest.raises(StoreError, match="block 2 has 0 skipped views, its commit summary says 1"):
        skipped_samples(open_layout(str(store)))
    assert any("commit summary: block 2 counts 1" in p
               for p in inspect_store(str(store)).problems or [])


def test_upgrade_gives_an_older_complete_store_its_summary(store: Path) -> None:
    expected = (store / SUMMARY / "c" / "0" / "0").read_bytes()
    shutil.rmtree(store / SUMMARY)
    report = upgrade_store(str(store))
    assert report.commit_summary and report.found_version == make_config().schema_version
    assert (store / SUMMARY / "c" / "0" / "0").read_bytes() == expected
