"""The ERM baseline loader: DALI's standard augmentation, or a recipe drawn afresh per epoch.

`PlainLoader` is built from `ReinforcedLoader`'s machinery (`dalidr/training/dali_loader.py`: same
file
reading, same feeding, same conversion to torch): DALI's standard
`decoders.image_random_crop` + resize + flip + normalise and one-hot labels, or resize + centre
crop for evaluation. Comparing train
wall-clock between the two therefore compares only what differs: replaying stored parameters.
Given a `recipe`, its training transform is that recipe drawn afresh every epoch (`draw_records`
from (seed, sample, epoch)) and replayed by the same graph: strong augmentation (RandAugment,
erasing, MixUp/CutMix with two-hot labels) for training teachers and online distillation, with
exactly the augmentation distribution a store of that recipe holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali.data_node import DataNode

from dalidr.augment.recipe import Recipe
from dalidr.augment.records import COORD_SCALE, draw_records
from dalidr.augment.replay import DECODE_ARGS, Output, ReplaySpec, replay_graph
from dalidr.data.dataset import list_dataset
from dalidr.data.image_sizes import ImageSizes
from dalidr.data.shards import DataSpec
from dalidr.errors import DatasetError, OptionError
from dalidr.training.dali_loader import _DaliLoader, _Epoch, _one_hot_topk
from dalidr.training.loader_config import SHARDS, Augment, LoaderConfig
from store.plan import PlanSpec, plan_epoch, rank_length

__all__ = ["PlainLoader"]

_STREAM_ONLINE = 0x5EED_0002  # seeds a plain loader's per-epoch recipe draws
_EVAL_CROP = 0.875  # evaluation: resize the shorter side to size / 0.875, centre-crop size


class PlainLoader(_DaliLoader):
    """ERM batches: DALI's standard augmentation (or evaluation transform), one-hot labels.

    `num_classes` (the model's; at least the dataset's) defaults to the dataset's class count.
    `recipe` (training only): augment with that recipe drawn afresh each epoch instead, at
    `size`; a mixing recipe's targets are two-hot (the sample's and the partner's label)."""

    def __init__(self, data: DataSpec, config: LoaderConfig, *, size: int = 224,
                 augment: Augment = Augment.TRAIN, num_classes: int | None = None,
                 rank: int | None = None, world: int | None = None,
                 file_list: str | Path | None = None, recipe: Recipe | None = None) -> None:
        if not isinstance(augment, Augment):
            raise OptionError.choice("augment", augment, [a.value for a in Augment])
        if size < 16:
            raise OptionError(f"loader option 'size' is {size}; valid: >= 16")
        if recipe is not None and augment is not Augment.TRAIN:
            raise OptionError("loader option 'recipe' is for training; evaluation has no "
                              "random augmentation")
        listing = list_dataset(data, file_list)
        classes = max(len(listing.classes), int(max(listing.labels)) + 1)
        if num_classes is not None and num_classes < classes:
            raise DatasetError(f"the model predicts {num_classes} classes but dataset "
                               f"{listing.root} has labels up to {classes - 1}")
        super().__init__(listing.source, listing.labels, config, num_classes or classes, rank,
                         world)
        self.listing = listing
        self.size, self.augment = size, augment
        self.recipe = None if recipe is None else recipe.replace(output_size=size,
                                                                 teacher_size=None)
        self.has_partner = self.recipe is not None and self.recipe.has_mix
        # Image sizes for the fresh crops: read from headers per batch, cached beside the data.
        self.image_hw = None if recipe is None else ImageSizes(listing)
        self._spec = PlanSpec(len(listing), 1, 1, 64, config.seed, SHARDS[config.last_batch])
        self._pipe = self._build()

    def _served(self) -> int:
        return len(self.listing)

    def _epoch_length(self, start: int = 0) -> int:
        if self.augment is Augment.EVAL:
            return len(range(start + self.rank, len(self.listing), self.world))
        return rank_length(len(self.listing), start, self.world, self._spec.uneven)

    def _epoch_data(self, epoch: int, start: int) -> _Epoch:
        if self.augment is Augment.EVAL:  # the listing's order, each sample once
            samples = np.arange(start + self.rank, len(self.listing), self.world, dtype=np.int64)
        else:
            samples = plan_epoch(self._spec, epoch, self.rank, self.world, start=start).samples
        if self.recipe is None:
            classes, probs = _one_hot_topk(self.labels[samples], 1, self.num_classes)
            return _Epoch(samples, None, classes, probs)
        assert self.image_hw is not None
        records = _DrawnRecords(self.recipe, self.config.seed + _STREAM_ONLINE, epoch, samples,
                                self.image_hw)
        if not self.recipe.has_mix:
            classes, probs = _one_hot_topk(self.labels[samples], 1, self.num_classes)
            return _Epoch(samples, records, classes, probs)
        # Two-hot: lambda on the sample's label, the rest on the partner's (summed when equal).
        own = self.labels[samples]
        other = self.labels[records.partners]
        lam = records.lam.astype(np.float32) / COORD_SCALE
        classes, probs = _one_hot_topk(own, 2, self.num_classes)
        same = other == own
        classes[~same, 1] = other[~same]
        probs[:, 0] = np.where(same, 1.0, lam)
        probs[:, 1] = np.where(same, 0.0, 1.0 - lam)
        return _Epoch(samples, records, classes, probs)

    def _fields(self) -> tuple[str, ...]:
        return () if self.recipe is None else ReplaySpec(self.recipe).fields

    def _crop(self) -> int | None:
        return self.size if self.augment is Augment.EVAL else None

    def _images(self, jpegs: DataNode, partner_jpegs: DataNode | None,
                inputs: dict[str, DataNode], device: str) -> DataNode:
        if self.recipe is not None:
            return replay_graph(jpegs, partner_jpegs, inputs,
                                ReplaySpec(self.recipe, output=Output.UINT8_HWC), device)
        decode = "mixed" if device == "gpu" else "cpu"
        if self.augment is Augment.EVAL:
            images = fn.decoders.image(jpegs, device=decode, **DECODE_ARGS)
            # fn.resize's stub also allows its save_attrs form (two outputs); this is one.
            return cast(DataNode, fn.resize(
                images, resize_shorter=round(self.size / _EVAL_CROP), antialias=True,
                interp_type=types.DALIInterpType.INTERP_LINEAR))
        images = fn.decoders.image_random_crop(
            jpegs, device=decode, **DECODE_ARGS, random_area=[0.08, 1.0],
            random_aspect_ratio=[3.0 / 4.0, 4.0 / 3.0], num_attempts=10)
        images = cast(DataNode, fn.resize(images, size=[self.size, self.size], antialias=True,
                                          interp_type=types.DALIInterpType.INTERP_LINEAR))
        return fn.flip(images, horizontal=fn.random.coin_flip(probability=0.5))


class _DrawnRecords:
    """An epoch's fresh records, drawn per batch (`records[part]`), so image sizes are read
    only for the samples (and partners) of the batches served; a mix's partners and lambdas
    do not depend on sizes and are drawn for the whole epoch up front (for the targets)."""

    def __init__(self, recipe: Recipe, seed: int, epoch: int, samples: np.ndarray,
                 sizes: ImageSizes) -> None:
        self.recipe, self.seed, self.epoch, self.samples = recipe, seed, epoch, samples
        self.sizes = sizes
        self.partners = np.zeros(0, dtype=np.int64)
        self.lam = np.zeros(0, dtype=np.uint16)
        if recipe.has_mix:
            coarse = draw_records(recipe, seed, samples, np.array([epoch]),
                                  sizes.placeholder())[:, 0]
            self.partners = coarse["partner"].astype(np.int64)
            self.lam = coarse["lam"]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, part: slice) -> np.ndarray:
        samples = self.samples[part]
        needed = samples if not self.recipe.has_mix else np.concatenate(
            [samples, self.partners[part]])
        return draw_records(self.recipe, self.seed, samples, np.array([self.epoch]),
                            self.sizes.full(needed))[:, 0]
