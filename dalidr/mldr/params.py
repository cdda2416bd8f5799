"""One ml-dr view's parameters -> one dalidr record: the mapping, checked, vectorised per block.

The paper stores every view as the parameters its transforms drew (Sec. 2.2; apple/ml-dr's
`dr/transforms.py` `Compose.compress` and `reinforce.py`), in the source image's pixels and
torchvision's float magnitudes. A dalidr record (`dalidr.augment.records`) holds fractions of the
image (1/65535) and signed magnitude bins. `parse_view` reads one stored view into a block's
`ParsedViews` (pixels, floats; -1 / NaN: absent), and `convert_block` maps the whole block:

- crop `(i, j, h, w)` in source pixels -> record `crop` as fractions of the source, checked to
  round back to the same pixels through replay's own float32 rounding (for the partner: of the
  partner's image); a crop reaching outside the image names the `--images` mismatch;
- flip (bool) -> `flip`;
- RandAugment `[(op index, float magnitude), ...]` (compressed files; uncompressed ones keep
  the op's torchvision name in place of its index) or None (skipped) -> `ops` and signed
  magnitude bins, found in torchvision's magnitude table for the output size (the table the
  paper drew from, `magnitude_bins`); a skipped RandAugment becomes Identity ops;
- RandomErasing `(x, y, h, w)` with x the row, on the output, or None / x = -1 (skipped) ->
  `erase` as fractions of the output;
- a mixed view stores its partner's sample id (`id2`) and every transform as a pair (own,
  partner) -> `partner` and the `p_` fields; MixUp's lambda -> `mix` MIXUP and `lam`; CutMix
  `(lam, x1, y1, x2, y2)` (x: rows) -> `mix` CUTMIX, `box`, and `lam` = 1 - box area
  (descriptive: replay pastes by the box).

MixUp and CutMix together. The paper applies MixUp, then CutMix, each with its own
probability, so one view can carry both: the result is the blend `lam * own + (1 - lam) *
partner` outside the CutMix box and the partner alone inside it. Such a view is stored as
`mix` MIXUP with MixUp's `lam` *and* the CutMix `box` (CutMix's own lambda is implied by the
box and not kept). That replays exactly, with no third mode: `dalidr.augment.replay` computes the
own
image's weight as `keep * lam` for MIXUP, where `keep` is 1 outside the record's box and 0
inside it (an empty box, as plain MixUp records have, keeps everything); so outside the box
the weight is `lam` (the blend) and inside it 0 (the partner alone): the paper's composite,
up to the resize rounding every replayed view has. Guarded by
tests/test_mldr_fidelity.py::test_both_mixings_need_the_box_inside_a_mixup_record,
which replays such views against the paper's reapply and shows that dropping the box leaves
its pixels blended.

Trade-off: the mapping is vectorised over a whole block (numpy, one pass per field) rather
than per view, and every lossy step is checked instead of trusted: a crop or box that does not
survive quantisation, or a magnitude that is not one of torchvision's bins, is reported as a
problem of its file (first per file) and the block is not written, rather than approximated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dalidr.augment.ops import NUM_OPS, OP_IDS
from dalidr.augment.recipe import Recipe
from dalidr.augment.records import COORD_SCALE, MixMode, record_dtype
from dalidr.mldr.source import MldrSource

__all__ = ["ParsedViews", "parse_view", "magnitude_bins", "convert_block"]


# ----------------------------------------------------------------------------- one view


def _number(value: Any) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.item())
    if isinstance(value, (bool, int, float, np.number, np.bool_)):
        return float(value)
    raise TypeError(f"{value!r:.60} is not a number")


def _ints(value: Any, count: int) -> list[int]:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        value = value.tolist()
    if not isinstance(value, Sequence) or len(value) != count:
        raise TypeError(f"{value!r:.60} is not {count} integers")
    out = [_number(v) for v in value]
    if any(v != int(v) for v in out):
        raise TypeError(f"{value!r:.60} holds non-integers")
    return [int(v) for v in out]


def _op_id(op: Any) -> int:
    """A stored RandAugment op: its index (compressed files) or its torchvision name
    (`reinforce.compress: false` keeps `RandAugment`'s own `(name, magnitude)` pairs)."""
    if isinstance(op, str):
        if op not in OP_IDS:
            raise TypeError(f"RandAugment op {op!r:.40} is not one of {list(OP_IDS)}")
        return OP_IDS[op]
    return _ints([op], 1)[0]


def magnitude_bins(recipe: Recipe) -> dict[int, tuple[np.ndarray, bool]]:
    """op id -> (torchvision's magnitude per bin at the recipe's output size, signed).

    These are the values the paper stored; ops without a magnitude are left out."""
    from torchvision.transforms import RandAugment

    size = recipe.output_size
    space = RandAugment()._augmentation_space(recipe.ra_num_bins, (size, size))
    out = {}
    for op_id, (values, signed) in enumerate(space.values()):
        if values.ndim > 0:
            out[op_id] = (values.double().numpy(), bool(signed))
    return out


@dataclass
class ParsedViews:
    """One block's views in the paper's pixel units, before conversion; -1 / NaN: absent."""

    count: int
    slots: int
    num_ops: int
    k: int
    files: list[str]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n, s, o = self.count, self.slots, self.num_ops
        for prefix in ("", "p_"):
            self.arrays[prefix + "crop"] = np.full((n, s, 4), -1, np.int64)
            self.arrays[prefix + "flip"] = np.zeros((n, s), np.uint8)
            self.arrays[prefix + "ops"] = np.zeros((n, s, o), np.int64)
            self.arrays[prefix + "mags"] = np.zeros((n, s, o), np.float64)
            self.arrays[prefix + "erase"] = np.full((n, s, 4), -1, np.int64)
        self.arrays["partner"] = np.full((n, s), -1, np.int64)
        self.arrays["mixup"] = np.full((n, s), np.nan)
        self.arrays["cutmix"] = np.full((n, s, 4), -1, np.int64)
        self.arrays["classes"] = np.zeros((n, s, self.k), np.int64)
        self.arrays["probs"] = np.zeros((n, s, self.k), np.float64)

    def problem(self, row: int, message: str) -> None:
        self.problems.append(f"{self.files[row]}: {message}")


def _split(params: Any, source: MldrSource) -> tuple[int | None, dict[str, Any], dict[str, Any],
                                                      Any, Any]:
    """(partner id, own params, partner params, mixup, cutmix) of one view's stored params."""
    names = source.param_names
    if isinstance(params, Mapping):  # reinforce.compress: false keeps the dictionary
        mixup, cutmix = params.get("mixup"), params.get("cutmix")
        partner = params.get("id2") if mixup is not None or cutmix is not None else None
        own, other = {}, {}
        for name in names:
            if name in ("mixup", "cutmix"):
                continue
            value = params.get(name)
            if not isinstance(value, Sequence) or len(value) != 2:
                raise TypeError(f"{name} is {value!r:.60}; expected (own, partner)")
            own[name], other[name] = value
        if cutmix is not None:
            lam, box = cutmix
            cutmix = [lam, *box]
        return partner, own, other, mixup, cutmix
    if not isinstance(params, Sequence):
        raise TypeError(f"params are {type(params).__name__}, expected a list or a dict")
    values = list(params)
    partner = None
    if source.has_mix:
        if not values:
            raise TypeError("empty parameter list")
        partner, values = values[0], values[1:]
    if len(values) != len(names):
        raise TypeError(f"{len(values)} parameter entries, the config's transforms "
                        f"{list(names)} store {len(names)}")
    own, other = {}, {}
    mixup = cutmix = None
    for name, value in zip(names, values, strict=True):
        if name == "mixup":
            mixup = value
        elif name == "cutmix":
            cutmix = value
        elif partner is not None:
            if not isinstance(value, Sequence) or len(value) != 2:
                raise TypeError(f"{name} of a mixed view is {value!r:.60}; expected a pair")
            own[name], other[name] = value
        else:
            own[name] = value
    return partner, own, other, mixup, cutmix


def _fill_view(views: ParsedViews, row: int, slot: int, prefix: str, params: Mapping[str, Any],
               source: MldrSource) -> None:
    a = views.arrays
    a[prefix + "crop"][row, slot] = _ints(params["random_resized_crop"], 4)
    flip = params.get("random_horizontal_flip")
    a[prefix + "flip"][row, slot] = bool(flip) if flip is not None else False
    ra = params.get("rand_augment")
    if ra is not None:
        if not isinstance(ra, Sequence) or len(ra) != views.num_ops:
            raise TypeError(f"rand_augment is {ra!r:.80}; expected {views.num_ops} "
                            "(op, magnitude) pairs")
        for i, pair in enumerate(ra):
            if not isinstance(pair, Sequence) or len(pair) != 2:
                raise TypeError(f"rand_augment op {i} is {pair!r:.60}")
            a[prefix + "ops"][row, slot, i] = _op_id(pair[0])
            a[prefix + "mags"][row, slot, i] = _number(pair[1])
    erase = params.get("random_erase")
    if erase is not None:
        a[prefix + "erase"][row, slot] = _ints(erase, 4)


def _fill_probs(views: ParsedViews, row: int, slot: int, prob: Any) -> None:
    if not isinstance(prob, Sequence) or len(prob) != 2:
        raise TypeError(f"prob is {type(prob).__name__}; expected (probabilities, class ids) "
                        "(dense probability vectors are not supported)")
    values, ids = prob
    if isinstance(values, (torch.Tensor, np.ndarray)):
        values = values.tolist()
    if isinstance(ids, (torch.Tensor, np.ndarray)):
        ids = ids.tolist()
    if len(values) != views.k or len(ids) != views.k:
        raise TypeError(f"{len(values)} probabilities and {len(ids)} class ids; expected "
                        f"{views.k} of each")
    views.arrays["probs"][row, slot] = [_number(v) for v in values]
    views.arrays["classes"][row, slot] = _ints(ids, views.k)


def parse_view(views: ParsedViews, row: int, slot: int, entry: Any, source: MldrSource) -> None:
    """Fill views (row, slot) from one stored `{"params": ..., "prob": ...}` entry.

    Raises TypeError, KeyError or ValueError naming what in the entry is malformed."""
    if not isinstance(entry, Mapping) or "params" not in entry or "prob" not in entry:
        raise TypeError("not a {'params', 'prob'} dictionary")
    partner, own, other, mixup, cutmix = _split(entry["params"], source)
    _fill_view(views, row, slot, "", own, source)
    _fill_probs(views, row, slot, entry["prob"])
    if partner is not None:
        views.arrays["partner"][row, slot] = _ints([partner], 1)[0]
        _fill_view(views, row, slot, "p_", other, source)
        if mixup is not None:
            views.arrays["mixup"][row, slot] = _number(mixup)
        if cutmix is not None:
            views.arrays["cutmix"][row, slot] = _ints(list(cutmix)[1:], 4)


# ----------------------------------------------------------------------------- records


def _quantise(pixels: np.ndarray, extent: np.ndarray | float) -> np.ndarray:
    return np.rint(pixels / np.asarray(extent, np.float64) * COORD_SCALE).astype(np.uint16)


def _replayed(fractions: np.ndarray, extent: np.ndarray | float) -> np.ndarray:
    """The pixels replay rounds stored fractions to (float32 maths, as dalidr.augment.replay)."""
    scale = np.asarray(extent, np.float32) * np.float32(1.0 / COORD_SCALE)
    return np.floor(fractions.astype(np.float32) * scale + np.float32(0.5)).astype(np.int64)


class _Checker:
    """Collects (row, slot) -> message problems of one block, first per file only."""

    def __init__(self, views: ParsedViews) -> None:
        self.views = views
        self.bad = np.zeros((views.count, views.slots), bool)

    def check(self, wrong: np.ndarray | np.bool_, message: str) -> None:
        fresh = wrong & ~self.bad
        for row in np.flatnonzero(fresh.any(axis=1)):
            slot = int(np.flatnonzero(fresh[row])[0])
            self.views.problem(int(row), f"view {slot}: {message}")
        self.bad |= wrong


def _boxes(checker: _Checker, box: np.ndarray, hw: np.ndarray, what: str) -> np.ndarray:
    """(y, x, h, w) pixel boxes inside images of (H, W) -> quantised fractions, checked."""
    height, width = hw[..., 0], hw[..., 1]
    y, x, h, w = (box[..., i] for i in range(4))
    checker.check((y < 0) | (x < 0) | (h < 0) | (w < 0) | (y + h > height) | (x + w > width),
                  f"{what} lies outside the image (is --images the dataset these "
                  "reinforcements were made for?)")
    inside = np.clip(box, 0, None)
    out = np.stack([_quantise(inside[..., 0], height), _quantise(inside[..., 1], width),
                    _quantise(inside[..., 2], height), _quantise(inside[..., 3], width)], -1)
    back = np.stack([_replayed(out[..., 0], height), _replayed(out[..., 1], width),
                     _replayed(out[..., 2], height), _replayed(out[..., 3], width)], -1)
    checker.check((back != inside).any(-1), f"{what} does not survive 1/65535 quantisation")
    return out


def _magnitudes(checker: _Checker, ops: np.ndarray, mags: np.ndarray, recipe: Recipe,
                tables: dict[int, tuple[np.ndarray, bool]], prefix: str) -> np.ndarray:
    """Float magnitudes -> signed bins of torchvision's table; problems for unmatched ones."""
    checker.check(((ops < 0) | (ops >= NUM_OPS)).any(-1), f"{prefix}rand_augment op index "
                  f"outside 0..{NUM_OPS - 1}")
    bins = np.zeros(ops.shape, np.int64)
    unmatched = np.zeros(ops.shape, bool)
    for op_id in range(NUM_OPS):
        where = ops == op_id
        if not where.any():
            continue
        if op_id not in tables:
            unmatched |= where & (mags != 0)
            continue
        table, signed = tables[op_id]
        value = np.abs(mags[where])
        if op_id == 11:  # Solarize: older torchvision stored the threshold as a [0, 1] fraction
            value = np.where((value > 0) & (value <= 1), value * 255, value)
        distance = np.abs(value[:, None] - table[None, :])
        best = distance.argmin(axis=1)
        ok = distance[np.arange(len(best)), best] <= 1e-4 * np.maximum(1, np.abs(table[best]))
        if not signed:
            ok &= mags[where] >= 0
        sign = np.where(signed & (mags[where] < 0), -1, 1)
        bins[where] = best * sign
        unmatched[where] = ~ok
    checker.check(unmatched.any(-1), f"{prefix}rand_augment magnitude is not one of "
                  f"torchvision's {recipe.ra_num_bins} bins at {recipe.output_size} px")
    return bins


def convert_block(views: ParsedViews, samples: np.ndarray, image_hw: np.ndarray, recipe: Recipe,
                  tables: dict[int, tuple[np.ndarray, bool]]) -> np.ndarray:
    """Records [n, slots] for one block's parsed views; problems are added to `views`."""
    a, checker = views.arrays, _Checker(views)
    n, s = views.count, views.slots
    out = np.zeros((n, s), dtype=record_dtype(recipe))
    side = float(recipe.output_size)
    output_hw = np.full((n, s, 2), recipe.output_size, np.int64)
    own_hw = np.broadcast_to(image_hw[samples][:, None, :], (n, s, 2))
    partner = a["partner"]
    mixed = partner >= 0
    checker.check(mixed & (partner >= len(image_hw)),
                  f"partner id2 is outside the dataset's 0..{len(image_hw) - 1}")
    partner = np.where(mixed & (partner < len(image_hw)), partner, samples[:, None])
    views_of = [("", own_hw, np.ones((n, s), bool))]
    if recipe.has_mix:
        views_of.append(("p_", image_hw[partner], mixed))
    for prefix, hw, present in views_of:
        crop = np.where(present[..., None], a[prefix + "crop"], -1)
        full = np.asarray((crop < 0).all(-1))
        crop = np.where(full[..., None], np.concatenate([np.zeros_like(hw), hw], -1), crop)
        checker.check((crop[..., 2] == 0) | (crop[..., 3] == 0), f"{prefix}crop is empty")
        out[prefix + "crop"] = _boxes(checker, crop, hw, f"{prefix}crop of the source")
        out[prefix + "flip"] = np.where(present, a[prefix + "flip"], 0)
        if recipe.has_ra_re:
            ops = np.where(present[..., None], a[prefix + "ops"], 0)
            out[prefix + "ops"] = ops.clip(0, NUM_OPS - 1)
            out[prefix + "mags"] = _magnitudes(checker, ops, a[prefix + "mags"], recipe, tables,
                                               prefix)
            erase = a[prefix + "erase"]
            skipped = ~present | (erase[..., 0] == -1) | (erase[..., 2] <= 0) | (erase[..., 3] <= 0)
            erase = np.where(skipped[..., None], 0, erase)
            out[prefix + "erase"] = _boxes(checker, erase, output_hw, f"{prefix}erase box of "
                                           "the output")
    if recipe.has_mix:
        lam = a["mixup"]
        box = a["cutmix"]  # x1, y1, x2, y2 with x the row
        has_mixup, has_cutmix = mixed & ~np.isnan(lam), mixed & (box >= 0).all(-1)
        checker.check(mixed & ~has_mixup & ~has_cutmix, "has a partner id2 but no mixing")
        checker.check(has_mixup & ((lam < 0) | (lam > 1)), "mixup lambda is outside [0, 1]")
        yxhw = np.stack([box[..., 0], box[..., 1], box[..., 2] - box[..., 0],
                         box[..., 3] - box[..., 1]], -1)
        yxhw = np.where(has_cutmix[..., None], yxhw, 0)
        out["box"] = _boxes(checker, yxhw, output_hw, "cutmix box of the output")
        area = yxhw[..., 2] * yxhw[..., 3] / side**2
        out["mix"] = np.where(has_mixup, MixMode.MIXUP,
                              np.where(has_cutmix, MixMode.CUTMIX, MixMode.NONE))
        weight = np.where(has_mixup, np.nan_to_num(lam), np.where(has_cutmix, 1 - area, 1.0))
        out["lam"] = np.rint(np.clip(weight, 0, 1) * COORD_SCALE)
        out["partner"] = partner
    return out
