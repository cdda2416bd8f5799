"""Parameter records: one fixed-width structured dtype per recipe, drawn vectorised with numpy.

A record is everything needed to replay one view ("slot") of one sample: the crop, the flip, the
RandAugment ops, the erase box and, for mixed views, the partner's index with the partner's own
view. The store persists these arrays as they are; replay (`dalidr.augment.replay`) reads them and
never draws a random number.

Determinism. Every record is a pure function of (seed, sample index, slot): a counter-based
hash (splitmix64's finaliser) of those three numbers and a draw index gives each random number,
so a record does not depend on which other records are drawn with it, on batching or on the
number of processes. This is what makes a resumed or sharded teacher pass byte-identical.

Resolution independence. Crops are stored as fractions of the source image, and erase and
CutMix boxes as fractions of the output, each quantised to 1/65535 (`COORD_SCALE`). For a
source below 65535 px, rounding back to pixels recovers the integer crop exactly, and the same
record can be replayed at the student's and at a larger teacher's size (paper Sec. 2.1).
The crop and erase draws follow torchvision's `RandomResizedCrop.get_params` and
`RandomErasing.get_params` (ten attempts, then the fallback), computed in pixels of the source
(crop) and of `recipe.output_size` (erase). RandAugment follows torchvision's op list and
magnitude bins (`dalidr.augment.ops`), MixUp/CutMix follow timm's `Mixup` (CutMix's lambda is
corrected for the clipped box).

Bytes per record (n = `ra_num_ops`, 2 in the presets):

| variant   | fields                                                        | bytes (n=2) |
|-----------|---------------------------------------------------------------|-------------|
| RRC       | crop 4xu2, flip u1                                            | 9           |
| RRC+RA/RE | + ops n x u1, mags n x i1, erase 4xu2                         | 21          |
| RRC+Mix   | RRC + mix u1, partner u4, lam u2, box 4xu2, partner's RRC     | 33          |
| M*+R*     | RRC+RA/RE + mix, partner, lam, box, partner's RRC+RA/RE       | 57          |
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import numpy as np

from dalidr.augment.hashing import GOLDEN, M1, mix64, unit_interval
from dalidr.augment.ops import NUM_OPS, OPS
from dalidr.augment.recipe import Recipe
from dalidr.errors import RecordError

__all__ = [
    "COORD_SCALE",
    "MixMode",
    "record_dtype",
    "draw_records",
    "validate_records",
    "identity_records",
]

COORD_SCALE = 65535
_CROP_ATTEMPTS = 10
_ERASE_ATTEMPTS = 10
_GAMMA_ATTEMPTS = 4
_CHUNK = 1 << 16  # records hashed at once; bounds the [records, draws] scratch matrix


class MixMode(enum.IntEnum):
    """How a view is combined with its partner."""

    NONE = 0
    MIXUP = 1
    CUTMIX = 2


_SIGNED = np.array([op.signed for op in OPS], dtype=bool)
_HAS_MAGNITUDE = np.array([op.has_magnitude for op in OPS], dtype=bool)


def _view_fields(recipe: Recipe, prefix: str) -> list[tuple]:
    fields: list[tuple] = [(prefix + "crop", "<u2", (4,)), (prefix + "flip", "u1")]
    if recipe.has_ra_re:
        n = max(recipe.ra_num_ops, 1)
        fields += [
            (prefix + "ops", "u1", (n,)),
            (prefix + "mags", "i1", (n,)),
            (prefix + "erase", "<u2", (4,)),
        ]
    return fields


def record_dtype(recipe: Recipe) -> np.dtype:
    """The packed structured dtype of one record for `recipe` (see the module table)."""
    fields = _view_fields(recipe, "")
    if recipe.has_mix:
        fields += [("mix", "u1"), ("partner", "<u4"), ("lam", "<u2"), ("box", "<u2", (4,))]
        fields += _view_fields(recipe, "p_")
    return np.dtype(fields)


# ----------------------------------------------------------------------------- random numbers


class _Draws:
    """Uniform [0, 1) numbers for a block of records, hashed only where they are needed.

    Draw indices are reserved in a fixed order, so draw d of a record is the same number
    whether it is hashed for every record or only for the records still needing it (the
    rejection loops below), and whatever else is drawn in the same block.
    """

    def __init__(self, keys: np.ndarray) -> None:
        self._keys = keys
        self._next = 0

    def reserve(self, count: int) -> int:
        """Reserve `count` draw indices; returns the first."""
        start = self._next
        self._next += count
        return start

    def column(self, index: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Draw `index` of every record, or of the records `rows`."""
        keys = self._keys if rows is None else self._keys[rows]
        offset = np.uint64(((index + 1) * int(GOLDEN)) & 0xFFFFFFFFFFFFFFFF)
        return unit_interval(mix64(keys + offset))

    def one(self) -> np.ndarray:
        return self.column(self.reserve(1))

    def take(self, count: int) -> np.ndarray:
        """The next `count` draws, as a [records, count] matrix."""
        start = self.reserve(count)
        return np.stack([self.column(start + i) for i in range(count)], axis=1)


def _attempts(
    d: _Draws, attempts: int, count: int, propose
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torchvision's rejection loops: `propose(rows, u1, u2)` -> (h, w, ok) for pending rows.

    Returns (h, w, found) of the first accepted attempt per record.
    """
    start = d.reserve(2 * attempts)
    h, w = np.zeros(count), np.zeros(count)
    found = np.zeros(count, dtype=bool)
    pending = np.arange(count)
    for attempt in range(attempts):
        if not pending.size:
            break
        u1 = d.column(start + 2 * attempt, pending)
        u2 = d.column(start + 2 * attempt + 1, pending)
        ph, pw, ok = propose(pending, u1, u2)
        accepted = pending[ok]
        h[accepted], w[accepted], found[accepted] = ph[ok], pw[ok], True
        pending = pending[~ok]
    return h, w, found


def _keys(seed: int, samples: np.ndarray, slots: np.ndarray, stream: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        base = mix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * GOLDEN + np.uint64(stream))
        k = mix64(base + samples.astype(np.uint64) * GOLDEN)
        return mix64(k + slots.astype(np.uint64) * M1)


def _randint(u: np.ndarray, high: np.ndarray | int) -> np.ndarray:
    """Uniform integers in [0, high) from uniforms u."""
    return np.minimum((u * high).astype(np.int64), np.asarray(high) - 1).clip(0)


def _normal(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


# ----------------------------------------------------------------------------- view parameters


def _quantise(value: np.ndarray, extent: np.ndarray | float) -> np.ndarray:
    return np.rint(value / np.asarray(extent, dtype=np.float64) * COORD_SCALE).astype(np.uint16)


def _draw_crop(d: _Draws, recipe: Recipe, hw: np.ndarray) -> np.ndarray:
    """torchvision RandomResizedCrop.get_params in source pixels -> quantised (y, x, h, w)."""
    height, width = hw[:, 0].astype(np.float64), hw[:, 1].astype(np.float64)
    lo_s, hi_s = recipe.crop_scale
    lo_r, hi_r = np.log(recipe.crop_ratio[0]), np.log(recipe.crop_ratio[1])

    def propose(rows: np.ndarray, u_area: np.ndarray, u_ratio: np.ndarray):
        target = height[rows] * width[rows] * (lo_s + u_area * (hi_s - lo_s))
        aspect = np.exp(lo_r + u_ratio * (hi_r - lo_r))
        w = np.rint(np.sqrt(target * aspect))
        h = np.rint(np.sqrt(target / aspect))
        return h, w, (w > 0) & (w <= width[rows]) & (h > 0) & (h <= height[rows])

    h, w, found = _attempts(d, _CROP_ATTEMPTS, len(hw), propose)
    # Fallback: the whole image clamped to the ratio range, centred.
    in_ratio = width / height
    narrow, wide = in_ratio < recipe.crop_ratio[0], in_ratio > recipe.crop_ratio[1]
    fb_w = np.where(wide, np.rint(height * recipe.crop_ratio[1]), width)
    fb_h = np.where(narrow, np.rint(width / recipe.crop_ratio[0]), height)
    h, w = np.where(found, h, fb_h), np.where(found, w, fb_w)
    pos = d.take(2)
    y = np.where(found, _randint(pos[:, 0], height - h + 1), (height - h) // 2)
    x = np.where(found, _randint(pos[:, 1], width - w + 1), (width - w) // 2)
    out = np.empty((len(hw), 4), dtype=np.uint16)
    out[:, 0], out[:, 2] = _quantise(y, height), _quantise(h, height)
    out[:, 1], out[:, 3] = _quantise(x, width), _quantise(w, width)
    return out


def _draw_ops(d: _Draws, recipe: Recipe, count: int) -> tuple[np.ndarray, np.ndarray]:
    """RandAugment: op ids and signed magnitude bins (negative: the negated magnitude)."""
    n = max(recipe.ra_num_ops, 1)
    choice, noise1, noise2, sign, apply = (d.take(n) for _ in range(5))
    if recipe.ra_num_ops == 0:
        return np.zeros((count, n), np.uint8), np.zeros((count, n), np.int8)
    ops = _randint(choice, NUM_OPS)
    bins = np.full(ops.shape, float(recipe.ra_magnitude))
    if recipe.ra_magnitude_std > 0:
        bins = bins + recipe.ra_magnitude_std * _normal(noise1, noise2)
    bins = np.clip(np.rint(bins), 0, recipe.ra_num_bins - 1).astype(np.int64)
    bins = np.where(_HAS_MAGNITUDE[ops], bins, 0)
    bins = np.where(_SIGNED[ops] & (sign < 0.5), -bins, bins)
    applied = apply < recipe.ra_prob
    return np.where(applied, ops, 0).astype(np.uint8), np.where(applied, bins, 0).astype(np.int8)


def _draw_erase(d: _Draws, recipe: Recipe, count: int) -> np.ndarray:
    """torchvision RandomErasing.get_params on the output -> quantised (y, x, h, w); 0: none."""
    size = float(recipe.output_size)
    apply = d.one() < recipe.erase_prob
    lo_s, hi_s = recipe.erase_scale
    lo_r, hi_r = np.log(recipe.erase_ratio[0]), np.log(recipe.erase_ratio[1])

    def propose(rows: np.ndarray, u_area: np.ndarray, u_ratio: np.ndarray):
        target = size * size * (lo_s + u_area * (hi_s - lo_s))
        aspect = np.exp(lo_r + u_ratio * (hi_r - lo_r))
        h = np.rint(np.sqrt(target * aspect))
        w = np.rint(np.sqrt(target / aspect))
        return h, w, (h < size) & (w < size)

    h, w, found = _attempts(d, _ERASE_ATTEMPTS, count, propose)
    pos = d.take(2)
    y = _randint(pos[:, 0], size - h + 1)
    x = _randint(pos[:, 1], size - w + 1)
    out = np.stack([_quantise(v, size) for v in (y, x, h, w)], axis=1)
    out[~(apply & found)] = 0
    return out


def _gamma(d: _Draws, shape: float, rows: np.ndarray) -> np.ndarray:
    """Marsaglia-Tsang Gamma(shape, 1) for the records `rows`, a fixed number of attempts."""
    start = d.reserve(3 * _GAMMA_ATTEMPTS + 1)
    boost = shape < 1
    a = shape + 1 if boost else shape
    c1 = a - 1.0 / 3.0
    c2 = 1.0 / np.sqrt(9.0 * c1)
    value = np.full(len(rows), c1)  # the mode; kept if every attempt is rejected
    pending = np.arange(len(rows))
    for attempt in range(_GAMMA_ATTEMPTS):
        if not pending.size:
            break
        u1, u2, u3 = (d.column(start + 3 * attempt + i, rows[pending]) for i in range(3))
        z = _normal(u1, u2)
        v = (1 + c2 * z) ** 3
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = (v > 0) & (np.log1p(-u3) < 0.5 * z * z + c1 - c1 * v + c1 * np.log(v))
        value[pending[ok]] = c1 * v[ok]
        pending = pending[~ok]
    if boost:
        u = d.column(start + 3 * _GAMMA_ATTEMPTS, rows)
        value = value * (1.0 - u) ** (1.0 / shape)
    return value


def _beta(d: _Draws, alpha: float, rows: np.ndarray, count: int) -> np.ndarray:
    """Beta(alpha, alpha) for the records `rows` (of `count`); 1 elsewhere."""
    out = np.ones(count)
    if alpha <= 0:
        d.reserve(2 * (3 * _GAMMA_ATTEMPTS + 1))
        return out
    x, y = _gamma(d, alpha, rows), _gamma(d, alpha, rows)
    out[rows] = x / np.maximum(x + y, 1e-300)
    return out


def _fill_view(out: np.ndarray, prefix: str, d: _Draws, recipe: Recipe, hw: np.ndarray) -> None:
    count = len(hw)
    out[prefix + "crop"] = _draw_crop(d, recipe, hw)
    out[prefix + "flip"] = d.one() < recipe.flip_prob
    if recipe.has_ra_re:
        out[prefix + "ops"], out[prefix + "mags"] = _draw_ops(d, recipe, count)
        out[prefix + "erase"] = _draw_erase(d, recipe, count)


def _fill_mix(
    out: np.ndarray, d: _Draws, recipe: Recipe, samples: np.ndarray, num_samples: int
) -> np.ndarray:
    count = len(samples)
    mixed = d.one() < recipe.mix_prob
    use_cutmix = d.one() < recipe.cutmix_switch_prob
    if recipe.mixup_alpha <= 0:
        use_cutmix[:] = True
    if recipe.cutmix_alpha <= 0:
        use_cutmix[:] = False
    lam_mixup = _beta(d, recipe.mixup_alpha, np.flatnonzero(mixed & ~use_cutmix), count)
    lam_cutmix = _beta(d, recipe.cutmix_alpha, np.flatnonzero(mixed & use_cutmix), count)
    other = _randint(d.one(), max(num_samples - 1, 1))
    partner = np.where(num_samples > 1, other + (other >= samples), samples)
    # timm's rand_bbox on the output, then lambda corrected for the clipped box.
    size = recipe.output_size
    cut = np.floor(size * np.sqrt(1.0 - lam_cutmix))
    centre = d.take(2)
    cy, cx = _randint(centre[:, 0], size), _randint(centre[:, 1], size)
    y0, y1 = np.clip(cy - cut // 2, 0, size), np.clip(cy + cut // 2, 0, size)
    x0, x1 = np.clip(cx - cut // 2, 0, size), np.clip(cx + cut // 2, 0, size)
    lam_box = 1.0 - (y1 - y0) * (x1 - x0) / float(size * size)
    mode = np.where(mixed, np.where(use_cutmix, MixMode.CUTMIX, MixMode.MIXUP), MixMode.NONE)
    lam = np.where(mode == MixMode.CUTMIX, lam_box, np.where(mode == MixMode.MIXUP, lam_mixup, 1))
    box = np.stack([_quantise(v, size) for v in (y0, x0, y1 - y0, x1 - x0)], axis=1)
    box[mode != MixMode.CUTMIX] = 0
    out["mix"] = mode
    out["partner"] = np.where(mixed, partner, samples)
    out["lam"] = np.rint(lam * COORD_SCALE)
    out["box"] = box
    return out["partner"]


def draw_records(
    recipe: Recipe,
    seed: int,
    samples: Sequence[int] | np.ndarray,
    slots: Sequence[int] | np.ndarray,
    image_hw: np.ndarray,
    *,
    num_samples: int | None = None,
) -> np.ndarray:
    """Records for every (sample, slot) pair: an array of shape [len(samples), len(slots)].

    `image_hw` holds (height, width) of every sample in the dataset, indexed by sample index;
    partners are drawn from all of them. Given the dataset's `num_samples`, `image_hw` holds
    only the sizes of `samples`, in their order (for a recipe without mixing, whose draws
    need no other sample's size: a loader that reads the manifest per block).
    """
    samples = np.asarray(samples, dtype=np.int64)
    slots = np.asarray(slots, dtype=np.int64)
    image_hw = np.asarray(image_hw, dtype=np.int64)
    rows: np.ndarray | None = None
    if num_samples is not None:
        if recipe.has_mix:
            raise RecordError("records of a mixing recipe need every sample's image size")
        if image_hw.shape != (len(samples), 2):
            raise RecordError(f"image sizes {image_hw.shape} must be [{len(samples)}, 2], one "
                              "per sample drawn")
        rows = np.repeat(image_hw, len(slots), axis=0)
    else:
        num_samples = len(image_hw)
    if samples.size and (samples.min() < 0 or samples.max() >= num_samples):
        bad = int(samples[(samples < 0) | (samples >= num_samples)][0])
        raise RecordError(f"sample index {bad} is outside the dataset of {num_samples} samples")
    if (image_hw <= 0).any():
        bad = int(np.flatnonzero((image_hw <= 0).any(axis=1))[0])
        sample = bad if rows is None else int(samples[bad])
        raise RecordError(f"sample {sample} has image size {tuple(image_hw[bad])}; must be "
                          "positive")
    dtype = record_dtype(recipe)
    grid_samples = np.repeat(samples, len(slots))
    grid_slots = np.tile(slots, len(samples))
    if rows is None:
        rows = image_hw[grid_samples]
    flat = np.empty(grid_samples.size, dtype=dtype)
    for start in range(0, grid_samples.size, _CHUNK):
        part = slice(start, start + _CHUNK)
        _draw_block(flat[part], recipe, seed, grid_samples[part], grid_slots[part], rows[part],
                    image_hw)
    return flat.reshape(len(samples), len(slots))


def _draw_block(
    out: np.ndarray,
    recipe: Recipe,
    seed: int,
    samples: np.ndarray,
    slots: np.ndarray,
    sample_hw: np.ndarray,
    image_hw: np.ndarray,
) -> None:
    _fill_view(out, "", _Draws(_keys(seed, samples, slots, 0)), recipe, sample_hw)
    if recipe.has_mix:
        mix = _Draws(_keys(seed, samples, slots, 1))
        partners = _fill_mix(out, mix, recipe, samples, len(image_hw))
        view = _Draws(_keys(seed, samples, slots, 2))
        _fill_view(out, "p_", view, recipe, image_hw[partners])


def identity_records(recipe: Recipe, count: int) -> np.ndarray:
    """Records that replay to the whole image resized, unflipped, unaugmented and unmixed."""
    out = np.zeros(count, dtype=record_dtype(recipe))
    out["crop"] = (0, 0, COORD_SCALE, COORD_SCALE)
    if recipe.has_mix:
        out["partner"] = np.arange(count)
        out["lam"] = COORD_SCALE
        out["p_crop"] = (0, 0, COORD_SCALE, COORD_SCALE)
    return out


def _past_end(box: np.ndarray) -> np.ndarray:
    """Boxes (y, x, h, w) ending past the image; one unit is allowed for independent rounding."""
    return (box[:, 0] + box[:, 2] > COORD_SCALE + 1) | (box[:, 1] + box[:, 3] > COORD_SCALE + 1)


def validate_records(
    records: np.ndarray,
    recipe: Recipe,
    num_samples: int,
    names: Sequence[str] | None = None,
) -> None:
    """Raise RecordError naming the first record (and its file, given `names`) that cannot be
    replayed."""
    records = np.asarray(records).reshape(-1)
    if records.dtype != record_dtype(recipe):
        raise RecordError(
            f"records have dtype {records.dtype}, recipe {recipe.variant.value!r} needs "
            f"{record_dtype(recipe)}"
        )
    problems: list[tuple[np.ndarray | np.bool_, str]] = []
    prefixes = ["", "p_"] if recipe.has_mix else [""]
    for prefix in prefixes:
        crop = records[prefix + "crop"].astype(np.int64)
        problems.append(((crop[:, 2] == 0) | (crop[:, 3] == 0), f"{prefix}crop has zero size"))
        problems.append((_past_end(crop), f"{prefix}crop extends past the image"))
        problems.append((records[prefix + "flip"] > 1, f"{prefix}flip is not 0 or 1"))
        if recipe.has_ra_re:
            ops = records[prefix + "ops"]
            problems.append(((ops >= NUM_OPS).any(axis=1), f"{prefix}ops has an unknown op id"))
            mags = np.abs(records[prefix + "mags"].astype(np.int64))
            problems.append(
                ((mags >= recipe.ra_num_bins).any(axis=1), f"{prefix}mags exceeds the bins")
            )
            erase = records[prefix + "erase"].astype(np.int64)
            problems.append((_past_end(erase), f"{prefix}erase box extends past the image"))
    if recipe.has_mix:
        problems.append((records["mix"] > max(MixMode), "mix mode is unknown"))
        problems.append(
            (records["partner"] >= num_samples, f"partner is not in 0..{num_samples - 1}")
        )
        box = records["box"].astype(np.int64)
        problems.append((_past_end(box), "cutmix box extends past the image"))
    for bad, what in problems:
        if bad.any():
            index = int(np.flatnonzero(bad)[0])
            culprit = f" ({names[index]})" if names is not None else ""
            raise RecordError(f"record {index}{culprit}: {what}: {records[index]}")
