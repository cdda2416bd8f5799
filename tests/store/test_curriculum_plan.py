"""Curricula end to end on real stores: difficulty computed and sealed, plans that serve easy
views first, deterministic, resumable and elastic."""

from __future__ import annotations

import numpy as np
import pytest

from dalidr.errors import StoreError
from store.curriculum import Curriculum, Measure, Schedule
from store.derived import read_derived
from store.difficulty_pass import block_difficulty, fill_difficulty
from store.layout import open_layout
from store.reader import StoreReader
from tests.store.helpers import NUM_SAMPLES, make_config, make_manifest, write_store

EPOCHS = 12  # one cycle of the 12 slots


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("curriculum") / "store")
    write_store(url, make_manifest(), make_config())
    assert fill_difficulty(url, progress=False) == 5  # every committed block
    return url


def test_difficulty_is_stored_sealed_and_resumable(scored: str, tmp_path) -> None:
    reader = StoreReader(scored)
    confidence, strength = read_derived(reader.layout, np.arange(NUM_SAMPLES), range(12))
    for block in range(reader.num_blocks):  # what the pass stored is the block's scores
        r = reader.layout.block_range(block)
        want = block_difficulty(reader, block)
        assert np.array_equal(confidence[r.start:r.stop], want[0])
        assert np.array_equal(strength[r.start:r.stop], want[1])
    assert strength.std() > 0 and confidence.std() > 0
    assert fill_difficulty(scored, progress=False) == 0  # nothing left: a rerun continues
    before = open_layout(scored).commit_rows()
    assert fill_difficulty(scored, redo=True, progress=False) == 5
    assert np.array_equal(open_layout(scored).commit_rows(), before)  # the same bytes again
    # Without derived arrays a curriculum is refused by name; plain plans still work.
    bare = str(tmp_path / "bare")
    write_store(bare, make_manifest(), make_config())
    with pytest.raises(StoreError, match="no derived arrays"):
        StoreReader(bare).plan(0, curriculum=Curriculum(Schedule.LINEAR, EPOCHS))
    assert len(StoreReader(bare).plan(0)) == NUM_SAMPLES


def test_a_forged_difficulty_is_refused(scored: str, tmp_path) -> None:
    import shutil

    import zarr

    forged = str(tmp_path / "forged")
    shutil.copytree(scored, forged)
    array = zarr.open_array(forged + "/derived/strength", mode="r+")
    values = np.asarray(array[0:8])
    values[0, 0] ^= 0xFF
    array[0:8] = values
    with pytest.raises(StoreError, match="block 0 .* do not match their digest"):
        read_derived(open_layout(forged), np.arange(8), range(12))


def _mean_served(reader: StoreReader, curriculum: Curriculum | None, epoch: int,
                 measure: Measure) -> float:
    """The mean difficulty (by `measure`) of the views a plan serves."""
    plan = reader.plan(epoch, curriculum=curriculum)
    confidence, strength = read_derived(reader.layout, plan.samples, range(12))
    difficulty = measure.difficulty(strength if measure is Measure.STRENGTH else confidence)
    return float(difficulty[np.arange(len(plan)), plan.slots].mean())


@pytest.mark.parametrize("measure", list(Measure))
def test_linear_curriculum_serves_easy_views_first(scored: str, measure: Measure) -> None:
    reader = StoreReader(scored)
    linear = Curriculum(Schedule.LINEAR, EPOCHS, measure=measure)
    for epoch in range(3):  # easier than the uniform draw of the same epoch
        assert (_mean_served(reader, linear, epoch, measure)
                < _mean_served(reader, None, epoch, measure))
    # and easier early than late (relative to each epoch's uniform mean: groups differ)
    gap = [_mean_served(reader, None, e, measure) - _mean_served(reader, linear, e, measure)
           for e in range(EPOCHS)]
    assert np.mean(gap[:3]) > np.mean(gap[-3:])
    for epoch in range(3):  # within the epoch's slot group, one view per sample
        plan = reader.plan(epoch, curriculum=linear)
        assert (plan.slots // 4 == plan.group).all()
        assert np.array_equal(plan.samples, reader.plan(epoch).samples)


def test_step_curriculum_switches_at_easy_epochs(scored: str) -> None:
    reader = StoreReader(scored)
    step = Curriculum(Schedule.STEP, EPOCHS, easy_epochs=4, measure=Measure.STRENGTH)
    for epoch in (0, 3, 4, 7):
        plan = reader.plan(epoch, curriculum=step)
        _, strength = read_derived(reader.layout, plan.samples, range(12))
        group = strength[:, plan.group * 4:(plan.group + 1) * 4].astype(int)
        served = strength[np.arange(len(plan)), plan.slots].astype(int)
        # The easiest half of a sample's 4 candidates: at or below its median.
        easy = served <= np.sort(group, axis=1)[:, 1]
        assert easy.all() if epoch < 4 else not easy.all()


def test_curriculum_plans_are_deterministic_resumable_and_elastic(scored: str) -> None:
    reader = StoreReader(scored)
    linear = Curriculum(Schedule.LINEAR, EPOCHS)
    whole = reader.plan(2, curriculum=linear)
    again = StoreReader(scored).plan(2, curriculum=linear)
    assert np.array_equal(whole.slots, again.slots)
    view = dict(zip(whole.samples.tolist(), whole.slots.tolist(), strict=True))
    for world, start in ((3, 0), (2, 12), (5, 7)):
        for rank in range(world):
            part = reader.plan(2, rank, world, start=start, curriculum=linear)
            assert [view[s] for s in part.samples.tolist()] == part.slots.tolist()
    assert not np.array_equal(whole.slots, reader.plan(2).slots)  # it does choose
