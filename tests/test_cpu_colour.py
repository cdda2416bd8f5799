"""The CPU colour kernels against DALI's CPU operators, one op at a time: the same pixels.

Each op is isolated as in `tests/test_ops.py`: DALI's graph (`OpsBackend.DALI`) replays records
holding only that op, and the kernel of `dalidr.augment.cpu.colour` is applied to DALI's own
unaugmented view of the same record, with the float32 magnitude DALI's `auto_aug` picks for the
stored bin and sign. Every comparison is exact, on photographs at two sides (224, and an odd
97 whose rows end in OpenCV's scalar tail) and on drawn images that reach the corners: a flat
image, a constant channel, every grey level, every spread AutoContrast can stretch.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from nvidia.dali import fn, pipeline_def, types
from PIL import Image

from dalidr.augment.cpu import colour
from dalidr.augment.ops import OP_IDS, OPS, OpSpec
from dalidr.augment.recipe import recipe
from dalidr.augment.records import identity_records
from dalidr.augment.replay import OpsBackend, Replayer, ReplaySpec

KERNELS: dict[str, Callable[..., None]] = {
    "Brightness": colour.brightness,
    "Color": colour.color,
    "Contrast": colour.contrast,
    "Sharpness": colour.sharpness,
    "AutoContrast": colour.auto_contrast,
}
COLOUR_OPS = [OPS[OP_IDS[name]] for name in KERNELS]
NUM_BINS = recipe("rrc+ra/re").ra_num_bins
SIDES = (224, 97)
BATCH = 2 * NUM_BINS


def _cases(op: OpSpec) -> list[int]:
    """Every stored signed bin of `op`: both signs where it is signed, one bin where it has no
    magnitude."""
    if not op.has_magnitude:
        return [0]
    signs = (1, -1) if op.signed else (1,)
    return [sign * bin_ for bin_ in range(NUM_BINS) for sign in signs]


def _magnitude(op: OpSpec, signed_bin: int) -> np.float32:
    """The magnitude DALI's `auto_aug` gives the op for a stored signed bin (0 without one)."""
    if not op.has_magnitude:
        return np.float32(0.0)
    lo, hi = op.augmentation.mag_range
    magnitude = np.linspace(lo, hi, NUM_BINS, dtype=np.float32)[abs(signed_bin)]
    return np.float32(-magnitude) if signed_bin < 0 else magnitude


class DaliOps:
    """DALI's CPU replay of records holding one op, at one side, with its base views."""

    def __init__(self, side: int) -> None:
        self.recipe = recipe("rrc+ra/re", output_size=side)
        spec = ReplaySpec(self.recipe, ops_backend=OpsBackend.DALI)
        self.replayer = Replayer(spec, batch_size=BATCH, num_threads=2)

    def __call__(
        self, op: OpSpec, signed_bins: Sequence[int], images: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(base views, views with `op` at each signed bin) for the encoded `images`."""
        records = identity_records(self.recipe, len(signed_bins))
        records["ops"][:, 0] = op.op_id
        records["mags"][:, 0] = signed_bins
        base = self.replayer(images, identity_records(self.recipe, len(signed_bins)))
        return base, self.replayer(images, records)


@pytest.fixture(scope="module")
def dali_ops() -> dict[int, DaliOps]:
    return {side: DaliOps(side) for side in (*SIDES, 16)}


def _png(image: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def _assert_kernel_matches(
    op: OpSpec, signed_bins: Sequence[int], base: np.ndarray, out: np.ndarray, what: str
) -> None:
    kernel = KERNELS[op.name]
    for i, signed_bin in enumerate(signed_bins):
        src = np.ascontiguousarray(base[i])
        dst = np.empty_like(src)
        kernel(src, dst, _magnitude(op, signed_bin), 0)
        differ = dst != out[i]
        assert not differ.any(), (
            f"{op.name} bin {signed_bin} ({what}, image {i}): {int(differ.sum())} values differ, "
            f"max {int(np.abs(dst.astype(int) - out[i].astype(int)).max())}, first at "
            f"{tuple(int(k) for k in np.argwhere(differ)[0])}"
        )


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("op", COLOUR_OPS, ids=lambda op: op.name)
def test_photographs_at_every_bin(op, side, dali_ops, corpus) -> None:
    cases = _cases(op)
    if not op.has_magnitude:  # AutoContrast: one case per photograph instead
        cases = [0] * len(corpus)
    jpegs = [corpus.jpegs[i % len(corpus)] for i in range(len(cases))]
    base, out = dali_ops[side](op, cases, jpegs)
    changed = (out != base).any(axis=(1, 2, 3))
    assert changed.sum() >= len(cases) // 2, f"{op.name}: DALI changed too few views to compare"
    _assert_kernel_matches(op, cases, base, out, f"photographs at side {side}")


# Grey levels a little above a mean of 100 at which DALI's float32 mean (the sum times
# float32(1 / count)) and the mean in float64 give contrast centres one float32 step apart, and
# that step moves a level of the contrast table at some bin (found by searching all grey sums).
MEAN_STEP_EXTRA = {224: 1, 97: 224}


def _grey_about_100(side: int, extra: int, rng: np.random.Generator) -> np.ndarray:
    """A grey image (grey level = its r = g = b) whose levels 100 - d and 100 + d pair up, so
    that they sum to 100 * count, plus 1 on the `extra` brightest pixels; shuffled."""
    count = side * side
    offsets = np.arange(count // 2) % 101
    levels = np.concatenate([100 + offsets, 100 - offsets, [100] * (count % 2)])
    levels[np.argsort(-levels, kind="stable")[:extra]] += 1
    grey = rng.permutation(levels).reshape(side, side, 1).astype(np.uint8)
    return np.repeat(grey, 3, axis=2)


def _drawn_images(side: int) -> dict[str, np.ndarray]:
    """Images that reach the ops' corner cases, `side` x `side`.

    At a mean of exactly 100, contrast's table changes at some bin if the addend
    `centre - factor * centre` or the table's `v * factor + addend` were computed with a fused
    multiply-add; a mean one float32 step off 100 tells DALI's float32 mean from a float64 one.
    """
    rng = np.random.default_rng(side)
    yy, xx = np.mgrid[0:side, 0:side]
    ramp = ((yy * side + xx) % 256).astype(np.uint8)  # every level once per 256 pixels
    noise = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    one_flat = noise.copy()
    one_flat[:, :, 1] = 200
    return {
        "flat": np.full((side, side, 3), 93, dtype=np.uint8),
        "one constant channel": one_flat,
        "ramp": np.stack([ramp, 255 - ramp, np.roll(ramp, 7, axis=1)], axis=-1),
        "noise": noise,
        "dark noise": (noise // 16).astype(np.uint8),
        "saturated": np.where(noise > 127, 255, 0).astype(np.uint8),
        "grey about 100": _grey_about_100(side, 0, rng),
        "grey just above 100": _grey_about_100(side, MEAN_STEP_EXTRA[side], rng),
    }


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("op", COLOUR_OPS, ids=lambda op: op.name)
def test_drawn_images_at_every_bin(op, side, dali_ops) -> None:
    for name, image in _drawn_images(side).items():
        cases = _cases(op)
        base, out = dali_ops[side](op, cases, [_png(image)] * len(cases))
        assert (base == image).all(), f"{name}: the identity view is not the drawn image"
        _assert_kernel_matches(op, cases, base, out, f"{name} at side {side}")


def test_auto_contrast_every_spread(dali_ops) -> None:
    # The output depends on (level - low) and the spread high - low only; 16 x 16 images give
    # each channel its own spread and every level of it, so 1..255 need 85 images.
    rng = np.random.default_rng(0)
    op = OPS[OP_IDS["AutoContrast"]]
    spreads = np.arange(1, 256).reshape(-1, 3)
    levels = np.arange(256).reshape(16, 16)
    images = []
    for triple in spreads:
        low = rng.integers(0, 256 - triple)
        images.append(np.stack([low[c] + levels % (triple[c] + 1) for c in range(3)], -1))
    images = [image.astype(np.uint8) for image in images]
    for start in range(0, len(images), BATCH):
        chunk = images[start : start + BATCH]
        base, out = dali_ops[16](op, [0] * len(chunk), [_png(image) for image in chunk])
        assert (base == np.stack(chunk)).all(), "the identity view is not the drawn image"
        _assert_kernel_matches(op, [0] * len(chunk), base, out, "every spread")


def test_contrast_centre_is_dalis_mean() -> None:
    # Past 2^24 / 255 pixels (about 256 x 256) the float32 partial sums of the grey levels
    # round, and only DALI's order of additions gives its mean; all 2^24 colours in one image
    # also put every colour through OpenCV's grey conversion.
    rng = np.random.default_rng(7)
    red, green, blue = np.meshgrid(*[np.arange(256, dtype=np.uint8)] * 3, indexing="ij")
    images = [
        np.stack([red, green, blue], axis=-1).reshape(4096, 4096, 3),
        rng.integers(0, 256, (1000, 1000, 3), dtype=np.uint8),
        rng.integers(200, 256, (777, 1234, 3), dtype=np.uint8),
        np.full((1500, 1500, 3), 255, dtype=np.uint8),
        rng.integers(0, 256, (97, 97, 3), dtype=np.uint8),
    ]

    # device_id=None: CPU only (DALI's stub types the argument as int).
    @pipeline_def(batch_size=len(images), num_threads=2, device_id=None)  # type: ignore[call-overload]
    def means():
        data = fn.external_source(source=lambda: images, batch=True, layout="HWC")
        grey = fn.color_space_conversion(
            data, image_type=types.DALIImageType.RGB, output_type=types.DALIImageType.GRAY
        )
        return fn.reductions.mean(grey)

    pipe = means()
    pipe.build()
    (dali_means,) = pipe.run()
    for i, image in enumerate(images):
        expected = np.asarray(dali_means[i]).item()
        got = float(colour._mean_grey(image))
        assert got == expected, f"image {i} {image.shape}: mean {got!r}, DALI {expected!r}"
