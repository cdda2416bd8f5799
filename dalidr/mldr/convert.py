"""Import the paper's published reinforcements into a dalidr store: `dalidr import-mldr`.

Each `{index}.pth.tar` of apple/ml-dr holds `(index, [{"params": ..., "prob": (probs,
class_ids)}, ...])`, one entry per stored view (paper Sec. 2.2). This module loads every file
with `dalidr.mldr.safe_load` (nothing is ever plainly unpickled), turns each view's parameters
into a dalidr record (`dalidr.records`) and its top-k into the store's arrays, and writes them
block by block with `store.StoreWriter`, in parallel processes, resumably, with a progress bar.

Parameter mapping (the paper's conventions, from its `dr/transforms.py` and `reinforce.py`):

- crop `(i, j, h, w)` in source pixels -> record `crop` as fractions of the source (1/65535),
  checked to round back to the same pixels (for the partner: of the partner's image);
- flip (bool) -> `flip`;
- RandAugment `[(op index, float magnitude), ...]` or None (skipped) -> `ops` and signed
  magnitude bins, found in torchvision's magnitude table for the output size (the table the
  paper drew from); a skipped RandAugment becomes Identity ops;
- RandomErasing `(x, y, h, w)` with x the row, on the output, or None / x = -1 (skipped) ->
  `erase` as fractions of the output;
- a mixed view stores its partner's sample id (`id2`) and every transform as a pair (own,
  partner) -> `partner` and the `p_` fields; MixUp's lambda -> `mix` MIXUP and `lam`; CutMix
  `(lam, x1, y1, x2, y2)` (x: rows) -> `mix` CUTMIX and `box`. The paper applies MixUp and then
  CutMix, each with its own probability, so a view can carry both: it is stored as MIXUP with
  the CutMix box, which replay (`dalidr.replay`) turns into the blend outside the box and the
  partner inside it, exactly the paper's result.

Nothing is lost: every file must hold its own index and exactly `slots` views of `k`
probabilities; after writing, each block is read back and compared (records bit for bit,
classes exactly, probabilities within the store's quantisation). Problems are collected per
file and reported together; blocks without problems stay committed, so a rerun after fixing
the files converts only the rest. Trade-off: the read-back costs about a tenth of the import
and buys a check of every stored value.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dalidr.errors import DatasetError, RecordError, StoreError
from dalidr.mldr.safe_load import load_file
from dalidr.mldr.source import MldrSource, check_op_names, dataset_listing, read_source
from dalidr.ops import NUM_OPS
from dalidr.recipe import Recipe
from dalidr.records import COORD_SCALE, MixMode, record_dtype
from store.config import StoreConfig
from store.manifest import scan_manifest
from store.reader import StoreReader
from store.writer import StoreWriter, create_store

__all__ = ["ImportConfig", "ImportReport", "import_mldr", "convert_block", "magnitude_bins",
           "register"]

_MAX_PROBLEMS = 20  # problems listed in one error
_PROB_SLACK = 0.02  # probabilities may come back this far off (sqrt quantisation, L >= 15)


# ----------------------------------------------------------------------------- parameters


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
class _Views:
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


def _fill_view(views: _Views, row: int, slot: int, prefix: str, params: Mapping[str, Any],
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
            a[prefix + "ops"][row, slot, i] = _ints([pair[0]], 1)[0]
            a[prefix + "mags"][row, slot, i] = _number(pair[1])
    erase = params.get("random_erase")
    if erase is not None:
        a[prefix + "erase"][row, slot] = _ints(erase, 4)


def _fill_probs(views: _Views, row: int, slot: int, prob: Any) -> None:
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


def _parse_file(views: _Views, row: int, index: int, path: Path, source: MldrSource) -> None:
    """Fill one sample's views from its file; problems are recorded, not raised."""
    try:
        content = load_file(path)
    except DatasetError as exc:
        views.problems.append(str(exc))
        return
    if not isinstance(content, Sequence) or len(content) != 2:
        views.problem(row, "not an (index, views) pair")
        return
    stored_index, entries = content
    if not isinstance(stored_index, (int, np.integer)) or int(stored_index) != index:
        views.problem(row, f"holds index {stored_index!r}, its name says {index}")
        return
    if not isinstance(entries, Sequence) or len(entries) != views.slots:
        count = len(entries) if isinstance(entries, Sequence) else type(entries).__name__
        views.problem(row, f"holds {count} views; the config's reinforce.num_samples is "
                      f"{views.slots}")
        return
    for slot, entry in enumerate(entries):
        try:
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
        except (TypeError, KeyError, ValueError) as exc:
            views.problem(row, f"view {slot}: {exc}")
            return


# ----------------------------------------------------------------------------- records


def _quantise(pixels: np.ndarray, extent: np.ndarray | float) -> np.ndarray:
    return np.rint(pixels / np.asarray(extent, np.float64) * COORD_SCALE).astype(np.uint16)


def _replayed(fractions: np.ndarray, extent: np.ndarray | float) -> np.ndarray:
    """The pixels replay rounds stored fractions to (float32 maths, as dalidr.replay)."""
    scale = np.asarray(extent, np.float32) * np.float32(1.0 / COORD_SCALE)
    return np.floor(fractions.astype(np.float32) * scale + np.float32(0.5)).astype(np.int64)


class _Checker:
    """Collects (row, slot) -> message problems of one block, first per file only."""

    def __init__(self, views: _Views) -> None:
        self.views = views
        self.bad = np.zeros((views.count, views.slots), bool)

    def check(self, wrong: np.ndarray, message: str) -> None:
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


def convert_block(views: _Views, samples: np.ndarray, image_hw: np.ndarray, recipe: Recipe,
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
        full = (crop < 0).all(-1)
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


# ----------------------------------------------------------------------------- one block


@dataclass(frozen=True)
class _Job:
    """What a worker process needs to convert any block."""

    url: str
    source: MldrSource
    k: int


@dataclass(frozen=True)
class _BlockResult:
    block: int
    samples: int
    views: int
    probabilities: int
    problems: tuple[str, ...]


_WORKER: dict[str, Any] = {}


def _init_worker(job: _Job) -> None:
    torch.set_num_threads(1)
    _WORKER.update(job=job, writer=StoreWriter(job.url), tables=magnitude_bins(job.source.recipe))


def _verify(writer: StoreWriter, block: int, records: np.ndarray, classes: np.ndarray,
            probs: np.ndarray, files: list[str]) -> list[str]:
    """Compare a written block with what was converted; problems named by file."""
    stored, targets = StoreReader(writer.layout.url).read_block(block)
    problems = []
    order = np.argsort(-probs, axis=-1, kind="stable")
    for row in range(len(records)):
        if stored[row].tobytes() != records[row].tobytes():
            problems.append(f"{files[row]}: records differ after the store round trip")
            continue
        want = np.take_along_axis(classes[row], order[row], -1)
        got = targets.classes[row]
        if not (np.sort(want, -1) == np.sort(got, -1)).all():
            problems.append(f"{files[row]}: class ids differ after the store round trip")
        sorted_probs = np.take_along_axis(probs[row], order[row], -1)
        if np.abs(targets.probs[row] - sorted_probs).max() > _PROB_SLACK:
            problems.append(f"{files[row]}: probabilities differ after the store round trip")
    return problems


def _convert(block: int) -> _BlockResult:
    job: _Job = _WORKER["job"]
    writer: StoreWriter = _WORKER["writer"]
    source = job.source
    samples = np.arange(writer.block_range(block).start, writer.block_range(block).stop)
    files = [str(source.files[i]) for i in samples]
    views = _Views(len(samples), source.slots, max(source.recipe.ra_num_ops, 1), job.k, files)
    for row, index in enumerate(samples):
        _parse_file(views, row, int(index), source.files[index], source)
    records = convert_block(views, samples, writer.layout.image_hw, source.recipe,
                            _WORKER["tables"])
    a = views.arrays
    if not views.problems:
        try:
            writer.write_block(block, records, a["classes"], a["probs"])
        except (StoreError, RecordError) as exc:
            views.problems.append(f"block {block} ({files[0]} .. {files[-1]}): {exc}")
        else:
            views.problems += _verify(writer, block, records, a["classes"], a["probs"], files)
    count = len(samples)
    return _BlockResult(block, count, count * source.slots, count * source.slots * job.k,
                        tuple(views.problems))


# ----------------------------------------------------------------------------- the import


@dataclass(frozen=True)
class ImportConfig:
    """One `dalidr import-mldr` run."""

    # The paper's reinforcement directory ({index}.pth.tar files and config.pth.tar).
    source: Path
    # The dataset the reinforcements were made for (ImageFolder root, or --file-list's root).
    images: Path
    # Store to write (created, or resumed if it exists).
    out: str
    # '<path> <label>' lines in the paper's index order, instead of ImageFolder order.
    file_list: Path | None = None
    # Processes converting blocks (1: in this process).
    workers: int = max(1, os.cpu_count() or 1)
    # Samples per store block (the unit of parallelism and of resuming).
    block_size: int = 1024
    # Slots per store chunk (store.config).
    slot_group: int = 5
    # Label space; None: the source config's num_classes, else the dataset's class count.
    num_classes: int | None = None
    # Seed of the store's epoch plans.
    seed: int = 0
    # Show a progress bar.
    progress: bool = True


@dataclass(frozen=True)
class ImportReport:
    """What an import did and what the store now holds."""

    samples: int
    slots: int
    k: int
    # Views and probability entries converted and verified in this run.
    views_converted: int
    probabilities_converted: int
    blocks_written: int
    blocks_committed: int
    num_blocks: int
    seconds: float
    source_bytes: int
    store_bytes: int | None
    recipe: Recipe
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _first_k(source: MldrSource) -> int:
    content = load_file(source.files[0])
    try:
        probs = content[1][0]["prob"]
        k = len(probs[0])
    except (TypeError, KeyError, IndexError) as exc:
        raise DatasetError(f"{source.files[0]}: no (probabilities, class ids) in its first "
                           "view") from exc
    if source.topk is not None and source.topk != k:
        raise DatasetError(f"{source.files[0]}: {k} probabilities per view; the config's "
                           f"reinforce.topk is {source.topk}")
    return k


def _store_bytes(url: str) -> int | None:
    path = Path(url)
    if not path.is_dir():
        return None
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _open_store(config: ImportConfig, store_config: StoreConfig, listing: Any) -> StoreWriter:
    from store.location import locate

    if not locate(config.out, read_only=False).exists("zarr.json"):
        manifest = scan_manifest(listing.root, listing.paths, listing.labels)
        return create_store(config.out, manifest, store_config)
    writer = StoreWriter(config.out)
    if writer.config != store_config:
        raise StoreError(f"{config.out} holds a store made with other options "
                         f"({writer.config}); this import asks for {store_config}: use the "
                         "original options or another --out")
    manifest = writer.layout.manifest
    if manifest.paths != listing.paths or list(manifest.labels) != list(listing.labels):
        raise DatasetError(f"{config.out} was made for another listing of images than "
                           f"{listing.root}: use the original --images or another --out")
    return writer


def _run_blocks(job: _Job, blocks: list[int], workers: int, bar: Any) -> list[_BlockResult]:
    results: list[_BlockResult] = []

    def done(result: _BlockResult) -> None:
        results.append(result)
        bar.update(result.samples)

    if workers <= 1 or len(blocks) <= 1:
        _init_worker(job)
        for block in blocks:
            done(_convert(block))
        return results
    with ProcessPoolExecutor(min(workers, len(blocks)), mp_context=get_context("spawn"),
                             initializer=_init_worker, initargs=(job,)) as pool:
        pending: set[Future[_BlockResult]] = {pool.submit(_convert, b) for b in blocks}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                done(future.result())
    return results


def import_mldr(config: ImportConfig) -> ImportReport:
    """Convert a published reinforcement directory into a dalidr store (resumable)."""
    from tqdm import tqdm

    start = time.perf_counter()
    check_op_names()
    listing = dataset_listing(config.images, config.file_list)
    source = read_source(config.source, len(listing))
    k = _first_k(source)
    num_classes = config.num_classes or source.num_classes or len(listing.classes)
    store_config = StoreConfig(recipe=source.recipe, teacher=source.teacher, seed=config.seed,
                               slots=source.slots, k=k, num_classes=num_classes,
                               block_size=config.block_size,
                               slot_group=min(config.slot_group, source.slots))
    writer = _open_store(config, store_config, listing)
    blocks = writer.pending()
    done_samples = len(listing) - sum(len(writer.block_range(b)) for b in blocks)
    job = _Job(config.out, source, k)
    with tqdm(total=len(listing), initial=done_samples, unit="sample", desc="import-mldr",
              disable=not config.progress, dynamic_ncols=True) as bar:
        results = _run_blocks(job, blocks, config.workers, bar)
    problems = [p for r in results for p in r.problems]
    if problems:
        shown = "\n  ".join(problems[:_MAX_PROBLEMS])
        more = f"\n  ... and {len(problems) - _MAX_PROBLEMS} more" if len(
            problems) > _MAX_PROBLEMS else ""
        failed = sum(1 for r in results if r.problems)
        raise DatasetError(f"{len(problems)} problem(s) in {failed} block(s) of {source.root} "
                           f"(other blocks are committed; fix these files and rerun to "
                           f"resume):\n  {shown}{more}")
    ok = [r for r in results if not r.problems]
    committed = int(writer.committed().sum())
    return ImportReport(
        samples=len(listing), slots=source.slots, k=k,
        views_converted=sum(r.views for r in ok),
        probabilities_converted=sum(r.probabilities for r in ok),
        blocks_written=len(ok), blocks_committed=committed, num_blocks=writer.num_blocks,
        seconds=time.perf_counter() - start, source_bytes=source.source_bytes,
        store_bytes=_store_bytes(config.out), recipe=source.recipe, mean=source.mean,
        std=source.std)


# ----------------------------------------------------------------------------- command line


def _run(args: argparse.Namespace) -> int:
    config = ImportConfig(
        source=Path(args.rdata_dir), images=Path(args.images), out=args.out,
        file_list=Path(args.file_list) if args.file_list else None, workers=args.workers,
        block_size=args.block_size, slot_group=args.slot_group, num_classes=args.num_classes,
        seed=args.seed, progress=not args.no_progress)
    report = import_mldr(config)
    ratio = report.source_bytes / report.store_bytes if report.store_bytes else math.nan
    print(f"imported {report.samples} samples x {report.slots} views x top-{report.k} "
          f"({report.views_converted} views, {report.probabilities_converted} probabilities "
          f"converted and verified in this run) in {report.seconds:.1f} s; "
          f"{report.blocks_committed}/{report.num_blocks} blocks committed")
    if report.store_bytes:
        print(f"source {report.source_bytes / 1e6:.1f} MB -> store "
              f"{report.store_bytes / 1e6:.1f} MB ({ratio:.1f}x smaller)")
    print(f"recipe {report.recipe.variant.value} at {report.recipe.output_size} px; train with "
          f"LoaderConfig(mean={report.mean}, std={report.std})")
    return 0


def register(subparsers: Any) -> None:
    """Add `dalidr import-mldr` to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "import-mldr", help="import the paper's published reinforcements (apple/ml-dr) safely",
        description="Convert a directory of the paper's {index}.pth.tar reinforcement files "
                    "(ImageNet+, ...) into a dalidr store, loading every file with a "
                    "restricted unpickler. Rerun the same command to resume.")
    parser.add_argument("rdata_dir", help="directory of {index}.pth.tar files and "
                        "config.pth.tar (the extracted reinforced_data.tar.gz)")
    parser.add_argument("--images", required=True, help="the dataset the reinforcements "
                        "index: ImageFolder root (torchvision order) or --file-list's root")
    parser.add_argument("--out", required=True, help="store path or URL")
    parser.add_argument("--file-list", help="'<relative path> <label>' lines in the paper's "
                        "index order")
    parser.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1),
                        help="converting processes (default: all cores)")
    parser.add_argument("--block-size", type=int, default=1024, help="samples per store block")
    parser.add_argument("--slot-group", type=int, default=5, help="slots per store chunk")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="label space (default: the config's, else the dataset's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the epoch plans")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run)

