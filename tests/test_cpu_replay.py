"""The CPU's fused RandAugment/erase kernel against DALI's operators: the same pixels.

`dalidr.augment.cpu` replaces, on the CPU only, the DALI operators `auto_aug.select` runs
(`OpsBackend.DALI`, which the GPU keeps). A store labelled through one path must replay to the
same views through the other, so every comparison here is exact: each op at every magnitude
bin and sign, ops chained, erase boxes, the recipes' fills, mixing, and two output sides.
"""

from __future__ import annotations

import numpy as np
import pytest

from dalidr.augment.ops import OPS
from dalidr.augment.recipe import recipe
from dalidr.augment.records import draw_records, identity_records
from dalidr.augment.replay import OpsBackend, Output, Replayer, ReplaySpec


def _both(spec: ReplaySpec, jpegs, records, partners=None) -> tuple[np.ndarray, np.ndarray]:
    fused = Replayer(spec, batch_size=len(records), num_threads=2)(jpegs, records, partners)
    dali_spec = ReplaySpec(spec.recipe, spec.size, spec.output, ops_backend=OpsBackend.DALI)
    dali = Replayer(dali_spec, batch_size=len(records), num_threads=2)(jpegs, records, partners)
    return fused, dali


def _assert_same(fused: np.ndarray, dali: np.ndarray, what: str) -> None:
    differ = fused != dali
    assert not differ.any(), (
        f"{what}: {int(differ.sum())} values differ (max "
        f"{int(np.abs(fused.astype(int) - dali.astype(int)).max())}) in samples "
        f"{sorted(set(np.nonzero(differ)[0].tolist()))}"
    )


@pytest.mark.parametrize("side", [224, 97])
@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_every_op_at_every_bin_is_exact(op, side, corpus) -> None:
    r = recipe("rrc+ra/re", output_size=side)
    signs = (1, -1) if op.signed else (1,)
    cases = [(b, s) for b in range(r.ra_num_bins) for s in signs]
    records = identity_records(r, len(cases))
    for i, (bin_, sign) in enumerate(cases):
        records[i]["ops"][:] = op.op_id  # the op twice: chained through the scratch images
        records[i]["mags"][:] = (sign * bin_, bin_)
    jpegs = [corpus.jpegs[i % len(corpus)] for i in range(len(cases))]
    fused, dali = _both(ReplaySpec(r), jpegs, records)
    _assert_same(fused, dali, f"{op.name} at side {side}")


@pytest.mark.parametrize("name", ["rrc+ra/re", "m*+r*", "rrc+mix"])
def test_drawn_records_are_exact(name, corpus) -> None:
    r = recipe(name, output_size=128)
    records = draw_records(r, 3, np.arange(len(corpus)), [0, 1], corpus.image_hw).reshape(-1)
    jpegs = [corpus.jpegs[i % len(corpus)] for i in range(len(records))]
    partners = [corpus.jpegs[p] for p in records["partner"]] if r.has_mix else None
    if r.has_ra_re:
        assert (records["erase"][:, 2] > 0).any(), "no erase box drawn: the test would not see it"
    if r.has_mix:
        assert set(records["mix"].tolist()) == {1, 2}, "MixUp and CutMix must both be drawn"
    fused, dali = _both(ReplaySpec(r, output=Output.FLOAT_CHW), jpegs, records, partners)
    _assert_same(fused, dali, name)


def test_fills_are_the_recipes(corpus) -> None:
    r = recipe("rrc+ra/re", output_size=160, fill=128, erase_fill=(10, 200, 30))
    records = draw_records(r, 5, np.arange(len(corpus)), [0], corpus.image_hw)[:, 0]
    records["ops"][:, 0] = [op.op_id for op in OPS for _ in range(2)][: len(records)]
    records["mags"][:, 0] = -20
    records["erase"][::2] = (1000, 2000, 30000, 20000)
    fused, dali = _both(ReplaySpec(r), corpus.jpegs, records)
    _assert_same(fused, dali, "fill 128, erase fill (10, 200, 30)")
    assert (fused == (10, 200, 30)).all(axis=-1).any(), "the erase fill shows nowhere"
