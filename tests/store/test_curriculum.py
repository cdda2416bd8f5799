"""Curricula: easy views first, deterministic and elastic draws, named option errors."""

from __future__ import annotations

import numpy as np
import pytest

from dalidr.augment.recipe import recipe
from dalidr.augment.records import draw_records
from dalidr.errors import OptionError
from store.curriculum import (
    Curriculum,
    Measure,
    Schedule,
    candidate_ranks,
    curriculum_slots,
    curriculum_weights,
    expected_difficulty,
    parse_curriculum,
    served_difficulty,
)
from store.difficulty import augmentation_strength, teacher_confidence
from store.encoding import dequantise_probs, quantise_probs, sort_topk
from store.synthetic import synthetic_teacher

N, SLOTS, GROUP, SEED = 2000, 10, 5, 7


@pytest.fixture(scope="module")
def strength() -> np.ndarray:
    """Difficulty by strength of real RRC+RA/RE records, [N, SLOTS]."""
    hw = np.random.default_rng(1).integers(120, 900, size=(N, 2))
    r = recipe("rrc+ra/re")
    records = draw_records(r, SEED, np.arange(N), np.arange(SLOTS), hw)
    return Measure.STRENGTH.difficulty(augmentation_strength(records, r))


@pytest.fixture(scope="module")
def confidence() -> np.ndarray:
    """Difficulty by the synthetic teacher's stored top-1 confidence, [N, SLOTS]."""
    classes, probs = sort_topk(*synthetic_teacher(SEED, np.arange(N), SLOTS, 5, 100))
    stored = dequantise_probs(quantise_probs(probs, 127), 127)
    return Measure.CONFIDENCE.difficulty(teacher_confidence(classes, stored))


def _group(index: int, n: int = N) -> np.ndarray:
    """Every sample's candidates: the slots of slot group `index`."""
    return np.tile(np.arange(index * GROUP, (index + 1) * GROUP), (n, 1))


SAMPLES = np.arange(N)


def test_hand_computed_weights() -> None:
    difficulty = np.array([[10, 200, 50, 0], [7, 7, 7, 7]], dtype=np.uint8)
    allowed = np.array([[0, 1, 2], [1, 2, 3]])
    assert np.allclose(candidate_ranks(difficulty, allowed), [[0, 1, 0.5], [0.5, 0.5, 0.5]])
    linear = Curriculum(Schedule.LINEAR, total_epochs=5, temperature=0.05)
    w = np.array([1, 1 / 21, 1 / 11])
    assert np.allclose(curriculum_weights(linear, 0, difficulty, allowed)[0], w / w.sum())
    half = np.array([1, 1 / 11, 1 / 6])  # t = 1/2: the slope halves
    assert np.allclose(curriculum_weights(linear, 2, difficulty, allowed)[0], half / half.sum())
    for epoch in (4, 9):  # uniform at the last epoch and after
        assert np.allclose(curriculum_weights(linear, epoch, difficulty, allowed), 1 / 3)
    step = Curriculum(Schedule.STEP, total_epochs=5, easy_epochs=2)
    assert np.allclose(curriculum_weights(step, 1, difficulty, allowed), [[.5, 0, .5], [1 / 3] * 3])
    assert np.allclose(curriculum_weights(step, 2, difficulty, allowed), 1 / 3)
    # Ties get equal weight under every schedule.
    for c in (linear, step, Curriculum()):
        assert np.allclose(curriculum_weights(c, 0, difficulty, allowed)[1], 1 / 3)


@pytest.mark.parametrize("measure", ["strength", "confidence"])
def test_linear_serves_rising_difficulty(measure: str, request: pytest.FixtureRequest) -> None:
    difficulty = request.getfixturevalue(measure)
    c = Curriculum(Schedule.LINEAR, total_epochs=6, measure=Measure(measure))
    allowed = _group(1)
    expected = [expected_difficulty(c, e, difficulty, allowed) for e in range(8)]
    assert all(a < b for a, b in zip(expected[:5], expected[1:6], strict=True))
    uniform = expected_difficulty(Curriculum(), 0, difficulty, allowed)
    assert expected[5] == pytest.approx(uniform) and expected[7] == pytest.approx(uniform)
    served = [served_difficulty(difficulty, curriculum_slots(c, SEED, e, SAMPLES, difficulty,
                                                             allowed)) for e in (0, 3, 5)]
    assert served[0] < served[1] < served[2]
    assert served[0] < uniform - 10  # a real preference for easy views at the start
    assert served[0] == pytest.approx(expected[0], abs=3)  # the draw follows the weights


def test_step_switches_at_easy_epochs(strength: np.ndarray) -> None:
    c = Curriculum(Schedule.STEP, total_epochs=10, easy_epochs=3, measure=Measure.STRENGTH)
    allowed = _group(0)
    ranks = candidate_ranks(strength, allowed)
    served = []
    for epoch in range(6):
        slots = curriculum_slots(c, SEED, epoch, SAMPLES, strength, allowed)
        rank = ranks[np.arange(N), slots]  # the group is slots 0..4: column = slot
        assert (rank <= 0.5).all() == (epoch < 3)
        served.append(served_difficulty(strength, slots))
    assert max(served[:3]) + 5 < min(served[3:])


def test_none_is_uniform(strength: np.ndarray) -> None:
    slots = curriculum_slots(Curriculum(), SEED, 4, SAMPLES, strength, _group(1))
    counts = np.bincount(slots - GROUP, minlength=GROUP)
    assert counts.sum() == N and (np.abs(counts - N / GROUP) < 80).all()


def test_draws_are_pure_functions_of_seed_epoch_and_sample(strength: np.ndarray) -> None:
    c = Curriculum(Schedule.LINEAR, total_epochs=20, measure=Measure.STRENGTH)
    allowed = _group(1)
    a = curriculum_slots(c, SEED, 3, SAMPLES, strength, allowed)
    assert a.dtype == np.int32 and ((a >= GROUP) & (a < 2 * GROUP)).all()
    assert a.tobytes() == curriculum_slots(c, SEED, 3, SAMPLES, strength, allowed).tobytes()
    assert (a != curriculum_slots(c, SEED, 4, SAMPLES, strength, allowed)).mean() > 0.3
    assert (a != curriculum_slots(c, SEED + 1, 3, SAMPLES, strength, allowed)).mean() > 0.3
    # The order of the candidates does not matter.
    shuffled = allowed[:, ::-1].copy()
    assert np.array_equal(a, curriculum_slots(c, SEED, 3, SAMPLES, strength, shuffled))
    # Elastic: any subset of the samples, in any order (a rank's shard), gets the same views.
    pick = np.random.default_rng(3).permutation(N)[:301]
    part = curriculum_slots(c, SEED, 3, SAMPLES[pick], strength[pick], allowed[pick])
    assert np.array_equal(part, a[pick])


def test_measures_point_the_same_way() -> None:
    stored = np.array([[0, 128, 255]], dtype=np.uint8)
    assert Measure.CONFIDENCE.difficulty(stored).tolist() == [[255, 127, 0]]
    assert Measure.STRENGTH.difficulty(stored).tolist() == [[0, 128, 255]]
    with pytest.raises(ValueError, match="uint8"):
        Measure.STRENGTH.difficulty(stored.astype(np.int64))


@pytest.mark.parametrize(
    ("changes", "option"),
    [
        ({"kind": "linear"}, "kind"),
        ({"measure": "strength"}, "measure"),
        ({"total_epochs": 0}, "total_epochs"),
        ({"total_epochs": 2.5}, "total_epochs"),
        ({"kind": Schedule.STEP, "total_epochs": 5, "easy_epochs": 0}, "easy_epochs"),
        ({"kind": Schedule.STEP, "total_epochs": 5, "easy_epochs": 6}, "easy_epochs"),
        ({"kind": Schedule.LINEAR, "total_epochs": 5, "easy_epochs": 2}, "easy_epochs"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
    ],
)
def test_option_errors_name_the_option(changes: dict, option: str) -> None:
    with pytest.raises(OptionError, match=option):
        Curriculum(**changes)


def test_parse_curriculum() -> None:
    assert parse_curriculum("none", 9) == Curriculum(total_epochs=9)
    assert parse_curriculum("linear", 9) == Curriculum(Schedule.LINEAR, 9)
    assert parse_curriculum("Linear:strength", 9) == Curriculum(
        Schedule.LINEAR, 9, measure=Measure.STRENGTH)
    assert parse_curriculum("step:4:confidence", 9) == Curriculum(Schedule.STEP, 9, 4)
    for bad, option in (("cosine", "curriculum"), ("step", "curriculum"),
                        ("step:x", "curriculum"), ("linear:hardness", "measure"),
                        ("none:strength", "curriculum"), ("step:12", "easy_epochs")):
        with pytest.raises(OptionError, match=option):
            parse_curriculum(bad, 9)


def test_bad_draw_arguments(strength: np.ndarray) -> None:
    c, allowed = Curriculum(), _group(0)
    with pytest.raises(OptionError, match="epoch"):
        curriculum_slots(c, SEED, -1, SAMPLES, strength, allowed)
    with pytest.raises(OptionError, match="seed"):
        curriculum_slots(c, -1, 0, SAMPLES, strength, allowed)
    with pytest.raises(ValueError, match="outside"):
        curriculum_slots(c, SEED, 0, SAMPLES, strength, allowed + SLOTS)
    with pytest.raises(ValueError, match="one per row"):
        curriculum_slots(c, SEED, 0, SAMPLES[:5], strength, allowed)
    with pytest.raises(ValueError, match="uint8"):
        curriculum_slots(c, SEED, 0, SAMPLES, strength.astype(np.int16), allowed)
