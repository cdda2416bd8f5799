"""Small reinforcement datasets in the paper's published format (apple/ml-dr), for tests/bench.

`write_mldr_dataset` draws every view's parameters the way the paper's generator does, with
torchvision's sampling rules, vectorised with numpy over a sample's views: `RandomResizedCrop`'s
(10 tries of scale x log-uniform ratio, then the central-crop fallback) in source pixels, a
flip coin, RandAugment as (op index, float magnitude from torchvision's magnitude table at the
output size, negated at random for signed ops) or None when skipped, `RandomErasing`'s
(10 tries, x = row) on the output or None / -1 when skipped, MixUp's lambda (Beta / div_by)
and CutMix's (lambda, x1, y1, x2, y2) box with numpy integers, and the partner `id2` with a
paired view. Parameters are compressed as the paper's `Compose.compress` lays them out, or, with
`MldrSpec(compress=False)` (the paper's `reinforce.compress: false`), kept as the dictionary its
`Compose` returns: every transform's (own, partner) pair (the generator always draws a
partner), RandAugment ops by torchvision name, empty tuples for the parameterless transforms,
MixUp's lambda, CutMix's (lambda, (x1, y1, x2, y2)), the crop pair added last and `id2` when a
view is mixed. Each sample file is `torch.save((index, views), pickle_protocol=4)`, optionally
gzip-compressed or a joblib dump, beside a `config.pth.tar`. Probabilities are a random top-k
(unsorted, as `argpartition` leaves them): only their transport is under test.
Trade-off: drawing per sample rather than per view (torchvision's own `get_params`, one torch
call per number) makes ImageNet+'s 400 views per image cheap to build (bench/mldr_loader.py)
at the cost of restating the two box samplers here; the file format is unchanged.
"""

from __future__ import annotations

import functools
import gzip
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms as T

from dalidr.data.dataset import DatasetListing

__all__ = ["MldrSpec", "mldr_config", "draw_params", "save_sample", "write_mldr_dataset",
           "FORMATS"]

FORMATS = ("torch", "gzip", "joblib")
_TRIES = 10  # attempts of torchvision's RandomResizedCrop / RandomErasing samplers
_CROP_SCALE, _CROP_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
_ERASE_SCALE, _ERASE_RATIO = (0.02, 0.33), (0.3, 3.3)


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
    # The paper's reinforce.compress: parameter lists (True) or its dictionaries (False).
    compress: bool = True


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
            "reinforce": {"num_samples": spec.slots, "topk": spec.topk, "compress": spec.compress,
                          "joblib": False, "gzip": True, "image_augmentation": aug}}


@functools.lru_cache(maxsize=8)
def _magnitudes(size: int, magnitude: int) -> tuple[np.ndarray, np.ndarray]:
    """Per RandAugment op: torchvision's magnitude at bin `magnitude` (0 if none), signed."""
    space = T.RandAugment()._augmentation_space(31, (size, size))
    values = np.array([float(v[magnitude]) if v.ndim > 0 else 0.0 for v, _ in space.values()])
    return values, np.array([bool(s) for _, s in space.values()])


def _sample_boxes(rng: np.random.Generator, hw: np.ndarray, scale: tuple[float, float],
                  ratio: tuple[float, float], erase: bool) -> np.ndarray:
    """(i, j, h, w) per row of hw [n, 2], by RandomResizedCrop's (erase: RandomErasing's) rule."""
    n = len(hw)
    height, width = hw[:, 0:1].astype(np.int64), hw[:, 1:2].astype(np.int64)
    area = (height * width).astype(np.float64) * rng.uniform(*scale, (n, _TRIES))
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), (n, _TRIES)))
    long_side = np.rint(np.sqrt(area * aspect)).astype(np.int64)
    short_side = np.rint(np.sqrt(area / aspect)).astype(np.int64)
    if erase:  # h = sqrt(area * aspect); only boxes smaller than the image
        h, w = long_side, short_side
        ok = (h < height) & (w < width)
    else:  # w = sqrt(area * aspect); boxes inside the image
        h, w = short_side, long_side
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    rows, first, found = np.arange(n), ok.argmax(1), ok.any(1)
    h, w = h[rows, first], w[rows, first]
    height, width = height[:, 0], width[:, 0]
    i = rng.integers(0, np.where(found, height - h + 1, 1))
    j = rng.integers(0, np.where(found, width - w + 1, 1))
    if erase:  # no try fits: the whole image (RandomErasing returns it unchanged)
        fallback = np.stack([np.zeros_like(height), np.zeros_like(width), height, width], -1)
    else:  # no try fits: the central crop at the nearest allowed ratio
        in_ratio = width / height
        fh = np.where(in_ratio < min(ratio), np.rint(width / min(ratio)), height)
        fw = np.where(in_ratio > max(ratio), np.rint(height * max(ratio)), width)
        fh, fw = fh.astype(np.int64), fw.astype(np.int64)
        fallback = np.stack([(height - fh) // 2, (width - fw) // 2, fh, fw], -1)
    return np.where(found[:, None], np.stack([i, j, h, w], -1), fallback)


def _views(rng: np.random.Generator, hw: np.ndarray, spec: MldrSpec,
           erase_as_minus_one: np.ndarray) -> list[dict[str, Any]]:
    """One view's parameters per row of hw [n, 2], as the paper's transforms return them."""
    n = len(hw)
    crops = _sample_boxes(rng, hw, _CROP_SCALE, _CROP_RATIO, erase=False).tolist()
    flips = (rng.random(n) < 0.5).tolist()
    out = [{"random_resized_crop": tuple(c), "random_horizontal_flip": f}
           for c, f in zip(crops, flips, strict=True)]
    if spec.randaug:
        values, signed = _magnitudes(spec.size, spec.magnitude)
        skipped = (rng.random(n) > spec.randaug_p).tolist()
        ops = rng.integers(len(values), size=(n, spec.num_ops))
        negate = signed[ops] & (rng.integers(2, size=ops.shape) == 1)
        mags = (values[ops] * np.where(negate, -1.0, 1.0)).tolist()
        for view, skip, o, m in zip(out, skipped, ops.tolist(), mags, strict=True):
            view["rand_augment"] = None if skip else list(zip(o, m, strict=True))
    if spec.erase_p > 0:
        skipped = (rng.random(n) > spec.erase_p).tolist()
        canvas = np.full((n, 2), spec.size)
        boxes = _sample_boxes(rng, canvas, _ERASE_SCALE, _ERASE_RATIO, erase=True).tolist()
        for view, skip, minus_one, box in zip(out, skipped, erase_as_minus_one.tolist(), boxes,
                                              strict=True):
            view["random_erase"] = ((-1, -1, -1, -1) if minus_one else None) if skip else \
                tuple(box)
    return out


def _names(spec: MldrSpec) -> list[str]:
    names = ["random_resized_crop", "random_horizontal_flip"]
    names += ["rand_augment"] if spec.randaug else []
    return names + (["random_erase"] if spec.erase_p > 0 else [])


_OP_NAMES = tuple(T.RandAugment()._augmentation_space(31, (8, 8)).keys())


def _uncompressed(spec: MldrSpec, own: dict[str, Any], other: dict[str, Any],
                  partner: int | None, mixup: float | None, cutmix: tuple | None
                  ) -> dict[str, Any]:
    """One view as the paper's generator keeps it with `compress: false` (its `Compose`'s
    dictionary, in the order it fills it: the crop pair comes last, from the loader)."""

    def named(ra: Any) -> Any:
        return None if ra is None else [(_OP_NAMES[op], magnitude) for op, magnitude in ra]

    out: dict[str, Any] = {"uint8": ((), ())}
    out["random_horizontal_flip"] = (own["random_horizontal_flip"],
                                     other["random_horizontal_flip"])
    if spec.randaug:
        out["rand_augment"] = (named(own["rand_augment"]), named(other["rand_augment"]))
    out["to_tensor"] = ((), ())
    if spec.erase_p > 0:
        out["random_erase"] = (own["random_erase"], other["random_erase"])
    out["normalize"] = ((), ())
    if spec.mixing:
        out["mixup"], out["cutmix"] = mixup, cutmix
    out["random_resized_crop"] = (own["random_resized_crop"], other["random_resized_crop"])
    if partner is not None:
        out["id2"] = partner
    return out


def draw_params(index: int, image_hw: np.ndarray, spec: MldrSpec,
                rng: np.random.Generator) -> list[Any]:
    """Every view's parameters of sample `index`, as the paper's generator stores them: the
    compressed list (a skipped erase is None in even slots, -1s in odd ones; the partner's the
    other way round), or with `spec.compress` False its dictionary."""
    n, names = spec.slots, _names(spec)
    odd = np.arange(n) % 2 == 1
    own = _views(rng, np.broadcast_to(image_hw[index], (n, 2)), spec, odd)
    if not spec.mixing:
        if spec.compress:
            return [[view[name] for name in names] for view in own]
        # The generator draws a partner's views even without mixing; from a side stream, so
        # the own views are the compressed files' for the same seed.
        side = np.random.default_rng([index, 0x5EED])
        partners = side.integers(len(image_hw), size=n)
        other = _views(side, image_hw[partners], spec, ~odd)
        return [_uncompressed(spec, own[s], other[s], None, None, None) for s in range(n)]
    partners = rng.integers(len(image_hw), size=n)
    other = _views(rng, image_hw[partners], spec, ~odd)
    with_mixup = rng.random(n) < spec.mixup_p
    mixup_lam = rng.beta(1.0, 1.0, n) / 2.0
    with_cutmix = rng.random(n) < spec.cutmix_p
    cutmix_lam = rng.beta(1.0, 1.0, n)
    cut = (spec.size * np.sqrt(1.0 - cutmix_lam)).astype(np.int64)
    centre = rng.integers(spec.size, size=(2, n))
    low = np.clip(centre - cut // 2, 0, spec.size)  # x1, y1 (x: rows), numpy ints
    high = np.clip(centre + cut // 2, 0, spec.size)  # x2, y2
    params: list[Any] = []
    for s in range(n):
        mixup = float(mixup_lam[s]) if with_mixup[s] else None
        cutmix = [float(cutmix_lam[s]), low[0, s], low[1, s], high[0, s], high[1, s]] \
            if with_cutmix[s] else None
        mixed = mixup is not None or cutmix is not None
        if not spec.compress:
            box = None if cutmix is None else (cutmix[0], tuple(cutmix[1:]))
            params.append(_uncompressed(spec, own[s], other[s],
                                        int(partners[s]) if mixed else None, mixup, box))
        elif not mixed:
            params.append([None] + [own[s][name] for name in names] + [None, None])
        else:
            params.append([int(partners[s])] + [[own[s][name], other[s][name]]
                                                for name in names] + [mixup, cutmix])
    return params


def _probs(spec: MldrSpec, rng: np.random.Generator) -> list[tuple[list[float], list[int]]]:
    logits = rng.standard_normal((spec.slots, spec.num_classes), dtype=np.float32) * 3
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ids = np.argpartition(p, -spec.topk, axis=-1)[:, -spec.topk:]
    values = np.take_along_axis(p, ids, -1)
    return list(zip(values.tolist(), ids.tolist(), strict=True))


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
    rng = np.random.default_rng(seed)
    written = []
    for index in range(len(listing)):
        views = [{"params": params, "prob": prob} for params, prob in zip(
            draw_params(index, image_hw, spec, rng), _probs(spec, rng), strict=True)]
        fmt = spec.formats[index % len(spec.formats)]
        save_sample((index, views), out / f"{index}.pth.tar", fmt)
        written.append(views)
    torch.save(mldr_config(spec), out / "config.pth.tar")
    return written
