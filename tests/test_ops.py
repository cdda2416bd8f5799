"""Every RandAugment op, across its whole magnitude range, against torchvision's definition.

Each op is isolated: DALI replays a record with only that op, and the reference applies
torchvision's op to DALI's own unaugmented view of the same record, so crop and resize
differences do not leak into the op's comparison.

Tolerances, per op: `mean` is the mean absolute difference in uint8 levels, `frac` the
fraction of pixels off by more than 2 levels. Where the two libraries define an op
differently, the reason is stated beside it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dalidr.augment.ops import OPS
from dalidr.augment.recipe import recipe
from dalidr.augment.records import identity_records
from dalidr.augment.replay import Replayer, ReplaySpec
from tests.reference import apply_op

SIDE = 128
BINS = (0, 3, 9, 15, 21, 27, 30)
EXACT = (0.0, 0.0)
TOLERANCE: dict[str, tuple[float, float]] = {
    "Identity": EXACT,
    # Nearest-neighbour sampling: DALI and torch place the shear origin half a pixel apart, so
    # pixels near NN rounding boundaries come from the neighbouring source pixel.
    "ShearX": (1.0, 0.06),
    "ShearY": (1.5, 0.07),
    "TranslateX": EXACT,
    "TranslateY": EXACT,
    # NN rounding at a handful of boundary pixels.
    "Rotate": (0.05, 0.002),
    # DALI rounds to nearest, torchvision truncates: at most 1 level.
    "Brightness": (1.0, 0.0),
    # YIQ chroma scaling (DALI) vs blending with grey (torchvision); same maths, 1-2 levels.
    "Color": (1.5, 0.0),
    "Contrast": (1.0, 0.0),
    # torchvision keeps the 1-pixel border unfiltered; DALI filters it with clamped edges.
    "Sharpness": (0.6, 4 * SIDE / SIDE**2 + 1e-3),
    "Posterize": EXACT,
    "Solarize": (0.05, 0.002),
    "AutoContrast": (1.0, 0.0),
    # PIL's table in integer arithmetic (dalidr.augment.equalize), as torchvision's: exact.
    "Equalize": EXACT,
}


def test_every_op_has_a_tolerance() -> None:
    assert sorted(TOLERANCE) == sorted(op.name for op in OPS)


@pytest.fixture(scope="module")
def ops_recipe():
    return recipe("rrc+ra/re", output_size=SIDE)


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_op_matches_torchvision(op, ops_recipe, corpus) -> None:
    signs = (1, -1) if op.signed else (1,)
    cases = [(b, s) for b in BINS for s in signs]
    records = identity_records(ops_recipe, len(cases))
    for i, (bin_, sign) in enumerate(cases):
        records[i]["ops"][0] = op.op_id
        records[i]["mags"][0] = sign * bin_
    jpegs = [corpus.jpegs[i % len(corpus)] for i in range(len(cases))]
    replayer = Replayer(ReplaySpec(ops_recipe), batch_size=len(cases), num_threads=1)
    base = replayer(jpegs, identity_records(ops_recipe, len(cases)))
    out = replayer(jpegs, records)
    mean_tol, frac_tol = TOLERANCE[op.name]
    for i, (bin_, sign) in enumerate(cases):
        image = torch.from_numpy(base[i]).permute(2, 0, 1).contiguous()
        expected = apply_op(image, op.op_id, sign * bin_, ops_recipe).permute(1, 2, 0).numpy()
        diff = np.abs(out[i].astype(np.int64) - expected.astype(np.int64))
        where = f"{op.name} bin {sign * bin_}"
        if (mean_tol, frac_tol) == EXACT:
            assert diff.max() == 0, f"{where}: expected exact, max diff {diff.max()}"
        else:
            assert diff.mean() <= mean_tol, f"{where}: mean diff {diff.mean():.3f} > {mean_tol}"
            assert (diff > 2).mean() <= frac_tol, f"{where}: {(diff > 2).mean():.4f} of pixels"
        if op.has_magnitude and bin_ >= 9 and op.name not in ("Solarize",):
            assert (out[i] != base[i]).any(), f"{where}: the op changed nothing"
