"""The geometric CPU kernels (`dalidr.augment.cpu.geometry`) against DALI's operators, exactly.

The definition is DALI's CPU output of the op table (`dalidr.augment.ops`) as replay runs it
(`OpsBackend.DALI`): a record carrying only the op replays through DALI, and the kernel, given
DALI's own unaugmented view of the same record and the float32 magnitude `auto_aug` picks, must
produce the same bytes. Every bin, both signs, two sides (224 and an odd one, 97), fill 0 and a
grey fill, and a side past 256; then images that are not square, where swapping width and
height would show.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.auto_aug.core import signed_bin

from dalidr.augment.cpu import geometry
from dalidr.augment.ops import OP_IDS, OPS, replay_ops
from dalidr.augment.recipe import Recipe, recipe
from dalidr.augment.records import identity_records
from dalidr.augment.replay import OpsBackend, Replayer, ReplaySpec

KERNELS: dict[str, Callable[..., None]] = {
    "ShearX": geometry.shear_x,
    "ShearY": geometry.shear_y,
    "TranslateX": geometry.translate_x,
    "TranslateY": geometry.translate_y,
    "Rotate": geometry.rotate,
}
# (side, fill): the replay side and an odd one, each with fill 0 and a grey fill; and a side
# past 256, where DALI's warp restarts its running source point (a 256-column tile).
SIDES_FILLS = [(224, 0), (224, 128), (97, 0), (97, 128), (300, 0)]


def _magnitudes(op_name: str, side: int, num_bins: int) -> np.ndarray:
    """float32 magnitude per bin, as `auto_aug` derives it from the op's `mag_range`."""
    op_id = OP_IDS[op_name]
    if op_name.startswith("Translate"):  # whole pixels for this side, made by replay_ops
        return np.asarray(replay_ops(side, num_bins)[op_id].mag_range, dtype=np.float32)
    lo, hi = OPS[op_id].augmentation.mag_range
    return np.linspace(lo, hi, num_bins, dtype=np.float32)


def _cases(r: Recipe) -> list[tuple[int, int]]:
    return [(b, s) for b in range(r.ra_num_bins) for s in (1, -1)]


def _kernel_out(op_name: str, image: np.ndarray, magnitude: np.float32, fill: int) -> np.ndarray:
    # Garbage in dst: an exact match then also shows that every pixel was written.
    dst = np.random.default_rng(7).integers(0, 256, image.shape, dtype=np.uint8)
    KERNELS[op_name](np.ascontiguousarray(image), dst, magnitude, np.uint8(fill))
    return dst


def _mismatches(
    op_name: str, bases: np.ndarray, expected: np.ndarray, mags: np.ndarray, fill: int,
    cases: list[tuple[int, int]],
) -> list[str]:
    bad = []
    for i, (bin_, sign) in enumerate(cases):
        magnitude = np.float32(sign * mags[bin_])
        out = _kernel_out(op_name, bases[i], magnitude, fill)
        differ = int((out != expected[i]).any(axis=-1).sum())
        if differ:
            bad.append(f"bin {sign * bin_}: {differ} pixels")
    return bad


@pytest.fixture(scope="module")
def replayed(corpus):
    """(side, fill) -> (recipe, jpegs, DALI replay, DALI's unaugmented views); built once each."""
    cache: dict[tuple[int, int], tuple] = {}

    def get(side: int, fill: int):
        if (side, fill) not in cache:
            r = recipe("rrc+ra/re", output_size=side, fill=fill)
            count = len(_cases(r))
            jpegs = [corpus.jpegs[i % len(corpus)] for i in range(count)]
            spec = ReplaySpec(r, ops_backend=OpsBackend.DALI)
            replayer = Replayer(spec, batch_size=count, num_threads=2)
            cache[side, fill] = (r, jpegs, replayer, replayer(jpegs, identity_records(r, count)))
        return cache[side, fill]

    return get


@pytest.mark.parametrize(("side", "fill"), SIDES_FILLS)
@pytest.mark.parametrize("op_name", sorted(KERNELS))
def test_kernel_equals_dali_at_every_bin(op_name, side, fill, replayed) -> None:
    r, jpegs, replayer, base = replayed(side, fill)
    cases = _cases(r)
    records = identity_records(r, len(cases))
    for i, (bin_, sign) in enumerate(cases):
        records[i]["ops"][0] = OP_IDS[op_name]  # ops[1] stays Identity
        records[i]["mags"][0] = sign * bin_
    expected = replayer(jpegs, records)
    # The comparison must see the op: at a large bin DALI's view differs from the base view.
    assert (expected[cases.index((30, 1))] != base[cases.index((30, 1))]).any()
    mags = _magnitudes(op_name, side, r.ra_num_bins)
    bad = _mismatches(op_name, base, expected, mags, fill, cases)
    assert not bad, f"{op_name} at side {side}, fill {fill} differs from DALI: {bad}"


def _dali_on_images(op_name: str, images: list[np.ndarray], cases, fill: int) -> list:
    """The op table's own augmentation, applied by DALI to arbitrary (non-square) images."""
    aug = replay_ops(97, 31)[OP_IDS[op_name]]

    @pipeline_def(batch_size=len(images), num_threads=2)
    def pipe():
        data = fn.external_source(name="images", dtype=types.UINT8, layout="HWC")
        bins = fn.external_source(name="bins", dtype=types.INT32)
        signs = fn.external_source(name="signs", dtype=types.INT32)
        return aug(
            data,
            magnitude_bin=signed_bin(bins, random_sign=signs),
            num_magnitude_bins=31,
            fill_value=float(fill),
            interp_type=types.DALIInterpType.INTERP_NN,
        )

    p = pipe(device_id=None)
    p.build()
    p.feed_input("images", images)
    p.feed_input("bins", [np.int32(b) for b, _ in cases])
    p.feed_input("signs", [np.int32(s < 0) for _, s in cases])
    (out,) = p.run()
    return [np.asarray(out[i]) for i in range(len(images))]


@pytest.mark.parametrize("shape", [(150, 224), (224, 97)], ids=["wide", "tall"])
@pytest.mark.parametrize("op_name", sorted(KERNELS))
def test_kernel_equals_dali_on_non_square_images(op_name, shape, replayed) -> None:
    r, _, _, base = replayed(224, 0)
    cases = _cases(r)
    height, width = shape
    images = [np.ascontiguousarray(base[i, :height, :width]) for i in range(len(cases))]
    expected = _dali_on_images(op_name, images, cases, fill=77)
    assert all(e.shape == (height, width, 3) for e in expected)
    mags = _magnitudes(op_name, 97, r.ra_num_bins)
    bad = _mismatches(op_name, np.stack(images), np.stack(expected), mags, 77, cases)
    assert not bad, f"{op_name} on {height}x{width} images differs from DALI: {bad}"


@pytest.mark.parametrize("offset", [-300, -97, 97, 300])
@pytest.mark.parametrize("op_name", ["TranslateX", "TranslateY"])
def test_translation_past_the_image_is_all_fill(op_name, offset) -> None:
    image = np.random.default_rng(1).integers(0, 256, (97, 97, 3), dtype=np.uint8)
    out = _kernel_out(op_name, image, np.float32(offset), 5)
    assert (out == 5).all()
