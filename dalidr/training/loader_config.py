"""The loaders' configuration: what a batch holds, where it lives, and how epochs are cut.

One frozen `LoaderConfig` is passed down to `ReinforcedLoader` and `PlainLoader`
(`dalidr.training.loader`); choices are Enums. `distributed_rank_world` (`dalidr.ranks`, the one the
teacher pass uses) gives the DDP rank and world: explicit arguments, else `torch.distributed` when
it is initialised, else torchrun's RANK / WORLD_SIZE, else (0, 1). `SHARDS` says how each
`LastBatch` policy cuts a dataset the world size does not divide.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch

from dalidr.augment.replay import IMAGENET_MEAN, IMAGENET_STD
from dalidr.errors import OptionError
from dalidr.ranks import local_cuda_index
from dalidr.ranks import rank_and_world as distributed_rank_world
from kernels.kl_loss import Densify
from store.curriculum import Curriculum
from store.plan import UnevenShards

__all__ = [
    "Targets",
    "LastBatch",
    "Augment",
    "LoaderConfig",
    "SparseTargets",
    "SHARDS",
    "distributed_rank_world",
    "local_cuda_index",
]


class Targets(enum.Enum):
    """What a loader yields as targets."""

    DENSE = "dense"  # [B, C] float32 soft labels
    SPARSE = "sparse"  # SparseTargets(indices [B, k] int64, probs [B, k] float32)


class LastBatch(enum.Enum):
    """What happens to the last batch of an epoch when it is short."""

    DROP = "drop"  # every batch is full (training)
    PARTIAL = "partial"  # the short batch is served (evaluation)


# How shards are cut when the world size does not divide the samples, as DistributedSampler's
# drop_last does: DROP gives every rank floor(N / world) distinct samples (the rest sit out the
# epoch, no duplicates); PARTIAL pads every rank to ceil(N / world) by repeating a few samples.
SHARDS = {LastBatch.DROP: UnevenShards.DROP, LastBatch.PARTIAL: UnevenShards.PAD}


class Augment(enum.Enum):
    """The plain loader's image transform."""

    TRAIN = "train"  # random resized crop (0.08-1 area, 3/4-4/3 ratio), flip, normalise
    EVAL = "eval"  # resize the shorter side to size / 0.875, centre crop, normalise


@dataclass(frozen=True)
class LoaderConfig:
    """Options shared by both loaders."""

    # Samples per batch, per rank.
    batch_size: int = 256
    # Probability that a sample is served from the store (the paper's p); otherwise it is the
    # original image with a random resized crop and flip and a one-hot label.
    p: float = 1.0
    # How a stored top-k becomes a dense target (dense targets only).
    densify: Densify = Densify.SMOOTH
    # Dense [B, C] targets or sparse (indices, probs).
    targets: Targets = Targets.DENSE
    # Images in torch.channels_last memory format (NHWC strides, [B, 3, H, W] shape).
    channels_last: bool = False
    # Short last batch of an epoch: dropped or served.
    last_batch: LastBatch = LastBatch.DROP
    # None: DALI CPU mode and CPU tensors; an int: that CUDA device (decode and ops on it).
    # Under torchrun, `local_cuda_index()` is the GPU of this process's LOCAL_RANK.
    device_id: int | None = None
    # DALI worker threads, file-reading threads, and batches of files read ahead.
    num_threads: int = 2
    read_threads: int = 4
    read_ahead: int = 4
    # DALI iterations kept in flight.
    prefetch_depth: int = 2
    # Seeds the p-coin, the original samples' crops, the ERM plan and DALI's own draws.
    seed: int = 0
    # Reinforced loader only: which stored view each sample trains on, easy views first
    # (`store.curriculum`; needs the store's difficulty, `dalidr difficulty STORE`). None: the
    # plan's uniform draw, as the paper trains.
    curriculum: Curriculum | None = None
    # Normalisation, in [0, 1] units.
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        check = functools.partial(OptionError.unless, kind="loader option")

        check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        check(0.0 <= self.p <= 1.0, "p", self.p, "a probability in [0, 1]")
        for name, enum_type in (("densify", Densify), ("targets", Targets),
                                ("last_batch", LastBatch)):
            value = getattr(self, name)
            if not isinstance(value, enum_type):
                raise OptionError.choice(name, value, [v.value for v in enum_type])
        check(self.device_id is None or self.device_id >= 0, "device_id", self.device_id,
              "None (CPU) or a CUDA device index")
        for name in ("num_threads", "read_threads", "read_ahead", "prefetch_depth"):
            check(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        check(isinstance(self.seed, int) and not isinstance(self.seed, bool)
              and 0 <= self.seed < 2**31, "seed", self.seed, "an integer in 0..2**31 - 1")
        check(self.curriculum is None or isinstance(self.curriculum, Curriculum), "curriculum",
              self.curriculum, "None or a store.curriculum.Curriculum")

    @property
    def device(self) -> torch.device:
        return torch.device("cpu") if self.device_id is None else torch.device("cuda",
                                                                               self.device_id)


class SparseTargets(NamedTuple):
    """Top-k targets of a batch, for `dalidr.training.losses` (no [B, C] tensor is built)."""

    indices: torch.Tensor  # [B, k] int64 class indices
    probs: torch.Tensor  # [B, k] float32, as stored (one-hot rows: 1 then zeros)
