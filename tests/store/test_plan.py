"""Epoch plans: deterministic, one permutation per shard, every slot before any repeat."""

from __future__ import annotations

import numpy as np
import pytest

from store.plan import PlanSpec, UnevenShards, plan_epoch

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
    # Each shard covers few blocks: at most its share plus the two it shares with neighbours.
    for s in shards:
        assert len(np.unique(s // 16)) <= -(-104 // world // 16) + 2


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
