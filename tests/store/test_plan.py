"""Epoch plans: deterministic, one global order whatever the world size, elastic resumption,
read locality, every slot before any repeat."""

from __future__ import annotations

import numpy as np
import pytest

from dalidr.errors import OptionError
from store.plan import PlanSpec, UnevenShards, canonical_pieces, epoch_order, plan_epoch

SPEC = PlanSpec(num_samples=103, slots=10, slot_group=4, block_size=16, seed=3)


def test_deterministic_and_varied() -> None:
    a, b = plan_epoch(SPEC, 5, 1, 4), plan_epoch(SPEC, 5, 1, 4)
    assert np.array_equal(a.samples, b.samples) and np.array_equal(a.slots, b.slots)
    c = plan_epoch(SPEC, 6, 1, 4)
    assert not np.array_equal(a.samples, c.samples)
    other_seed = plan_epoch(PlanSpec(103, 10, 4, 16, seed=4), 5, 1, 4)
    assert not np.array_equal(a.samples, other_seed.samples)
    assert a.samples.dtype == np.int64 and a.slots.dtype == np.int32


def test_single_rank_epoch_is_a_permutation() -> None:
    for epoch in range(4):
        plan = plan_epoch(SPEC, epoch)
        assert np.array_equal(np.sort(plan.samples), np.arange(103))
        assert not np.array_equal(plan.samples, np.arange(103))  # shuffled


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_shards_are_disjoint_and_complete_when_world_divides(world: int) -> None:
    spec = PlanSpec(num_samples=104, slots=10, slot_group=4, block_size=16, seed=3)
    shards = [plan_epoch(spec, 2, rank, world).samples for rank in range(world)]
    assert all(len(s) == 104 // world for s in shards)
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(104))
    # Each rank reads few blocks: its contiguous share of the shuffled blocks (1/world of them,
    # or 1/P when the world outnumbers the P canonical pieces) plus the two at its edges.
    share = -(-104 // min(world, canonical_pieces(104, 16)))
    for s in shards:
        assert len(np.unique(s // 16)) <= -(-share // 16) + 2


@pytest.mark.parametrize("world", [2, 3, 4, 5])
def test_uneven_world_sizes(world: int) -> None:
    pad = [plan_epoch(SPEC, 1, r, world).samples for r in range(world)]
    assert {len(s) for s in pad} == {-(-103 // world)}
    everything = np.concatenate(pad)
    assert np.array_equal(np.unique(everything), np.arange(103))  # complete
    assert len(everything) - 103 == (-103) % world  # only the padding repeats
    drop_spec = PlanSpec(103, 10, 4, 16, 3, uneven=UnevenShards.DROP)
    drop = np.concatenate([plan_epoch(drop_spec, 1, r, world).samples for r in range(world)])
    assert len(drop) == len(np.unique(drop)) == 103 - 103 % world  # disjoint


@pytest.mark.parametrize(("slots", "group"), [(10, 4), (12, 4), (7, 7), (5, 1)])
def test_every_slot_before_any_repeat(slots: int, group: int) -> None:
    spec = PlanSpec(num_samples=50, slots=slots, slot_group=group, block_size=8, seed=9)
    for cycle in range(2):
        used = np.zeros((50, slots), dtype=np.int64)
        for epoch in range(cycle * slots, (cycle + 1) * slots):
            plan = plan_epoch(spec, epoch)
            assert (plan.slots // group == plan.group).all()  # one slot group per epoch
            used[plan.samples, plan.slots] += 1
        assert (used == 1).all()


def test_cycles_differ_and_slots_spread() -> None:
    spec = PlanSpec(num_samples=2000, slots=8, slot_group=4, block_size=64, seed=1)
    first = plan_epoch(spec, 0)
    second = plan_epoch(spec, 8)
    order = np.argsort(first.samples)
    assert not np.array_equal(first.slots[order], second.slots[np.argsort(second.samples)])
    counts = np.bincount(first.slots - first.group * 4, minlength=4)
    assert counts.min() > 400  # each slot of the group used by about a quarter of the samples


def _interleaved(plans: list[np.ndarray]) -> np.ndarray:
    """What the ranks served, in global order: rank r's i-th sample is position r + world * i."""
    world, longest = len(plans), max(len(p) for p in plans)
    out = np.full(world * longest, -1, np.int64)
    for rank, samples in enumerate(plans):
        out[rank + world * np.arange(len(samples))] = samples
    return out[out >= 0]


@pytest.mark.parametrize(("num_samples", "block_size"), [(33, 4), (200, 8), (1, 1), (17, 3),
                                                        (100, 1), (1000, 7)])
def test_the_order_does_not_depend_on_what_else_is_evaluated(num_samples: int,
                                                             block_size: int) -> None:
    """Position by position, in any batch, at any world: the same sample (33 samples in 4-blocks
    give pieces of 4 and 5, which need different bit widths on their own)."""
    spec = PlanSpec(num_samples, 4, 2, block_size, seed=7, uneven=UnevenShards.DROP)
    whole = epoch_order(spec, 1, np.arange(num_samples), num_samples)
    assert np.array_equal(np.sort(whole), np.arange(num_samples))
    single = [int(epoch_order(spec, 1, np.array([j]), num_samples)[0])
              for j in range(num_samples)]
    assert single == whole.tolist()
    for world in (2, 3, 8):
        for rank in range(min(world, num_samples)):
            plan = plan_epoch(spec, 1, rank, world) if num_samples >= world else None
            if plan is not None:
                assert np.array_equal(plan.samples, whole[rank::world][: len(plan)])


def test_skipped_must_be_sorted_distinct_and_in_range() -> None:
    for bad in ([3, 1], [2, 2], [-1], [103]):
        with pytest.raises(OptionError, match="sorted, distinct"):
            plan_epoch(SPEC, 0, skipped=np.array(bad))


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5, 7, 8])
def test_global_order_does_not_depend_on_the_world(world: int) -> None:
    spec = PlanSpec(num_samples=200, slots=4, slot_group=2, block_size=8, seed=11,
                    uneven=UnevenShards.DROP)
    order = epoch_order(spec, 3, np.arange(200), 200)
    assert np.array_equal(np.sort(order), np.arange(200))  # a permutation
    served = _interleaved([plan_epoch(spec, 3, r, world).samples for r in range(world)])
    assert np.array_equal(served, order[: len(served)])  # a prefix of the one order
    # The view of a sample does not depend on the world either.
    alone = plan_epoch(spec, 3)
    slot_of = dict(zip(alone.samples.tolist(), alone.slots.tolist(), strict=True))
    for rank in range(world):
        plan = plan_epoch(spec, 3, rank, world)
        assert [slot_of[s] for s in plan.samples.tolist()] == plan.slots.tolist()


@pytest.mark.parametrize(("world", "new_world", "batch", "steps"),
                         [(4, 3, 5, 3), (2, 5, 7, 4), (3, 3, 4, 2), (5, 1, 3, 6)])
def test_elastic_resume_serves_each_sample_once(world: int, new_world: int, batch: int,
                                                steps: int) -> None:
    """`steps` batches at `world`, then the rest of the epoch at `new_world` from the global
    position reached: every sample once, only the final padding repeats."""
    spec = PlanSpec(num_samples=103, slots=6, slot_group=3, block_size=8, seed=5)
    before = [plan_epoch(spec, 2, r, world).samples[: steps * batch] for r in range(world)]
    position = steps * batch * world
    after = [plan_epoch(spec, 2, r, new_world, start=position) for r in range(new_world)]
    assert {len(p) for p in after} == {-(-(103 - position) // new_world)}
    served = np.concatenate(before + [p.samples for p in after])
    assert np.array_equal(np.unique(served), np.arange(103))
    assert len(served) - 103 == (-(103 - position)) % new_world  # the end's padding only
    # And the order is the one global order throughout.
    order = epoch_order(spec, 2, np.arange(103), 103)
    assert np.array_equal(_interleaved(before), order[:position])
    resumed = _interleaved([p.samples for p in after])[: 103 - position]
    assert np.array_equal(resumed, order[position:])


def test_skipped_samples_are_left_out_without_shortening_other_ranks() -> None:
    skipped = np.array([0, 1, 17, 50, 102])
    plans = [plan_epoch(SPEC, 4, r, 4, skipped=skipped) for r in range(4)]
    served = np.concatenate([p.samples for p in plans])
    assert not np.isin(served, skipped).any()
    assert np.array_equal(np.unique(served), np.setdiff1d(np.arange(103), skipped))
    assert {len(p) for p in plans} == {-(-98 // 4)}


def test_a_rank_reads_its_share_of_blocks_at_scale() -> None:
    """A million samples in 245 blocks: a rank of 8 reads about 1/8 of the blocks, a rank of
    3 (which does not divide the 128 pieces) still reads them all at most once."""
    spec = PlanSpec(num_samples=1_000_000, slots=10, slot_group=5, block_size=4096, seed=2)
    blocks = -(-1_000_000 // 4096)
    for rank in (0, 5):
        plan = plan_epoch(spec, 1, rank, 8)
        assert len(np.unique(plan.samples // 4096)) <= blocks // 8 + 2
    assert len(plan_epoch(spec, 1, 0, 3)) == -(-1_000_000 // 3)


def test_start_out_of_range_is_refused() -> None:
    with pytest.raises(Exception, match="start position is 104"):
        plan_epoch(SPEC, 0, 0, 2, start=104)
