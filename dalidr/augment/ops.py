"""The RandAugment op table: each op with its magnitude range, sign and parameter mapping.

The list and its order are torchvision's RandAugment augmentation space, which is also the list
of the paper's code (apple/ml-dr): a stored op id indexes `OPS`. Each op is a DALI
`auto_aug` augmentation declared with `@augmentation(mag_range=..., randomly_negate=...,
mag_to_param=...)`, so the range, the sign and the mapping stand beside the code that applies
them. Magnitudes are torchvision's: `linspace(lo, hi, num_bins)[bin]`, negated when the stored
magnitude is negative; replay passes the stored bin and sign (`auto_aug.core.signed_bin`), so
nothing is drawn at replay time.

Where DALI's stock augmentation differs from torchvision's definition, the op is written here:
posterize (torchvision keeps `8 - round(m)` bits; DALI's stock op keeps `round(m)`), solarize
(threshold from 255 down to 0), contrast (centre on the mean grey level, as torchvision) and
the translations (torchvision truncates the pixel offset).
Differences that remain, and the tolerances the tests hold them to, are listed in
`tests/test_ops.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nvidia.dali import fn, math, types
from nvidia.dali.auto_aug.core import augmentation
from nvidia.dali.auto_aug.core._augmentation import Augmentation

from dalidr.augment.equalize import pil_equalize

__all__ = ["OpSpec", "OPS", "NUM_OPS", "OP_IDS", "replay_ops"]

_GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


# torchvision's shear moves content the other way from DALI's shear transform for the same sign.
def _shear_x_param(magnitude: float) -> list[float]:
    return [-magnitude, 0.0]


def _shear_y_param(magnitude: float) -> list[float]:
    return [0.0, -magnitude]


def _enhance_factor(magnitude: float) -> float:
    return 1.0 + magnitude


def _posterize_mask(magnitude: float) -> np.ndarray:
    bits = int(np.round(8 - magnitude))
    return np.array((0xFF << (8 - bits)) & 0xFF, dtype=np.uint8)


def _grey(data):
    return data[:, :, 0:1] * _GREY[0] + data[:, :, 1:2] * _GREY[1] + data[:, :, 2:3] * _GREY[2]


def _to_uint8(values):
    return fn.cast(math.clamp(values, 0.0, 255.0), dtype=types.DALIDataType.UINT8)


@augmentation
def identity(data, _):
    return data


@augmentation(mag_range=(0, 0.3), randomly_negate=True, mag_to_param=_shear_x_param)
def shear_x(data, shear, fill_value=0, interp_type=types.DALIInterpType.INTERP_NN):
    matrix = fn.transforms.shear(shear=shear)
    return fn.warp_affine(
        data, matrix=matrix, fill_value=fill_value, interp_type=interp_type, inverse_map=False
    )


@augmentation(mag_range=(0, 0.3), randomly_negate=True, mag_to_param=_shear_y_param)
def shear_y(data, shear, fill_value=0, interp_type=types.DALIInterpType.INTERP_NN):
    matrix = fn.transforms.shear(shear=shear)
    return fn.warp_affine(
        data, matrix=matrix, fill_value=fill_value, interp_type=interp_type, inverse_map=False
    )


# The translations' ranges are fractions of the image side (torchvision: 150/331); `replay_ops`
# turns them into whole pixels for the pipeline's output size, truncated as torchvision does.
# A whole-pixel shift is a padded slice, which is exact and far cheaper than a warp.
def _shift(data, offset, axis: int, fill_value: float):
    return fn.slice(
        data,
        start=fn.cast(-offset, dtype=types.DALIDataType.INT32),
        rel_shape=[1.0],
        axes=[axis],
        out_of_bounds_policy="pad",
        fill_values=fill_value,
    )


@augmentation(mag_range=(0, 150.0 / 331.0), randomly_negate=True)
def translate_x(data, offset, fill_value=0):
    return _shift(data, offset, 1, fill_value)


@augmentation(mag_range=(0, 150.0 / 331.0), randomly_negate=True)
def translate_y(data, offset, fill_value=0):
    return _shift(data, offset, 0, fill_value)


@augmentation(mag_range=(0, 30), randomly_negate=True)
def rotate(data, angle, fill_value=0, interp_type=types.DALIInterpType.INTERP_NN):
    return fn.rotate(
        data, angle=angle, fill_value=fill_value, interp_type=interp_type, keep_size=True
    )


@augmentation(mag_range=(0, 0.9), randomly_negate=True, mag_to_param=_enhance_factor)
def brightness(data, factor):
    return fn.brightness(data, brightness=factor)


@augmentation(mag_range=(0, 0.9), randomly_negate=True, mag_to_param=_enhance_factor)
def color(data, factor):
    # torchvision blends with the grey image: luminance stays, chroma scales by `factor`. In
    # YIQ that is I and Q times `factor`, which is what DALI's saturation computes.
    return fn.saturation(data, saturation=factor)


@augmentation(mag_range=(0, 0.9), randomly_negate=True, mag_to_param=_enhance_factor)
def contrast(data, factor):
    if data.device == "cpu":
        grey = fn.color_space_conversion(
            data, image_type=types.DALIImageType.RGB, output_type=types.DALIImageType.GRAY
        )
        return fn.brightness_contrast(
            data, contrast=factor, contrast_center=fn.reductions.mean(grey)
        )
    # On the GPU the mean is a GPU tensor, which cannot be an operator's argument.
    mean = fn.reductions.mean(_grey(data), axis_names="HWC", keep_dims=True)
    return _to_uint8(mean + (data - mean) * factor)


def _sharpness_kernel(magnitude: float) -> np.ndarray:
    blur = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13
    centre = np.zeros((3, 3), dtype=np.float32)
    centre[1, 1] = 1
    return (1 + magnitude) * centre - magnitude * blur


@augmentation(
    mag_range=(0, 0.9), randomly_negate=True, mag_to_param=_sharpness_kernel, param_device="auto"
)
def sharpness(data, kernel):
    return fn.filter(data, kernel, border="clamp")


@augmentation(mag_range=(0, 4), mag_to_param=_posterize_mask, param_device="auto")
def posterize(data, mask):
    return data & mask


@augmentation(mag_range=(255.0, 0.0), param_device="auto")
def solarize(data, threshold):
    # 255 - x is x ^ 255 for uint8: invert the pixels at or above the threshold in one pass.
    return data ^ ((data >= threshold) * types.Constant(255, dtype=types.DALIDataType.UINT8))


@augmentation
def auto_contrast(data, _):
    lo = fn.reductions.min(data, axis_names="HW", keep_dims=True)
    hi = fn.reductions.max(data, axis_names="HW", keep_dims=True)
    if data.device == "cpu":
        # One native pass: (x - lo) / ((hi - lo) / 255) per channel; flat channels unchanged.
        low = fn.cast(lo, dtype=types.DALIDataType.FLOAT)
        spread = fn.cast(hi, dtype=types.DALIDataType.FLOAT) - low
        stretch = spread > 0
        return fn.normalize(
            data,
            mean=low * stretch,
            stddev=(spread * stretch + (stretch ^ True) * 255.0) * (1 / 255.0),
            axis_names="HW",
            dtype=types.DALIDataType.UINT8,
        )
    # On the GPU the reductions are GPU tensors, which cannot be an operator's argument.
    spread = hi - lo
    stretch = spread > 0
    scale = 255.0 / (
        spread * stretch + types.Constant(255, dtype=types.DALIDataType.UINT8) * (stretch ^ True)
    )
    return _to_uint8((data - lo * stretch) * scale)


@augmentation
def equalize(data, _):
    # PIL's ImageOps.equalize, exactly (DALI's fn.equalize is OpenCV's, another table).
    return pil_equalize(data)


@dataclass(frozen=True)
class OpSpec:
    """One entry of the table: its stored id, its torchvision name and its augmentation."""

    op_id: int
    name: str
    augmentation: Augmentation

    @property
    def signed(self) -> bool:
        return bool(self.augmentation.randomly_negate)

    @property
    def has_magnitude(self) -> bool:
        return self.augmentation.mag_range is not None


OPS: tuple[OpSpec, ...] = tuple(
    OpSpec(i, name, aug)
    for i, (name, aug) in enumerate(
        [
            ("Identity", identity),
            ("ShearX", shear_x),
            ("ShearY", shear_y),
            ("TranslateX", translate_x),
            ("TranslateY", translate_y),
            ("Rotate", rotate),
            ("Brightness", brightness),
            ("Color", color),
            ("Contrast", contrast),
            ("Sharpness", sharpness),
            ("Posterize", posterize),
            ("Solarize", solarize),
            ("AutoContrast", auto_contrast),
            ("Equalize", equalize),
        ]
    )
)
NUM_OPS = len(OPS)
OP_IDS = {op.name: op.op_id for op in OPS}


def replay_ops(size: int, num_bins: int) -> list[Augmentation]:
    """The table's augmentations for a pipeline whose images are `size` x `size` pixels."""
    out = []
    for op in OPS:
        aug = op.augmentation
        if op.name in ("TranslateX", "TranslateY"):
            lo, hi = aug.mag_range
            pixels = np.trunc(np.linspace(lo * size, hi * size, num_bins, dtype=np.float32))
            aug = aug.augmentation(mag_range=pixels)
        out.append(aug)
    return out
