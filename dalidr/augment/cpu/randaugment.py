"""One view's RandAugment ops and random erase, and a view's mixing, on the CPU, per sample.

The CPU twin of steps 4-5 of `dalidr.augment.replay` (the GPU keeps DALI's operators under
`auto_aug.select`): each stored (op id, signed bin) is looked up in a magnitude table made from
the op table of `dalidr.augment.ops` itself (`magnitude_table`: the same `mag_range`, bins and
sign as DALI's `auto_aug`), and the op's numba kernel (`tone`, `geometry`, `colour`) maps the
magnitude to its parameter as the op's `mag_to_param` does. Then the stored erase box is
filled. `mix_sample` is step 6's blend or paste (`replay._mix`) in the same float32 steps.
The pixels equal the DALI graph's (`tests/test_cpu_replay.py`), so a store labelled through
either path replays the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from dalidr.augment.cpu import colour, geometry, tone
from dalidr.augment.ops import OPS, replay_ops
from dalidr.augment.records import COORD_SCALE, MixMode

__all__ = ["KERNEL_ORDER", "magnitude_table", "mix_sample", "replay_sample", "settings_vector"]

# The kernels `_apply` dispatches to, by op id: must be the order of `dalidr.augment.ops.OPS`.
KERNEL_ORDER = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
    "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize",
)
if KERNEL_ORDER != tuple(op.name for op in OPS):  # a new op must be added to `_apply` too
    raise ImportError(f"dalidr.augment.cpu dispatches {KERNEL_ORDER}, the op table holds "
                      f"{tuple(op.name for op in OPS)}")


MIX_CUTMIX = int(MixMode.CUTMIX)
IDENTITY = KERNEL_ORDER.index("Identity")


def magnitude_table(side: int, num_bins: int) -> np.ndarray:
    """float32 [ops, bins, 2]: the magnitude DALI's `auto_aug` gives (op, bin, negative?).

    From each augmentation of `replay_ops(side, num_bins)`: `linspace(lo, hi, num_bins)` in
    float32 (or the op's own array, the translations' whole pixels), negated for the negative
    sign where the op is signed; zero for ops without a magnitude.
    """
    table = np.zeros((len(OPS), num_bins, 2), dtype=np.float32)
    for op_id, aug in enumerate(replay_ops(side, num_bins)):
        magnitudes = aug._get_magnitudes(num_bins)  # DALI's own: float32 linspace or the array
        if magnitudes is None:
            continue
        magnitudes = np.asarray(magnitudes, dtype=np.float32)
        table[op_id, :, 0] = magnitudes
        table[op_id, :, 1] = -magnitudes if aug.randomly_negate else magnitudes
    return table


def settings_vector(fill: int, erase_fill: tuple[int, int, int]) -> np.ndarray:
    """int32 [4]: the recipe's fill for geometric ops, then the erase fill per channel."""
    return np.array([fill, *erase_fill], dtype=np.int32)


@njit(cache=True, nogil=True)
def _apply(op_id: int, src: Any, dst: Any, magnitude: float, fill: int) -> None:
    if op_id == 0:
        tone.identity(src, dst, magnitude, fill)
    elif op_id == 1:
        geometry.shear_x(src, dst, magnitude, fill)
    elif op_id == 2:
        geometry.shear_y(src, dst, magnitude, fill)
    elif op_id == 3:
        geometry.translate_x(src, dst, magnitude, fill)
    elif op_id == 4:
        geometry.translate_y(src, dst, magnitude, fill)
    elif op_id == 5:
        geometry.rotate(src, dst, magnitude, fill)
    elif op_id == 6:
        colour.brightness(src, dst, magnitude, fill)
    elif op_id == 7:
        colour.color(src, dst, magnitude, fill)
    elif op_id == 8:
        colour.contrast(src, dst, magnitude, fill)
    elif op_id == 9:
        colour.sharpness(src, dst, magnitude, fill)
    elif op_id == 10:
        tone.posterize(src, dst, magnitude, fill)
    elif op_id == 11:
        tone.solarize(src, dst, magnitude, fill)
    elif op_id == 12:
        colour.auto_contrast(src, dst, magnitude, fill)
    else:
        tone.equalize(src, dst, magnitude, fill)


@njit(cache=True, nogil=True)
def _pixels(fraction: int, extent: int) -> int:
    # replay._pixels: float32(fraction) * float32(extent / COORD_SCALE) + 0.5, floored.
    scale = np.float32(extent * (1.0 / COORD_SCALE))
    return int(np.floor(np.float32(fraction) * scale + np.float32(0.5)))


@njit(cache=True, nogil=True)
def replay_sample(out: Any, image: Any, ops: Any, mags: Any, erase: Any, table: Any,
                  settings: Any) -> None:
    """Apply the stored ops in order, then the erase box, to one uint8 HWC image."""
    # Identity ops are skipped rather than copied; the last op that does something writes
    # `out`, the ones before it alternate between two scratch images.
    active = 0
    for k in range(ops.size):
        if ops[k] != IDENTITY:
            active += 1
    scratch = (np.empty_like(image), np.empty_like(image)) if active > 1 else (out, out)
    src = image
    done = 0
    for k in range(ops.size):
        op_id = ops[k]
        if op_id == IDENTITY:
            continue
        done += 1
        dst = out if done == active else scratch[done % 2]
        bin_ = abs(np.int32(mags[k]))
        _apply(op_id, src, dst, table[op_id, bin_, 1 if mags[k] < 0 else 0], settings[0])
        src = dst
    if active == 0:
        tone.identity(image, out, 0.0, 0)
    height, width, channels = out.shape
    top, left = _pixels(erase[0], height), _pixels(erase[1], width)
    bottom = min(top + _pixels(erase[2], height), height)
    right = min(left + _pixels(erase[3], width), width)
    for y in range(max(top, 0), bottom):
        for x in range(max(left, 0), right):
            for c in range(channels):
                out[y, x, c] = settings[1 + c]


@njit(cache=True, nogil=True)
def mix_sample(out: Any, own: Any, partner: Any, mix: int, lam: int, box: Any) -> None:
    """MixUp (`own` weighted by the stored lambda) or CutMix (`partner` inside the stored box),
    as `replay._mix` computes it: float32 weights, each DALI arithmetic step rounded on its
    own (no fused multiply-add), then clamped and rounded half away from zero to uint8."""
    height, width, channels = out.shape
    lam_f = np.float32(lam) * np.float32(1.0 / COORD_SCALE)
    cutmix = mix == MIX_CUTMIX
    inside_weight = np.float32(0.0)
    outside_weight = np.float32(1.0) if cutmix else np.float32(0.0) + np.float32(1.0) * lam_f
    top, left = _pixels(box[0], height), _pixels(box[1], width)
    bottom = min(top + _pixels(box[2], height), height)
    right = min(left + _pixels(box[3], width), width)
    for y in range(height):
        for x in range(width):
            inside = top <= y < bottom and left <= x < right
            weight = inside_weight if inside else outside_weight
            rest = np.float32(1.0) - weight
            for c in range(channels):
                value = np.float32(own[y, x, c]) * weight + np.float32(partner[y, x, c]) * rest
                value = min(max(value, np.float32(0.0)), np.float32(255.0))
                out[y, x, c] = np.uint8(np.int32(value + np.float32(0.5)))
