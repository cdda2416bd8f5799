"""The paper's reapply of one stored view (apple/ml-dr's `Compose.reapply`), in PIL/torchvision.

Two users: the oracle that dalidr's replay of imported records is held to
(`tests/test_mldr_fidelity.py`), and the paper's loading path that `bench/mldr_loader.py` times.
Steps, as the paper's transforms order them: PIL decode, crop-resize (bilinear, antialiased),
flip, RandAugment (`_apply_op`, nearest), to_tensor, erase to 0 (before normalisation), then
MixUp / CutMix with the partner's own reapplied view.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.autoaugment import _apply_op

from dalidr.augment.ops import OPS

__all__ = ["OP_NAMES", "unpack", "reapply_view", "reapply"]

OP_NAMES = [op.name for op in OPS]  # torchvision's RandAugment order, as the paper's op_names


def unpack(params: list, mixing: bool, names: list[str]) -> tuple:
    """The paper's compressed list -> (id2, own dict, partner dict, mixup, cutmix)."""
    id2 = params[0] if mixing else None
    rest = params[1:] if mixing else params
    own: dict[str, Any] = {}
    other: dict[str, Any] = {}
    mix: dict[str, Any] = {}
    for name, value in zip(names, rest, strict=True):
        if name in ("mixup", "cutmix"):
            mix[name] = value
        elif id2 is not None:
            own[name], other[name] = value
        else:
            own[name] = value
    return id2, own, other, mix.get("mixup"), mix.get("cutmix")


def reapply_view(path: Path, params: dict[str, Any], size: int) -> torch.Tensor:
    """One image's own transforms: float [3, size, size] in [0, 1]."""
    image = Image.open(path).convert("RGB")
    i, j, h, w = params["random_resized_crop"]
    image = F.resized_crop(image, i, j, h, w, [size, size], InterpolationMode.BILINEAR,
                           antialias=True)
    if params.get("random_horizontal_flip"):
        image = F.hflip(image)
    for op, magnitude in params.get("rand_augment") or []:
        image = _apply_op(image, OP_NAMES[op], magnitude, InterpolationMode.NEAREST, None)
    tensor = F.to_tensor(image)
    erase = params.get("random_erase")
    if erase is not None and erase[0] != -1:
        x, y, eh, ew = erase
        tensor[:, x:x + eh, y:y + ew] = 0
    return tensor


def reapply(paths: Sequence[Path], index: int, params: list, mixing: bool, names: list[str],
            size: int) -> torch.Tensor:
    """One stored view of sample `index`, mixed with its partner: float [3, size, size]."""
    id2, own, other, mixup, cutmix = unpack(params, mixing, names)
    image = reapply_view(paths[index], own, size)
    if id2 is not None:
        partner = reapply_view(paths[int(id2)], other, size)
        if mixup is not None:
            image = mixup * image + (1 - mixup) * partner
        if cutmix is not None:
            _, x1, y1, x2, y2 = (int(v) for v in cutmix)
            image[:, x1:x2, y1:y2] = partner[:, x1:x2, y1:y2]
    return image
