"""The parameter sampler: determinism, dtype widths, and torchvision's distributions."""

from __future__ import annotations

import numpy as np
import pytest

from dalidr.augment.ops import NUM_OPS, OPS
from dalidr.augment.recipe import PRESETS, recipe
from dalidr.augment.records import (
    COORD_SCALE,
    MixMode,
    draw_records,
    record_dtype,
    validate_records,
)
from dalidr.errors import RecordError

HW = np.random.default_rng(0).integers(120, 900, size=(500, 2))


@pytest.mark.parametrize(
    ("name", "nbytes"), [("rrc", 9), ("rrc+ra/re", 21), ("rrc+mix", 33), ("m*+r*", 57)]
)
def test_bytes_per_record(name, nbytes) -> None:
    assert record_dtype(recipe(name)).itemsize == nbytes


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_records_depend_only_on_seed_sample_and_slot(name) -> None:
    r = recipe(name)
    whole = draw_records(r, 11, np.arange(500), np.arange(6), HW)
    part = draw_records(r, 11, [42, 7], [5, 1], HW)
    assert part[0, 0].tobytes() == whole[42, 5].tobytes()
    assert part[1, 1].tobytes() == whole[7, 1].tobytes()
    assert draw_records(r, 12, [42], [5], HW).tobytes() != part[0, 0].tobytes()
    validate_records(whole, r, len(HW))


def test_crops_follow_random_resized_crop() -> None:
    r = recipe("rrc")
    records = draw_records(r, 0, np.arange(500), np.arange(20), HW)
    height = HW[:, 0:1].astype(float)
    width = HW[:, 1:2].astype(float)
    h = np.floor(records["crop"][..., 2] * height / COORD_SCALE + 0.5)
    w = np.floor(records["crop"][..., 3] * width / COORD_SCALE + 0.5)
    area = h * w / (height * width)
    assert area.min() >= 0.079 and area.max() <= 1.0
    ratio = w / h
    in_range = (ratio >= 0.74) & (ratio <= 1.35)
    assert in_range.mean() > 0.99  # the rest are the fallback centre crops of extreme aspects
    assert 0.3 < area.mean() < 0.7  # uniform area in [0.08, 1] before rejection
    assert abs(records["flip"].mean() - 0.5) < 0.02


def test_rand_augment_and_erase_draws() -> None:
    r = recipe("rrc+ra/re")
    records = draw_records(r, 0, np.arange(500), np.arange(20), HW)
    counts = np.bincount(records["ops"].ravel(), minlength=NUM_OPS)
    assert (np.abs(counts / counts.sum() - 1 / NUM_OPS) < 0.01).all()
    mags = records["mags"]
    for op in OPS:
        chosen = mags[records["ops"] == op.op_id]
        if not op.has_magnitude:
            assert (chosen == 0).all(), op.name
        elif op.signed:
            assert set(np.unique(chosen)) == {-9, 9}, op.name
        else:
            assert set(np.unique(chosen)) == {9}, op.name
    erased = records["erase"][..., 2] > 0
    assert abs(erased.mean() - 0.25) < 0.02


def test_magnitude_noise_and_apply_probability() -> None:
    r = recipe("rrc+ra/re", ra_magnitude_std=0.5, ra_prob=0.5)
    records = draw_records(r, 0, np.arange(500), np.arange(10), HW)
    applied = records["ops"] != 0
    assert 0.42 < applied.mean() < 0.52  # half skipped (stored as Identity), 1/14 drew Identity
    assert len(np.unique(np.abs(records["mags"][applied]))) > 2


def test_mixing_draws() -> None:
    r = recipe("m*+r*")
    records = draw_records(r, 0, np.arange(500), np.arange(10), HW)
    mix = records["mix"]
    assert abs((mix == MixMode.CUTMIX).mean() - 0.5) < 0.03
    assert (records["partner"] != np.arange(500)[:, None]).all()
    lam = records["lam"] / COORD_SCALE
    box = records["box"].astype(float) / COORD_SCALE
    cut = mix == MixMode.CUTMIX
    np.testing.assert_allclose(lam[cut], 1 - box[..., 2][cut] * box[..., 3][cut], atol=1e-3)
    assert abs(lam[mix == MixMode.MIXUP].mean() - 0.5) < 0.03  # Beta(0.2, 0.2) is symmetric
    assert (box[~cut] == 0).all()


def test_bad_inputs_name_the_culprit() -> None:
    with pytest.raises(RecordError, match="sample index 500 is outside"):
        draw_records(recipe("rrc"), 0, [500], [0], HW)
    bad_hw = HW.copy()
    bad_hw[3] = (0, 10)
    with pytest.raises(RecordError, match="sample 3 has image size"):
        draw_records(recipe("rrc"), 0, [0], [0], bad_hw)
    records = draw_records(recipe("rrc"), 0, [0], [0], HW)
    with pytest.raises(RecordError, match="dtype"):
        validate_records(records, recipe("rrc+ra/re"), 1)
