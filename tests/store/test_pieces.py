"""An epoch read in pieces (`store.pieces`, `store.prefetch`) is the whole-epoch read, cut.

Pieces serve exactly the (sample, slot, record, target) sequence of `StoreReader.epoch` for
every piece size (one batch, sizes that divide nothing), from any entry step and start
position, across epoch boundaries; each block is read once, by the first piece that needs it;
and what the prefetcher holds stays within one epoch's views plus the previous epoch's tail.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from dalidr.errors import OptionError
from store.pieces import TAIL, EpochPieces, PieceSizes, piece_bounds
from store.plan import EpochPlan
from store.prefetch import EpochPrefetcher
from store.reader import EpochData, StoreReader, TopKTargets
from tests.store.helpers import make_config, make_manifest, write_store

NUM = 203  # 26 blocks of 8, the last one short
BATCH = 4


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("pieces") / "store")
    write_store(path, make_manifest(NUM), make_config(block_size=8))
    return path


class RecordingReader(StoreReader):
    """A real reader that also notes the blocks each `read_views` call reads."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.calls: list[set[int]] = []

    def read_views(self, samples: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray,
                                                                          TopKTargets]:
        self.calls.append(set((np.asarray(samples) // self.config.block_size).tolist()))
        return super().read_views(samples, slots)


def _same(pieces: list[EpochData], whole: EpochData, entry: int = 0) -> None:
    """The pieces, in order, are the whole read's views from `entry` on."""
    assert [p.steps.start for p in pieces] == [entry] + [p.steps.stop for p in pieces[:-1]]
    assert pieces[-1].steps.stop == len(whole)
    samples = np.concatenate([p.samples for p in pieces])
    slots = np.concatenate([p.slots for p in pieces])
    records = np.concatenate([p.records for p in pieces])
    np.testing.assert_array_equal(samples, whole.plan.samples[entry:])
    np.testing.assert_array_equal(slots, whole.plan.slots[entry:])
    assert records.tobytes() == whole.records[entry:].tobytes()
    np.testing.assert_array_equal(np.concatenate([p.targets.classes for p in pieces]),
                                  whole.targets.classes[entry:])
    np.testing.assert_array_equal(np.concatenate([p.targets.probs for p in pieces]),
                                  whole.targets.probs[entry:])


def _read_all(pieces: EpochPieces) -> list[EpochData]:
    out = []
    for k in range(len(pieces)):
        pieces.read_next()
        out.append(pieces.piece(k))
    return out


@pytest.mark.parametrize(("first", "largest"), [(1, 1), (BATCH, BATCH), (BATCH, 4 * BATCH),
                                                (7, 30), (500, 500)])
def test_piece_bounds_grow_from_the_first_to_the_largest_then_the_tail(first, largest) -> None:
    for entry, stop in ((0, 203), (12, 203), (5, 6), (0, 68)):
        bounds = piece_bounds(entry, stop, PieceSizes(first, largest))
        sizes = np.diff(bounds)
        assert bounds[0] == entry and bounds[-1] == stop and (sizes > 0).all()
        assert ((bounds[:-1] - entry) % first == 0).all()  # whole batches from the entry
        assert sizes[0] == min(first, stop - entry) or len(sizes) == 1
        unit = largest // first * first
        body = sizes[:-1]  # the tail is the last piece
        want = [min(first * 2 ** max(i - 1, 0), unit) for i in range(len(body))]
        assert (body[:-1] == want[:-1]).all() and (body[-1:] <= want[-1:]).all()
        assert sizes[-1] >= -(-(stop - entry) // TAIL) or len(sizes) == 1


def test_piece_sizes_are_checked() -> None:
    with pytest.raises(OptionError, match="first=8, largest=4"):
        PieceSizes(8, 4)


@pytest.mark.parametrize("first", [1, BATCH, 7, 64])
@pytest.mark.parametrize(("rank", "world", "start", "entry"),
                         [(0, 1, 0, 0), (1, 3, 0, 0), (1, 3, 0, 10), (2, 3, 17, 3)])
def test_pieces_are_the_whole_epoch_cut(url, first, rank, world, start, entry) -> None:
    """Any piece size (1 batch of BATCH, 7 that divides nothing, one piece for all), any entry
    step (10: mid-piece for first=4 and 7), any global start position."""
    reader = StoreReader(url)
    plan = reader.plan(5, rank, world, start=start)
    pieces = EpochPieces(reader, plan, entry, PieceSizes(first, 4 * first))
    got = _read_all(pieces)
    _same(got, reader.read_epoch(plan), entry)
    assert len(got) == len(piece_bounds(entry, len(plan), PieceSizes(first, 4 * first))) - 1


def test_each_block_is_read_once_by_the_first_piece_that_needs_it(url) -> None:
    reader = RecordingReader(url)
    plan = reader.plan(3, rank=1, world=2)
    entry = 6
    pieces = EpochPieces(reader, plan, entry, PieceSizes(BATCH, 4 * BATCH))
    blocks = plan.samples[entry:] // 8
    first_step = {int(b): entry + int(np.flatnonzero(blocks == b)[0]) for b in np.unique(blocks)}
    for k in range(len(pieces)):
        reader.calls.clear()
        pieces.read_next()
        lo, hi = pieces.bounds[k], pieces.bounds[k + 1]
        new = {b for b, s in first_step.items() if lo <= s < hi}
        assert set().union(*reader.calls) == new  # its new blocks, each once, nothing else
        assert sum(len(call) for call in reader.calls) == len(new)
        # The cache holds every planned view of the blocks read so far, and only those.
        seen = {b for b, s in first_step.items() if s < hi}
        assert pieces.held_views == int(np.isin(blocks, list(seen)).sum())
    assert pieces.held_views == len(plan) - entry


def test_the_tail_releases_the_cache(url) -> None:
    reader = StoreReader(url)
    plan = reader.plan(2, 0, 1)
    pieces = EpochPieces(reader, plan, 0, PieceSizes(BATCH, 4 * BATCH))
    with pytest.raises(OptionError, match="piece 0 of epoch 2 is not read"):
        pieces.piece(0)
    got = _read_all(pieces)
    tail = got[-1]
    assert len(tail) >= NUM // TAIL and pieces.released
    assert pieces.held_views == len(tail)  # the tail only, not the epoch
    assert pieces.piece(len(pieces) - 1) is tail  # asked again: the same copy
    assert pieces.serves(tail.steps.start) and not pieces.serves(0)
    with pytest.raises(OptionError, match="piece 0 of epoch 2 was released"):
        pieces.piece(0)


def test_an_entry_at_the_end_reads_nothing(url) -> None:
    reader = StoreReader(url)
    plan = reader.plan(2, 0, 1)
    pieces = EpochPieces(reader, plan, len(plan), PieceSizes())
    assert len(pieces) == 0 and pieces.released and pieces.held_views == 0


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@pytest.mark.parametrize("first", [1, BATCH, 7])
def test_the_prefetcher_serves_epochs_piece_by_piece_across_boundaries(url, first) -> None:
    reader = StoreReader(url)
    sizes = PieceSizes(first, 3 * first)
    got: dict[int, list[EpochData]] = {}
    with EpochPrefetcher(reader, rank=1, world=3, start_epoch=4, sizes=sizes) as prefetcher:
        for data in prefetcher:
            got.setdefault(data.plan.epoch, []).append(data)
            if data.plan.epoch == 7:
                break
    for epoch in (4, 5, 6):
        _same(got[epoch], reader.epoch(epoch, 1, 3))
    assert got[7][0].steps.start == 0


def test_the_prefetcher_resumes_mid_epoch_and_mid_piece(url) -> None:
    reader = StoreReader(url)
    sizes = PieceSizes(BATCH, 4 * BATCH)
    whole = reader.epoch(6, 1, 3)
    with EpochPrefetcher(reader, rank=1, world=3, start_epoch=0, sizes=sizes) as prefetcher:
        # Step 10 lies inside the piece [8, 16) of a read from step 0: a resume reads from it.
        prefetcher.restart(6, 0, 10)
        pieces = [prefetcher.get(6, 0, 10)]
        while pieces[-1].steps.stop < len(whole):
            pieces.append(prefetcher.get(6, 0, pieces[-1].steps.stop))
        _same(pieces, whole, entry=10)
        # From a global position (a resume at another world size), then into the next epoch.
        moved = reader.epoch(2, 1, 3, start=17)
        prefetcher.restart(2, 17, 0)
        pieces = [prefetcher.get(2, 17, 0)]
        while pieces[-1].steps.stop < len(moved):
            pieces.append(prefetcher.get(2, 17, pieces[-1].steps.stop))
        _same(pieces, moved)
        first = prefetcher.get(3, 0, 0)
        direct = reader.epoch(3, 1, 3)
        assert first.steps.start == 0
        np.testing.assert_array_equal(first.samples, direct.plan.samples[:len(first)])
        assert first.records.tobytes() == direct.records[:len(first)].tobytes()
        # A piece asked again mid-piece is the one holding that step.
        assert 2 in prefetcher.get(3, 0, 2).steps


def test_what_the_prefetcher_holds_is_one_epoch_and_the_last_tail(url) -> None:
    """Before an epoch's tail is taken, the next epoch is not planned or read: the prefetcher
    holds that epoch's views (its cache) and nothing more; once the tail is taken the cache
    goes, and while the next epoch is read only the tail stays. Never two epochs."""
    events: list[tuple[str, int]] = []

    class PlanRecorder(StoreReader):
        def plan(self, epoch: int, *args: Any, **kwargs: Any) -> EpochPlan:
            events.append(("plan", epoch))
            return super().plan(epoch, *args, **kwargs)

    reader = PlanRecorder(url)
    n = len(reader.epoch(0, 0, 1))
    events.clear()
    sizes = PieceSizes(BATCH, 2 * BATCH)
    bounds = piece_bounds(0, n, sizes)
    tail = int(bounds[-1] - bounds[-2])
    with EpochPrefetcher(reader, start_epoch=0, sizes=sizes) as prefetcher:
        for epoch in range(3):
            for lo in bounds[:-2]:
                prefetcher.get(epoch, 0, int(lo))  # the previous epoch's tail is dropped
                assert prefetcher.held_views <= n
            _wait(lambda: prefetcher.ready(epoch, 0, int(bounds[-2])), "the tail")  # noqa: B023
            time.sleep(0.2)  # room for a worker that read ahead too early to show it
            assert prefetcher.held_views == n  # the whole epoch cached, nothing of the next
            events.append(("tail", epoch))
            prefetcher.get(epoch, 0, int(bounds[-2]))  # the tail: the cache is released
            _wait(lambda: prefetcher.ready(epoch + 1, 0, 0), "the next epoch")  # noqa: B023
            assert tail < prefetcher.held_views <= tail + n
    for epoch in (1, 2, 3):  # each epoch planned only after the one before gave its tail
        assert events.index(("plan", epoch)) > events.index(("tail", epoch - 1))
