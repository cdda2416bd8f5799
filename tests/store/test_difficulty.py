"""View difficulty: the teacher's confidence and the augmentation's strength, on real records."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import zarr

from dalidr.augment.ops import OP_IDS, OPS
from dalidr.augment.recipe import PRESETS, Recipe, recipe
from dalidr.augment.records import COORD_SCALE, MixMode, draw_records, identity_records
from dalidr.errors import RecordError
from store.difficulty import (
    augmentation_strength,
    confidence_from_gaps,
    strength_terms,
    teacher_confidence,
)
from store.encoding import dequantise_probs, quantise_probs, sort_topk
from store.reader import StoreReader
from store.synthetic import synthetic_teacher
from tests.store.helpers import make_config, make_manifest, write_store

HW = np.random.default_rng(0).integers(120, 900, size=(300, 2))


def _drawn(name: str, slots: int = 8, seed: int = 5) -> tuple[Recipe, np.ndarray]:
    r = recipe(name)
    return r, draw_records(r, seed, np.arange(len(HW)), np.arange(slots), HW)


# ----------------------------------------------------------------------------- confidence


def test_confidence_of_hand_made_topk() -> None:
    levels = 127
    classes = np.array([[[3, 1, 2]], [[0, 4, 2]], [[2, 0, 1]]], dtype=np.uint16)
    probs = np.array([[[1.0, 0.0, 0.0]], [[0.5, 0.3, 0.1]], [[0.6, 0.3, 0.05]]])
    gaps = quantise_probs(probs, levels)
    stored = dequantise_probs(gaps, levels)
    top1 = confidence_from_gaps(classes, gaps, levels)
    assert top1.dtype == np.uint8 and top1.shape == (3, 1)
    assert top1[0, 0] == 255  # a top-1 probability of 1.0
    assert top1[1, 0] == round(255 * float((round(np.sqrt(0.5) * 127) / 127) ** 2))
    assert np.array_equal(top1, teacher_confidence(classes, stored))
    # On the label: sample 0's label 1 sits at the lowest level; sample 1's label 4 second;
    # sample 2's label 7 is not in its top-k.
    on_label = confidence_from_gaps(classes, gaps, levels, labels=np.array([1, 4, 7]))
    assert on_label[0, 0] == round(255 * (1 / 127) ** 2)  # clamped to level 1, rounds to 0
    assert on_label[1, 0] == round(255 * float(stored[1, 0, 1]))
    assert on_label[2, 0] == 0
    # An unlabelled sample (-1) falls back to its top-1 confidence.
    assert confidence_from_gaps(classes, gaps, levels, np.array([-1, 4, 7]))[0, 0] == 255


def test_confidence_of_a_real_store(tmp_path) -> None:
    """From read_block's decoded targets or the raw stored gaps: the same bytes."""
    manifest, config = make_manifest(), make_config()
    url = str(tmp_path / "store")
    write_store(url, manifest, config)
    reader = StoreReader(url, dataset=manifest)
    records, targets = reader.read_block(1)
    rows = reader.layout.block_range(1)
    labels = np.asarray(manifest.labels)[rows.start:rows.stop]
    group = zarr.open_group(url, mode="r")
    gaps_array, classes_array = group["topk/prob_gaps"], group["topk/classes"]
    assert isinstance(gaps_array, zarr.Array) and isinstance(classes_array, zarr.Array)
    gaps = np.asarray(gaps_array[rows.start:rows.stop])
    raw_classes = np.asarray(classes_array[rows.start:rows.stop])
    for given in (None, labels):
        decoded = teacher_confidence(targets.classes, targets.probs, given)
        assert decoded.shape == (len(labels), config.slots) and decoded.dtype == np.uint8
        assert decoded.tobytes() == confidence_from_gaps(raw_classes, gaps, config.prob_levels,
                                                         given).tobytes()
    # The synthetic teacher puts the label first in most views: label mass = top-1 there.
    top1 = teacher_confidence(targets.classes, targets.probs)
    on_label = teacher_confidence(targets.classes, targets.probs, labels)
    first = targets.classes[..., 0] == labels[:, None]
    assert first.mean() > 0.5
    assert np.array_equal(on_label[first], top1[first])
    assert (~first).any() and (on_label[~first] <= top1[~first]).all()
    assert on_label[~first].mean() < top1[~first].mean()
    assert top1.min() < top1.max()
    # Strength from the stored records is strength from the records the teacher pass drew: a
    # backfill writes the same bytes as the teacher pass.
    drawn = draw_records(config.recipe, config.seed, np.arange(rows.start, rows.stop),
                         np.arange(config.slots), manifest.image_hw)
    assert augmentation_strength(records, config.recipe).tobytes() == augmentation_strength(
        drawn, config.recipe).tobytes()


def test_confidence_rejects_mismatched_shapes() -> None:
    classes, probs = synthetic_teacher(0, np.arange(4), 3, 5, 50)
    classes, probs = sort_topk(classes, probs)
    with pytest.raises(ValueError, match="one shape"):
        teacher_confidence(classes, probs[..., :4])
    with pytest.raises(ValueError, match="one per sample"):
        teacher_confidence(classes, probs, labels=np.arange(3))


# ----------------------------------------------------------------------------- strength


def _reference_strength(record: np.void, r: Recipe) -> float:
    """One record's strength, written out from the definition with Python floats."""

    def view(prefix: str) -> tuple[float, float]:
        crop = [int(v) for v in record[prefix + "crop"]]
        kept = min((crop[2] / COORD_SCALE) * (crop[3] / COORD_SCALE), 1.0)
        ra = 0.0
        if r.has_ra_re:
            erase = [int(v) for v in record[prefix + "erase"]]
            kept *= 1.0 - (erase[2] / COORD_SCALE) * (erase[3] / COORD_SCALE)
            untouched = 1.0
            for op, mag in zip(record[prefix + "ops"], record[prefix + "mags"], strict=True):
                spec = OPS[int(op)]
                if spec.name == "Identity":
                    s = 0.0
                elif spec.has_magnitude:
                    s = abs(int(mag)) / (r.ra_num_bins - 1)
                else:
                    s = r.ra_magnitude / (r.ra_num_bins - 1)
                untouched *= 1.0 - min(s, 1.0)
            ra = 1.0 - untouched
        return 1.0 - kept, ra

    occlusion, ra = view("")
    mixing = 0.0
    if r.has_mix and int(record["mix"]) != MixMode.NONE:
        lam = int(record["lam"]) / COORD_SCALE
        p_occlusion, p_ra = view("p_")
        occlusion = lam * occlusion + (1 - lam) * p_occlusion
        ra = lam * ra + (1 - lam) * p_ra
        mixing = 1.0 - abs(2 * lam - 1)
    return (occlusion + ra + mixing) / 3


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_strength_matches_the_definition_on_drawn_records(name: str) -> None:
    r, records = _drawn(name)
    strength = augmentation_strength(records, r)
    assert strength.shape == records.shape and strength.dtype == np.uint8
    reference = np.array([[_reference_strength(rec, r) for rec in row] for row in records])
    assert np.abs(strength.astype(np.float64) - reference * 255).max() <= 0.5 + 1e-9
    assert strength.min() < strength.max()  # the recipe's draws spread
    for term in strength_terms(records, r).values():
        assert term.min() >= 0 and term.max() <= 1


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_identity_views_have_strength_zero(name: str) -> None:
    r = recipe(name)
    assert not augmentation_strength(identity_records(r, 5), r).any()


def test_recipes_without_a_field_contribute_nothing_for_it() -> None:
    """Same crops, so an RRC view and its RRC+RA/RE twin differ only by the ops and erase."""
    rrc, rrc_records = _drawn("rrc")
    hard, hard_records = _drawn("rrc+ra/re")
    assert np.array_equal(rrc_records["crop"], hard_records["crop"])
    rrc_terms, hard_terms = strength_terms(rrc_records, rrc), strength_terms(hard_records, hard)
    assert not rrc_terms["randaugment"].any() and not rrc_terms["mixing"].any()
    assert not hard_terms["mixing"].any()
    assert (hard_terms["occlusion"] >= rrc_terms["occlusion"]).all()
    erased = hard_records["erase"][..., 2] > 0
    assert erased.any() and (hard_terms["occlusion"][erased] > rrc_terms["occlusion"][erased]).all()
    assert np.array_equal(hard_terms["occlusion"][~erased], rrc_terms["occlusion"][~erased])
    assert (augmentation_strength(hard_records, hard) >= augmentation_strength(rrc_records, rrc)
            ).all()
    assert augmentation_strength(rrc_records, rrc).max() <= 79  # occlusion alone: <= 0.92 / 3


def _one(r: Recipe) -> np.ndarray:
    return identity_records(r, 1)


def test_harder_parameters_give_larger_strength() -> None:
    r = recipe("rrc+ra/re", ra_num_ops=3)
    base = _one(r)

    def strength(change: Callable[[np.ndarray], object]) -> int:
        rec = base.copy()
        change(rec)
        return int(augmentation_strength(rec, r)[0])

    full = strength(lambda rec: None)
    assert full == 0
    # Smaller crop, harder.
    half = strength(lambda rec: rec.__setitem__("crop", (0, 0, COORD_SCALE, COORD_SCALE // 2)))
    tenth = strength(lambda rec: rec.__setitem__("crop", (0, 0, COORD_SCALE // 10, COORD_SCALE)))
    assert 0 < half < tenth
    assert half == round(255 * (1 - (COORD_SCALE // 2) / COORD_SCALE) / 3)
    # More ops, harder; bigger magnitude, harder.
    rotate = OP_IDS["Rotate"]

    def ops(count: int, mag: int) -> Callable[[np.ndarray], None]:
        def change(rec: np.ndarray) -> None:
            rec["ops"][0, :count] = rotate
            rec["mags"][0, :count] = -mag  # the sign does not matter
        return change

    one_op, two_ops, three_ops = strength(ops(1, 9)), strength(ops(2, 9)), strength(ops(3, 9))
    assert 0 < one_op < two_ops < three_ops
    assert strength(ops(1, 10)) == round(255 * (10 / 30) / 3)
    assert strength(ops(2, 10)) == round(255 * (1 - (2 / 3) ** 2) / 3)
    assert strength(ops(1, 9)) < strength(ops(1, 20)) < strength(ops(1, 30))
    # Magnitude-free ops count at the recipe's nominal magnitude; Identity counts nothing.

    def single(op: str) -> Callable[[np.ndarray], None]:
        return lambda rec: rec["ops"].__setitem__((0, 0), OP_IDS[op])

    assert strength(single("Equalize")) == strength(single("AutoContrast")) == one_op
    assert strength(single("Identity")) == 0
    # An erased box, harder; a bigger one, harder still.
    small = strength(lambda rec: rec.__setitem__("erase", (0, 0, 6553, 6553)))
    large = strength(lambda rec: rec.__setitem__("erase", (0, 0, 32767, 32767)))
    assert 0 < small < large


def test_mixing_is_hardest_at_an_even_mix() -> None:
    r = recipe("rrc+mix")
    rec = np.repeat(_one(r), 4)
    rec["mix"] = [MixMode.NONE, MixMode.MIXUP, MixMode.MIXUP, MixMode.CUTMIX]
    rec["partner"] = [0, 1, 2, 3]
    rec["lam"] = [COORD_SCALE, round(0.9 * COORD_SCALE), round(0.5 * COORD_SCALE),
                  round(0.5 * COORD_SCALE)]
    s = augmentation_strength(rec, r)
    assert s[0] == 0 < s[1] < s[2] == s[3] == round(255 / 3)
    # The partner's view counts by its share: a small partner crop raises a mixed view only.
    rec["p_crop"] = (0, 0, COORD_SCALE // 4, COORD_SCALE // 4)
    t = augmentation_strength(rec, r)
    assert t[0] == s[0] and (t[1:] > s[1:]).all()


def test_strength_is_byte_reproducible_and_checks_its_dtype() -> None:
    r, records = _drawn("m*+r*")
    a = augmentation_strength(records, r)
    b = augmentation_strength(records.copy(), r)
    part = augmentation_strength(records[17:40, 2:5], r)
    assert a.tobytes() == b.tobytes() and part.tobytes() == a[17:40, 2:5].tobytes()
    with pytest.raises(RecordError, match="rrc"):
        augmentation_strength(records, recipe("rrc"))
