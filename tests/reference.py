"""A reference replay with torchvision.transforms.v2.functional, for tests only.

The product never imports this module: it exists so tests can hold DALI's replay to
torchvision's definitions of each op (the definitions the paper's code uses).
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as F
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode

from dalidr.augment.ops import OPS
from dalidr.augment.recipe import Recipe
from dalidr.augment.records import COORD_SCALE, MixMode

__all__ = ["decode", "to_pixels", "apply_op", "op_magnitude", "reference_view", "reference_replay"]

_RA = T.RandAugment()


def decode(jpeg: np.ndarray) -> torch.Tensor:
    """uint8 [3, H, W], as libjpeg-turbo decodes it."""
    return decode_jpeg(torch.from_numpy(np.asarray(jpeg, dtype=np.uint8)), mode=ImageReadMode.RGB)


def to_pixels(fractions: np.ndarray, extent: float) -> list[int]:
    """The rounding replay uses: stored 1/65535 fractions -> whole pixels (float32 math)."""
    scaled = fractions.astype(np.float32) * np.float32(extent * (1.0 / COORD_SCALE))
    return [int(v) for v in np.floor(scaled + np.float32(0.5))]


def op_magnitude(op_id: int, signed_bin: int, num_bins: int, side: int) -> float:
    """torchvision's magnitude for a stored (op id, signed bin)."""
    name = OPS[op_id].name
    table, signed = _RA._AUGMENTATION_SPACE[name]
    values = table(num_bins, side, side)
    if values is None:
        return 0.0
    magnitude = float(values[abs(int(signed_bin))])
    return -magnitude if signed and signed_bin < 0 else magnitude


def apply_op(image: torch.Tensor, op_id: int, signed_bin: int, recipe: Recipe) -> torch.Tensor:
    """One RandAugment op on a uint8 [3, H, W] image, exactly as torchvision applies it."""
    magnitude = op_magnitude(op_id, signed_bin, recipe.ra_num_bins, image.shape[-1])
    return _RA._apply_image_or_video_transform(
        image,
        OPS[op_id].name,
        magnitude,
        InterpolationMode.NEAREST,
        {torch.Tensor: [float(recipe.fill)] * 3},
    )


def reference_view(
    jpeg: np.ndarray, record: np.void, recipe: Recipe, side: int, prefix: str = ""
) -> torch.Tensor:
    """Steps 1-5 of dalidr.augment.replay for one view, with torchvision."""
    image = decode(jpeg)
    height, width = image.shape[-2:]
    crop = record[prefix + "crop"]
    top, left = to_pixels(crop[0:1], height)[0], to_pixels(crop[1:2], width)[0]
    h, w = to_pixels(crop[2:3], height)[0], to_pixels(crop[3:4], width)[0]
    image = F.crop(image, top, left, h, w)
    image = F.resize(image, [side, side], interpolation=InterpolationMode.BILINEAR, antialias=True)
    if record[prefix + "flip"]:
        image = F.horizontal_flip(image)
    if recipe.has_ra_re:
        for op_id, mag in zip(record[prefix + "ops"], record[prefix + "mags"], strict=True):
            image = apply_op(image, int(op_id), int(mag), recipe)
        y, x, eh, ew = to_pixels(record[prefix + "erase"], side)
        if eh > 0 and ew > 0:
            fill = torch.tensor(recipe.erase_fill, dtype=torch.uint8)[:, None, None]
            image = F.erase(image, y, x, eh, ew, fill.expand(3, eh, ew))
    return image


def reference_replay(
    jpeg: np.ndarray, partner_jpeg: np.ndarray | None, record: np.void, recipe: Recipe, side: int
) -> np.ndarray:
    """The whole view as uint8 [H, W, 3]."""
    image = reference_view(jpeg, record, recipe, side)
    if recipe.has_mix and int(record["mix"]) != MixMode.NONE:
        partner = reference_view(partner_jpeg, record, recipe, side, prefix="p_").float()
        own = image.float()
        if int(record["mix"]) == MixMode.MIXUP:
            lam = float(record["lam"]) / COORD_SCALE
            mixed = own * lam + partner * (1 - lam)
        else:
            y, x, bh, bw = to_pixels(record["box"], side)
            mixed = own.clone()
            mixed[:, y : y + bh, x : x + bw] = partner[:, y : y + bh, x : x + bw]
        image = mixed.round().clamp(0, 255).to(torch.uint8)
    return image.permute(1, 2, 0).numpy()
