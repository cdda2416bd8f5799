"""Small reinforcement datasets in the paper's published format (apple/ml-dr), for tests/bench.

`write_mldr_dataset` draws every view's parameters the way the paper's generator does, with
torchvision's own samplers and torch's random numbers: `RandomResizedCrop.get_params` in source
pixels, a flip coin, RandAugment as (op index, float magnitude from torchvision's magnitude
table at the output size, negated at random for signed ops) or None when skipped,
`RandomErasing.get_params` on the output (x = row) or None / -1 when skipped, MixUp's lambda
(Beta / div_by) and CutMix's (lambda, x1, y1, x2, y2) box with numpy integers, and the partner
`id2` with a paired view. Parameters are compressed as the paper's `Compose.compress` lays
them out; each sample file is `torch.save((index, views), pickle_protocol=4)`, optionally
gzip-compressed or a joblib dump, beside a `config.pth.tar`. Probabilities are a random top-k
(unsorted, as `argpartition` leaves them): only their transport is under test.
"""

from __future__ import annotations

import gzip
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms as T

from dalidr.dataset import DatasetListing

__all__ = ["MldrSpec", "mldr_config", "draw_params", "save_sample", "write_mldr_dataset",
           "FORMATS"]

FORMATS = ("torch", "gzip", "joblib")


@dataclass(frozen=True)
class MldrSpec:
    """What the generated reinforcements hold."""

    size: int = 64
    slots: int = 6
    topk: int = 5
    num_classes: int = 10
    randaug: bool = True
    randaug_p: float = 0.7
    num_ops: int = 2
    magnitude: int = 9
    erase_p: float = 0.5
    mixing: bool = True
    mixup_p: float = 0.5
    cutmix_p: float = 0.5
    # File formats, cycled over the samples.
    formats: tuple[str, ...] = ("torch",)


def mldr_config(spec: MldrSpec) -> dict[str, Any]:
    """The run configuration the paper saves as config.pth.tar."""
    aug: dict[str, Any] = {
        "uint8": {"enable": True},
        "random_resized_crop": {"enable": True, "size": spec.size},
        "random_horizontal_flip": {"enable": True, "p": 0.5},
        "rand_augment": {"enable": spec.randaug, "p": spec.randaug_p, "num_ops": spec.num_ops,
                         "magnitude": spec.magnitude},
        "to_tensor": {"enable": True},
        "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "random_erase": {"enable": spec.erase_p > 0, "p": spec.erase_p},
    }
    if spec.mixing:
        aug["mixup"] = {"enable": True, "alpha": 1.0, "div_by": 2.0, "p": spec.mixup_p}
        aug["cutmix"] = {"enable": True, "alpha": 1.0, "p": spec.cutmix_p}
    return {"dataset": "test", "num_classes": spec.num_classes, "seed": None,
            "teacher": {"name": "test-teacher"},
            "reinforce": {"num_samples": spec.slots, "topk": spec.topk, "compress": True,
                          "joblib": False, "gzip": True, "image_augmentation": aug}}


_RRC = T.RandomResizedCrop(8)
_RA = T.RandAugment()
_RE = T.RandomErasing(p=1.0)


def _view(hw: tuple[int, int], spec: MldrSpec, erase_as_minus_one: bool) -> dict[str, Any]:
    image = torch.empty((3, *hw), dtype=torch.uint8)
    out: dict[str, Any] = {"random_resized_crop": tuple(
        int(v) for v in _RRC.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]))}
    out["random_horizontal_flip"] = bool(torch.rand(1).item() < 0.5)
    if spec.randaug:
        if torch.rand(1).item() > spec.randaug_p:
            out["rand_augment"] = None
        else:
            space = _RA._augmentation_space(31, (spec.size, spec.size))
            ops = []
            for _ in range(spec.num_ops):
                index = int(torch.randint(len(space), (1,)).item())
                values, signed = list(space.values())[index]
                magnitude = float(values[spec.magnitude].item()) if values.ndim > 0 else 0.0
                if signed and torch.randint(2, (1,)):
                    magnitude *= -1.0
                ops.append((index, magnitude))
            out["rand_augment"] = ops
    if spec.erase_p > 0:
        if torch.rand(1).item() > spec.erase_p:
            out["random_erase"] = (-1, -1, -1, -1) if erase_as_minus_one else None
        else:
            canvas = torch.empty((3, spec.size, spec.size))
            x, y, h, w, _ = _RE.get_params(canvas, scale=(0.02, 0.33), ratio=(0.3, 3.3),
                                           value=[0.0])
            out["random_erase"] = (int(x), int(y), int(h), int(w))
    return out


def draw_params(index: int, image_hw: np.ndarray, spec: MldrSpec, rng: np.random.Generator,
                slot: int) -> list[Any]:
    """One view's compressed parameter list, as the paper's generator stores it."""
    names = ["random_resized_crop", "random_horizontal_flip"]
    names += ["rand_augment"] if spec.randaug else []
    names += ["random_erase"] if spec.erase_p > 0 else []
    own = _view(tuple(image_hw[index]), spec, erase_as_minus_one=slot % 2 == 1)
    if not spec.mixing:
        return [own[n] for n in names]
    partner = int(rng.integers(len(image_hw)))
    other = _view(tuple(image_hw[partner]), spec, erase_as_minus_one=slot % 2 == 0)
    mixup = float(rng.beta(1.0, 1.0) / 2.0) if rng.random() < spec.mixup_p else None
    cutmix = None
    if rng.random() < spec.cutmix_p:
        lam = float(rng.beta(1.0, 1.0))
        cut = int(spec.size * math.sqrt(1.0 - lam))
        cx, cy = int(rng.integers(spec.size)), int(rng.integers(spec.size))
        box = [np.clip(c - cut // 2, 0, spec.size) for c in (cx, cy)]
        box += [np.clip(c + cut // 2, 0, spec.size) for c in (cx, cy)]
        cutmix = [lam, box[0], box[1], box[2], box[3]]  # x1, y1, x2, y2 (numpy ints)
    if mixup is None and cutmix is None:
        return [None] + [own[n] for n in names] + [None, None]
    return [partner] + [[own[n], other[n]] for n in names] + [mixup, cutmix]


def _probs(spec: MldrSpec, rng: np.random.Generator) -> tuple[list[float], list[int]]:
    logits = rng.normal(size=spec.num_classes) * 3
    p = np.exp(logits - logits.max())
    p = (p / p.sum()).astype(np.float32)
    ids = np.argpartition(p, -spec.topk)[-spec.topk:]
    return p[ids].tolist(), ids.tolist()


def save_sample(obj: Any, path: Path, fmt: str = "torch") -> None:
    """Save one sample file as the paper does (torch.save, protocol 4), gzipped or joblib."""
    if fmt == "joblib":
        import joblib

        joblib.dump(obj, path, compress=True)
        return
    buffer = io.BytesIO()
    torch.save(obj, buffer, pickle_protocol=4)
    data = buffer.getvalue()
    path.write_bytes(gzip.compress(data) if fmt == "gzip" else data)


def write_mldr_dataset(out: Path, listing: DatasetListing, image_hw: np.ndarray,
                       spec: MldrSpec, seed: int = 0) -> list[list[dict[str, Any]]]:
    """Write `out/{index}.pth.tar` for every sample of `listing` and `out/config.pth.tar`;
    returns every sample's views as written."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    written = []
    for index in range(len(listing)):
        views = [{"params": draw_params(index, image_hw, spec, rng, slot),
                  "prob": _probs(spec, rng)} for slot in range(spec.slots)]
        fmt = spec.formats[index % len(spec.formats)]
        save_sample((index, views), out / f"{index}.pth.tar", fmt)
        written.append(views)
    torch.save(mldr_config(spec), out / "config.pth.tar")
    return written
