"""Curricula over view difficulty: which stored view a sample trains on, easy first.

The paper (Sec. 2.2) finds that hard reinforcements (RandAugment, erase, mixing) help large
students and hurt small ones, and that curricula over the reinforcements ease the trade-off
(issue 25). dalidr's plan (`store.plan`) gives each epoch one slot group, so each sample has m
candidate views (the group's slots); a curriculum replaces the plan's uniform pick among them
by a weighted draw whose weights move from the easy candidates to all of them over training.

Difficulty. A `[n, slots]` uint8 array, 0 = easiest, 255 = hardest, made from a stored score by
`Measure.difficulty`: 255 - confidence for the teacher's confidence, the strength as it is for the
augmentation's strength (definitions in `store.difficulty`). Weights use each candidate's rank
among its sample's candidates, not the raw value, so the schedule means the same for both
measures and for stores whose scores spread differently: r = (rank) / (m - 1) in [0, 1], 0 for
the sample's easiest candidate, 1 for its hardest; tied candidates share their average rank, so
equal views always get equal weight.

Schedules (`Schedule`), with progress t = epoch / (total_epochs - 1), clipped to 1 (t = 1 from
the last epoch on):

- `none`: uniform over the candidates (the paper's draw).
- `linear`: w = 1 / (1 + (1 - t) r / temperature). At t = 0 the hardest candidate is
  1 + 1 / temperature times less likely than the easiest (21x at the default 0.05); the weights
  flatten linearly in t and are uniform at the last epoch. The choice is "easy to uniform", not
  "easy to hard": training ends on the stored distribution the paper trains on, and the mean
  difficulty served rises monotonically to the uniform mean. (A schedule that favoured hard views
  at the end would bias the whole store towards its strongest views, which the paper does not
  study.)
- `step`: for epochs < easy_epochs only the easiest half (r <= 1/2: the candidates at or below
  the sample's median rank), uniformly; all candidates uniformly from easy_epochs on.

The weights use only +, * and /, which IEEE 754 rounds the same on every machine (no exp or pow
from a libm), and the draw compares one uniform against a sequential cumulative sum, so the
chosen slot is the same bytes everywhere.

Randomness. One uniform per (seed, epoch, sample) from the counter-based hash the plan and the
sampler use (`dalidr.augment.hashing.mix64`), on a stream of its own: the choice is a pure
function of (seed, epoch, sample, its candidates and their difficulties). It does not depend on
the rank, the world size, the batch or the order of the candidates, so a resumed or elastic run
serves the same views (a sample a padded shard repeats gets the same view twice).
"""

from __future__ import annotations

import enum
import functools
import math
from dataclasses import dataclass

import numpy as np

from dalidr.augment.hashing import keyed, unit_interval
from dalidr.errors import OptionError

__all__ = [
    "Schedule",
    "Measure",
    "Curriculum",
    "parse_curriculum",
    "candidate_ranks",
    "curriculum_weights",
    "curriculum_slots",
    "served_difficulty",
    "expected_difficulty",
]

# Distinct from store.plan's streams (101..105) and the sampler's (0..2).
_STREAM_CURRICULUM = 0x25C0


class Schedule(enum.Enum):
    """How the choice of view moves from easy to hard over training."""

    NONE = "none"  # uniform over the candidates, every epoch
    LINEAR = "linear"  # from favouring easy views to uniform at the last epoch
    STEP = "step"  # the easiest half for the first easy_epochs epochs, then uniform


class Measure(enum.Enum):
    """Which stored score a curriculum orders views by (the `derived/<value>` array)."""

    CONFIDENCE = "confidence"  # the teacher's confidence: difficulty = 255 - confidence
    STRENGTH = "strength"  # the augmentation's strength: difficulty = strength

    def difficulty(self, stored: np.ndarray) -> np.ndarray:
        """uint8 difficulty (0 easiest, 255 hardest) from the stored uint8 score."""
        stored = np.asarray(stored)
        if stored.dtype != np.uint8:
            raise ValueError(f"stored {self.value} scores must be uint8, not {stored.dtype}")
        return (255 - stored).astype(np.uint8) if self is Measure.CONFIDENCE else stored.copy()


@dataclass(frozen=True)
class Curriculum:
    """A schedule of view difficulty over training; see the module docstring."""

    # The schedule.
    kind: Schedule = Schedule.NONE
    # Epochs of training: the linear schedule is uniform from epoch total_epochs - 1 on.
    total_epochs: int = 1
    # Step schedule only: epochs on the easiest half of the views (1..total_epochs); else 0.
    easy_epochs: int = 0
    # The stored score that orders views.
    measure: Measure = Measure.CONFIDENCE
    # Linear schedule: at epoch 0 the hardest view is 1 + 1 / temperature times less likely
    # than the easiest. Smaller is a stronger preference for easy views.
    temperature: float = 0.05

    def __post_init__(self) -> None:
        check = functools.partial(OptionError.unless, kind="curriculum option")
        for name, enum_type in (("kind", Schedule), ("measure", Measure)):
            value = getattr(self, name)
            if not isinstance(value, enum_type):
                raise OptionError.choice(f"curriculum {name}", value,
                                         [v.value for v in enum_type])
        for name in ("total_epochs", "easy_epochs"):
            value = getattr(self, name)
            check(isinstance(value, int) and not isinstance(value, bool), name, value,
                  "an integer")
        check(self.total_epochs >= 1, "total_epochs", self.total_epochs, ">= 1")
        if self.kind is Schedule.STEP:
            check(1 <= self.easy_epochs <= self.total_epochs, "easy_epochs", self.easy_epochs,
                  f"1..total_epochs ({self.total_epochs}) for the step schedule")
        else:
            check(self.easy_epochs == 0, "easy_epochs", self.easy_epochs,
                  f"0 (only the step schedule uses it; this one is {self.kind.value!r})")
        check(isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
              and self.temperature > 0, "temperature", self.temperature, "a number > 0")

    def progress(self, epoch: int) -> float:
        """t in [0, 1]: 0 at epoch 0, 1 from epoch total_epochs - 1 on."""
        if self.total_epochs == 1:
            return 1.0
        return min(epoch / (self.total_epochs - 1), 1.0)


def parse_curriculum(text: str, total_epochs: int) -> Curriculum:
    """A curriculum from a command-line spec: `none`, `linear[:MEASURE]` or
    `step:EASY_EPOCHS[:MEASURE]`, MEASURE one of `confidence` (default) and `strength`."""
    parts = text.strip().lower().split(":")
    try:
        kind = Schedule(parts[0])
    except ValueError:
        raise OptionError.choice("curriculum", text, "none, linear[:MEASURE], "
                                 "step:EASY_EPOCHS[:MEASURE]") from None
    easy = 0
    if kind is Schedule.STEP:
        if len(parts) < 2 or not parts[1].isdigit():
            raise OptionError.choice("curriculum", text, "step:EASY_EPOCHS[:MEASURE], "
                                     "EASY_EPOCHS an integer")
        easy, parts = int(parts[1]), parts[:1] + parts[2:]
    if len(parts) > 2 or (kind is Schedule.NONE and len(parts) > 1):
        raise OptionError.choice("curriculum", text, "none, linear[:MEASURE], "
                                 "step:EASY_EPOCHS[:MEASURE]")
    try:
        measure = Measure(parts[1]) if len(parts) == 2 else Measure.CONFIDENCE
    except ValueError:
        raise OptionError.choice("curriculum measure", parts[1],
                                 [m.value for m in Measure]) from None
    return Curriculum(kind, total_epochs, easy, measure)


def _candidates(difficulty: np.ndarray, allowed_slots: np.ndarray) -> np.ndarray:
    """Difficulty [n, m] (int64) of each sample's candidate slots, after checking shapes."""
    difficulty, allowed = np.asarray(difficulty), np.asarray(allowed_slots)
    if difficulty.ndim != 2 or difficulty.dtype != np.uint8:
        raise ValueError(f"difficulty must be uint8 [n, slots], not {difficulty.dtype} "
                         f"{difficulty.shape}")
    if allowed.ndim != 2 or allowed.shape[0] != difficulty.shape[0] or allowed.shape[1] < 1:
        raise ValueError(f"allowed_slots {allowed.shape} must be [n, m >= 1] for the "
                         f"difficulty's n = {difficulty.shape[0]} samples")
    if not np.issubdtype(allowed.dtype, np.integer):
        raise ValueError(f"allowed_slots must be integers, not {allowed.dtype}")
    if allowed.size and (allowed.min() < 0 or allowed.max() >= difficulty.shape[1]):
        raise ValueError(f"allowed_slots holds slots outside 0..{difficulty.shape[1] - 1}")
    return np.take_along_axis(difficulty, allowed.astype(np.int64), axis=1).astype(np.int64)


def candidate_ranks(difficulty: np.ndarray, allowed_slots: np.ndarray) -> np.ndarray:
    """r in [0, 1] [n, m] of each candidate among its sample's candidates: 0 easiest, 1 hardest,
    ties sharing their average rank (0 for every candidate when m = 1)."""
    d = _candidates(difficulty, allowed_slots)
    m = d.shape[1]
    below = (d[:, None, :] < d[:, :, None]).sum(axis=2)
    tied = (d[:, None, :] == d[:, :, None]).sum(axis=2)
    rank = below + (tied - 1) / 2.0
    return rank / (m - 1) if m > 1 else np.zeros(d.shape)


def curriculum_weights(curriculum: Curriculum, epoch: int, difficulty: np.ndarray,
                       allowed_slots: np.ndarray) -> np.ndarray:
    """float64 [n, m]: the probability of each candidate (in allowed_slots' order) in `epoch`."""
    w = _raw_weights(curriculum, epoch, difficulty, allowed_slots)
    return w / np.cumsum(w, axis=1)[:, -1:]


def _raw_weights(curriculum: Curriculum, epoch: int, difficulty: np.ndarray,
                 allowed_slots: np.ndarray) -> np.ndarray:
    """Unnormalised weights [n, m]; every row has a positive weight."""
    if epoch < 0:
        raise OptionError(f"epoch is {epoch}; must be >= 0")
    r = candidate_ranks(difficulty, allowed_slots)
    if curriculum.kind is Schedule.LINEAR:
        return 1.0 / (1.0 + (1.0 - curriculum.progress(epoch)) * r / curriculum.temperature)
    if curriculum.kind is Schedule.STEP and epoch < curriculum.easy_epochs:
        return (r <= 0.5).astype(np.float64)  # the easiest candidate always has r = 0
    return np.ones(r.shape)


def _uniforms(seed: int, epoch: int, samples: np.ndarray) -> np.ndarray:
    """One uniform in [0, 1) per sample, keyed by (seed, curriculum stream, epoch, sample)."""
    return unit_interval(keyed(seed, _STREAM_CURRICULUM, epoch, samples))


def curriculum_slots(curriculum: Curriculum, seed: int, epoch: int, samples: np.ndarray,
                     difficulty: np.ndarray, allowed_slots: np.ndarray) -> np.ndarray:
    """The slot (int32 [n]) each of `samples` trains on in `epoch`: one of its `allowed_slots`
    ([n, m] int), drawn with `curriculum_weights`; `difficulty` is uint8 [n, slots] of those
    samples (0 easiest). A pure function of its arguments; see the module docstring."""
    samples = np.asarray(samples)
    if seed < 0:
        raise OptionError(f"curriculum seed is {seed}; must be >= 0")
    if samples.shape != np.shape(allowed_slots)[:1] or not np.issubdtype(samples.dtype,
                                                                         np.integer):
        raise ValueError(f"samples {samples.shape} must be integers, one per row of "
                         f"allowed_slots {np.shape(allowed_slots)}")
    if samples.size and samples.min() < 0:
        raise ValueError(f"sample index {int(samples.min())} is negative")
    # Candidates in slot order, so the draw does not depend on the order they were given in.
    allowed = np.sort(np.asarray(allowed_slots), axis=1)
    # Sequential sums only (cumsum), so no reduction order can differ between machines.
    cumulative = np.cumsum(_raw_weights(curriculum, epoch, difficulty, allowed), axis=1)
    target = _uniforms(seed, epoch, samples) * cumulative[:, -1]
    index = np.minimum((cumulative <= target[:, None]).sum(axis=1), allowed.shape[1] - 1)
    return allowed[np.arange(len(allowed)), index].astype(np.int32)


def served_difficulty(difficulty: np.ndarray, slots: np.ndarray) -> float:
    """Mean difficulty of the views `slots` ([n]) serves, difficulty [n, slots]."""
    difficulty = np.asarray(difficulty)
    return float(difficulty[np.arange(len(difficulty)), np.asarray(slots)].mean())


def expected_difficulty(curriculum: Curriculum, epoch: int, difficulty: np.ndarray,
                        allowed_slots: np.ndarray) -> float:
    """Mean over samples of the difficulty `curriculum_slots` serves in expectation."""
    weights = curriculum_weights(curriculum, epoch, difficulty, allowed_slots)
    return float((weights * _candidates(difficulty, allowed_slots)).sum(axis=1).mean())
