"""How hard each stored view is: the teacher's confidence and the augmentation's strength.

A curriculum (issue 25, `store.curriculum`) serves easy views first and hard ones later, so every
(sample, slot) of a store gets two scores, computed from what the store already holds, never
from the teacher's float output or a fresh draw: a backfill of an existing store and the teacher
pass that writes a new one produce the same bytes. Both are `uint8` arrays shaped like the views
(`[n, slots]`), the `derived/confidence` and `derived/strength` arrays of schema v3.

Convention: each score keeps its own natural direction, and the curriculum turns it into a
difficulty (`store.curriculum.Measure.difficulty`):

- **confidence**: 255 = the teacher is sure (an easy view); difficulty = 255 - confidence;
- **strength**: 255 = the strongest augmentation (a hard view); difficulty = strength.

**Teacher confidence** (`teacher_confidence`). The probability the teacher ensemble puts on its
top-1 class, or, given the samples' labels, on the sample's label (0 when the label is not among
the stored top-k), quantised as round(255 p) (half to even), so p = 1 gives 255 and p = 0 gives
0. The probabilities are the stored ones, decoded by `store.encoding.dequantise_probs` (the
sqrt-quantised levels, float32), not renormalised. Why both: the top-1 mass says how ambiguous the
view looks to the teacher whatever the truth; the label mass also says whether the view still
shows its class (a crop of the background, or a mixed view whose partner dominates, scores low).
A sample without a label (-1) gets its top-1 confidence, the only one defined for it. A skipped
view's placeholder top-k (every level at 1/L^2) scores 0; skipped views are never served.

**Augmentation strength** (`augmentation_strength`). Three terms in [0, 1], each 0 for "nothing
done", averaged with equal weights (no measurement says one family is harder than another) and
quantised as round(255 s):

- occlusion O = 1 - a_crop (1 - a_erase): the fraction of the source image the view does not
  show, with a_crop the random-resized-crop's area as a fraction of the source (h w of the
  record's crop fractions) and a_erase the erased box's area as a fraction of the output (0 with
  no erase). A whole-image crop without erase gives 0; the presets' smallest crop (8 %) 0.92.
- RandAugment R = 1 - prod_j (1 - s_j) over the record's op slots, with s_j = |bin| / (bins - 1)
  for an op with a magnitude (bin 0 is the identity for every such op in the table), the recipe's
  nominal magnitude ra_magnitude / (bins - 1) for AutoContrast and Equalize (drawn like every
  other op, they have no knob of their own) and 0 for Identity (a skipped op is stored as one).
  More applied ops and bigger magnitudes both raise it, and it stays below 1 however many ops a
  recipe draws; the presets' two ops at bin 9 of 31 give 0.51.
- mixing M = 1 - |2 lambda - 1| for a MixUp or CutMix view (lambda = the own image's share): 1
  at an even mix, 0 for an unmixed view. A mixed view's O and R are the lambda-weighted means of
  its own and its partner's views, as the pixels are.

strength = (O + R + M) / 3. The scale is absolute, not per recipe: a recipe without a field
(no RandAugment, no erase, no mixing) contributes 0 for it, so an RRC view and an RRC+RA/RE view
with the same crop and no ops score the same, and the RRC store's views reach at most about 0.31
(78). No recipe stores an "original image" view (the loader's 1 - p coin serves originals from
outside the store); a record that replays to the whole image (`identity_records`) scores 0.

Reproducibility: everything is elementwise float64 arithmetic in a fixed order (the product over
op slots is an explicit loop, not a reduction whose order numpy may choose), then rounded half
to even, so the same records and top-k give the same bytes on every machine.
"""

from __future__ import annotations

import numpy as np

from dalidr.augment.ops import OPS
from dalidr.augment.recipe import Recipe
from dalidr.augment.records import COORD_SCALE, MixMode, record_dtype
from dalidr.errors import RecordError
from store.encoding import dequantise_probs

__all__ = [
    "STRENGTH_TERMS",
    "teacher_confidence",
    "confidence_from_gaps",
    "strength_terms",
    "augmentation_strength",
    "to_uint8",
]

# The terms of the strength score, in the order they are averaged.
STRENGTH_TERMS = ("occlusion", "randaugment", "mixing")

_HAS_MAGNITUDE = np.array([op.has_magnitude for op in OPS], dtype=bool)
_IDENTITY = np.array([op.name == "Identity" for op in OPS], dtype=bool)


def to_uint8(score: np.ndarray) -> np.ndarray:
    """Scores in [0, 1] -> uint8 round(255 score), half to even, clipped to 0..255."""
    return np.clip(np.rint(np.asarray(score, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def teacher_confidence(
    classes: np.ndarray, probs: np.ndarray, labels: np.ndarray | None = None
) -> np.ndarray:
    """uint8 confidence [n, ...] of views' top-k (`classes`, `probs`: [n, ..., k], by decreasing
    probability, as the store holds them); with `labels` [n], the mass on each sample's label."""
    classes, probs = np.asarray(classes), np.asarray(probs)
    if classes.shape != probs.shape or classes.ndim < 2:
        raise ValueError(f"top-k classes {classes.shape} and probabilities {probs.shape} must "
                         "have one shape [n, ..., k]")
    top1 = probs[..., 0].astype(np.float64)
    if labels is None:
        return to_uint8(top1)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != classes.shape[:1]:
        raise ValueError(f"labels {labels.shape} must be one per sample ({classes.shape[0]},)")
    label = labels.reshape((-1,) + (1,) * (classes.ndim - 1))
    # Classes are distinct within a view, so at most one entry matches.
    on_label = np.where(classes.astype(np.int64) == label, probs.astype(np.float64), 0.0)
    mass = on_label.max(axis=-1)
    return to_uint8(np.where(label[..., 0] < 0, top1, mass))


def confidence_from_gaps(
    classes: np.ndarray, prob_gaps: np.ndarray, levels: int, labels: np.ndarray | None = None
) -> np.ndarray:
    """`teacher_confidence` from the stored `topk/prob_gaps` and the store's `prob_levels`."""
    return teacher_confidence(classes, dequantise_probs(prob_gaps, levels), labels)


def _area(box: np.ndarray) -> np.ndarray:
    """Area of (y, x, h, w) boxes in COORD_SCALE fractions, as a fraction in [0, 1]."""
    h = box[..., 2].astype(np.float64) / COORD_SCALE
    w = box[..., 3].astype(np.float64) / COORD_SCALE
    return np.minimum(h * w, 1.0)


def _view_terms(records: np.ndarray, recipe: Recipe, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(occlusion, randaugment) of the own (prefix "") or partner ("p_") view."""
    kept = _area(records[prefix + "crop"])
    randaugment = np.zeros(records.shape)
    if recipe.has_ra_re:
        kept = kept * (1.0 - _area(records[prefix + "erase"]))
        ops = records[prefix + "ops"].astype(np.int64)
        if (ops >= len(OPS)).any():
            raise RecordError(f"records/{prefix}ops holds an op id outside 0..{len(OPS) - 1}")
        top = float(recipe.ra_num_bins - 1)
        scaled = np.abs(records[prefix + "mags"].astype(np.float64)) / top
        fixed = np.where(_IDENTITY[ops], 0.0, recipe.ra_magnitude / top)
        per_op = np.minimum(np.where(_HAS_MAGNITUDE[ops], scaled, fixed), 1.0)
        untouched = np.ones(records.shape)
        for j in range(per_op.shape[-1]):
            untouched = untouched * (1.0 - per_op[..., j])
        randaugment = 1.0 - untouched
    return 1.0 - kept, randaugment


def strength_terms(records: np.ndarray, recipe: Recipe) -> dict[str, np.ndarray]:
    """The float64 terms of `STRENGTH_TERMS`, each in [0, 1], shaped like `records`."""
    records = np.asarray(records)
    if records.dtype != record_dtype(recipe):
        raise RecordError(f"records have dtype {records.dtype}; recipe "
                          f"{recipe.variant.value!r} needs {record_dtype(recipe)}")
    occlusion, randaugment = _view_terms(records, recipe, "")
    mixing = np.zeros(records.shape)
    if recipe.has_mix:
        mixed = records["mix"] != MixMode.NONE
        lam = np.where(mixed, records["lam"].astype(np.float64) / COORD_SCALE, 1.0)
        p_occlusion, p_randaugment = _view_terms(records, recipe, "p_")
        occlusion = lam * occlusion + (1.0 - lam) * p_occlusion
        randaugment = lam * randaugment + (1.0 - lam) * p_randaugment
        mixing = np.where(mixed, 1.0 - np.abs(2.0 * lam - 1.0), 0.0)
    return {"occlusion": occlusion, "randaugment": randaugment, "mixing": mixing}


def augmentation_strength(records: np.ndarray, recipe: Recipe) -> np.ndarray:
    """uint8 strength of each record (any shape, of `record_dtype(recipe)`); see the module."""
    terms = strength_terms(records, recipe)
    total = terms["occlusion"] + terms["randaugment"] + terms["mixing"]
    return to_uint8(total / 3.0)
