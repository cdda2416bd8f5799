"""The machinery both DALI loaders share: epochs, reading ahead, feeding, in-flight batches.

A loader subclass says what an epoch holds (`_epoch_data`: samples, records, top-k targets,
handed out a batch at a time by an `EpochSource`, whole in memory or read in pieces), how long
it is, and which DALI graph turns a batch of JPEG bytes (and record fields) into uint8 images
(`_images`); this base reads the files with a thread pool a few batches ahead (only batches
whose metadata is ready, so the first batch never waits for later ones' pieces), feeds the
pipeline by name, normalises, and converts the outputs to torch.

Driving DALI. The thin iterator over the pipeline (rather than `DALIGenericIterator`, whose
external-source epochs cannot seek to a mid-epoch step) feeds batches by name and keeps
`prefetch_depth` iterations in flight, continuing into the next epoch so the pipeline never
drains at an epoch boundary; a jump (resume, `set_epoch` to another epoch) discards what is in
flight. Outputs become torch tensors with the DALI PyTorch plugin's `feed_ndarray`, on the CPU
(DALI CPU mode, `device_id=None`) or on the GPU (`mixed` decode) from the same code.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.data_node import DataNode
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.plugin.pytorch import feed_ndarray

from dalidr.augment.replay import check_jpeg
from dalidr.data.data_source import DataSource
from dalidr.errors import DatasetError, ImageError, OptionError
from dalidr.training.loader_config import (
    LastBatch,
    LoaderConfig,
    SparseTargets,
    Targets,
    distributed_rank_world,
)
from kernels.kl_loss import densify_topk

# package-internal: `dalidr.training.loader` and `dalidr.training.plain_loader` use it
__all__: list[str] = []


class Labels(Protocol):
    """Labels indexed by sample: `labels[samples]` is an int array (a numpy array, or a
    store's manifest column read per block, `store.manifest_view.LazyColumn`)."""

    def __len__(self) -> int: ...

    def __getitem__(self, samples: Any) -> Any: ...


class RecordSource(Protocol):
    """An epoch's records made per batch: `source[a:b]` is the records of samples a..b-1."""

    def __len__(self) -> int: ...

    def __getitem__(self, part: slice) -> np.ndarray: ...


@dataclass(frozen=True, eq=False)
class _Part:
    """Consecutive samples of one rank's epoch (a batch), everything but the JPEG bytes."""

    samples: np.ndarray  # [n] int64
    records: np.ndarray | None  # [n] records, or None (no recipe)
    classes: np.ndarray  # [n, k] int32 (as stored) or int64
    probs: np.ndarray  # [n, k] float32


class EpochSource(Protocol):
    """One rank's epoch from its start position, handed out a batch at a time: whole in
    memory (`_Epoch`), or read in pieces in the background (the reinforced loader's)."""

    def ready(self, lo: int) -> bool:
        """Whether `part(lo, ...)` would return without waiting."""
        ...

    def part(self, lo: int, hi: int) -> _Part:
        """Samples lo..hi-1 of the epoch (a batch: never across the source's pieces)."""
        ...


@dataclass(frozen=True, eq=False)
class _Epoch:
    """One rank's epoch, everything but the JPEG bytes, in training order, in memory."""

    samples: np.ndarray  # [n] int64
    # [n] records, or something sliced into them per batch (`records[part]`), or None.
    records: np.ndarray | RecordSource | None
    classes: np.ndarray  # [n, k] int32 (as stored) or int64
    probs: np.ndarray  # [n, k] float32

    def ready(self, lo: int) -> bool:
        return True

    def part(self, lo: int, hi: int) -> _Part:
        records = None if self.records is None else self.records[lo:hi]
        return _Part(self.samples[lo:hi], records, self.classes[lo:hi], self.probs[lo:hi])


@dataclass(eq=False)
class _Batch:
    epoch: int
    start: int  # the global position the epoch's plan started at
    step: int
    samples: np.ndarray
    fields: dict[str, np.ndarray]
    classes: np.ndarray
    probs: np.ndarray
    jpegs: list[Future[list[np.ndarray]]]
    partner_jpegs: list[Future[list[np.ndarray]]] | None


def _read_samples(source: DataSource, samples: np.ndarray) -> list[np.ndarray]:
    """The encoded bytes of `samples`, each checked to decode (named by file, or shard and
    member, when not)."""
    out = source.read(samples)
    for i, data in zip(samples.tolist(), out, strict=True):
        check_jpeg(data, source.describe(i))
    return out


def _one_hot_topk(labels: np.ndarray, k: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One-hot labels in top-k form: the label with probability 1, then k - 1 other classes
    with probability 0 (distinct indices, so dense and sparse targets agree)."""
    classes = (labels[:, None] + np.arange(k)[None, :]) % num_classes
    probs = np.zeros((len(labels), k), dtype=np.float32)
    probs[:, 0] = 1.0
    return classes.astype(np.int64), probs


class _DaliLoader:
    """The machinery both loaders share: epochs, reading ahead, feeding, in-flight batches."""

    has_partner = False

    def __init__(self, source: DataSource, labels: Labels, config: LoaderConfig,
                 num_classes: int, rank: int | None, world: int | None) -> None:
        if not isinstance(config, LoaderConfig):
            raise OptionError(f"config must be a LoaderConfig, not {type(config).__name__}")
        self.config, self.num_classes = config, num_classes
        self.rank, self.world = distributed_rank_world(rank, world)
        # Sample i's bytes and label (`labels[samples]`: an array, or a store's manifest
        # column read per block).
        self.source, self.labels = source, labels
        # The epoch served next, its global start position (0 unless resumed into it by
        # `load_state_dict`) and the step (batch of this rank) from that start.
        self.epoch, self.start, self.step = 0, 0, 0
        # Dataset indices of the batch last yielded (for checks and logging).
        self.served_samples = np.zeros(0, dtype=np.int64)
        self._pool = ThreadPoolExecutor(config.read_threads, thread_name_prefix="dalidr-read")
        self._pipe: Pipeline | None = None
        self._scheduled = False
        # The next batch to read: (epoch, its start position, step); None before a seek.
        self._cursor: tuple[int, int, int] | None = None
        self._reading: deque[_Batch] = deque()
        self._in_flight: deque[_Batch] = deque()
        self._epochs: dict[tuple[int, int], EpochSource] = {}

    # ----------------------------------------------------------- what subclasses provide

    def _epoch_data(self, epoch: int, start: int) -> EpochSource:
        """This rank's part of `epoch` from global position `start` (`store.plan`)."""
        raise NotImplementedError

    def _epoch_length(self, start: int = 0) -> int:
        """Samples this rank serves in an epoch from global position `start` on."""
        raise NotImplementedError

    def _served(self) -> int:
        """Samples an epoch serves across all ranks (global positions 0..served)."""
        raise NotImplementedError

    def _jumped(self) -> None:
        """The next epoch or start position changed (`set_epoch`, `load_state_dict`)."""

    def _images(self, jpegs: DataNode, partner_jpegs: DataNode | None,
                inputs: dict[str, DataNode], device: str) -> DataNode:
        """The uint8 HWC images of a batch (before normalisation)."""
        raise NotImplementedError

    def _fields(self) -> tuple[str, ...]:
        return ()

    def _crop(self) -> int | None:
        """Centre crop applied by the normalisation, or None."""
        return None

    # ----------------------------------------------------------- the public iterator API

    def __len__(self) -> int:
        """Batches of the epoch served next, counted from its start position: the whole epoch's
        after `set_epoch` or a resume on a global batch boundary (`step` then says where it
        stands), the remaining ones after a resume elsewhere (`step` counts from there)."""
        return self._batch_count(self.start)

    def _batch_count(self, start: int) -> int:
        n, b = self._epoch_length(start), self.config.batch_size
        return n // b if self.config.last_batch is LastBatch.DROP else -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        """Iterate `epoch` next, from its first batch."""
        if epoch < 0:
            raise OptionError(f"epoch is {epoch}; must be >= 0")
        self.epoch, self.start, self.step = int(epoch), 0, 0
        self._jumped()

    def state_dict(self) -> dict[str, int]:
        """Where iteration stands: the epoch and its global position (samples every rank
        together has been handed so far). The same on every rank of a synchronous job, so any
        rank's state resumes the whole job, at this world size or another (`store.plan`).
        `step` and `world` say the same for this rank and world, as a check."""
        served = self.start + self.step * self.world * self.config.batch_size
        return {"epoch": self.epoch, "position": min(served, self._served()),
                "step": self.step, "world": self.world, "served": self._served()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume where a saved state stands: the samples that follow are the rest of the
        epoch's global order, cut among this loader's ranks (any world size). A state without
        `position` (an older one) is an (epoch, step) of this world size."""
        try:
            epoch = int(state["epoch"])
            position = (int(state["position"]) if "position" in state
                        else int(state["step"]) * self.world * self.config.batch_size)
        except (KeyError, TypeError, ValueError) as exc:
            raise OptionError(f"loader state {state!r} lacks an integer 'epoch' and 'position' "
                              "(or 'step'); pass what state_dict() returned") from exc
        if "served" in state and int(state["served"]) != self._served():
            raise OptionError(f"loader state was saved by a loader whose epochs serve "
                              f"{int(state['served'])} samples; this one serves "
                              f"{self._served()} (another dataset, or other skipped samples): "
                              "its positions do not carry over")
        if epoch < 0 or not 0 <= position <= self._served():
            raise OptionError(f"loader state epoch {epoch}, position {position}: need epoch >= 0"
                              f" and 0 <= position <= {self._served()} (the samples an epoch "
                              "serves); was the state saved by a loader of another dataset?")
        # On a global batch boundary of this world (always, at the same world size) the epoch
        # is planned from its start and entered at a step: the same samples, the same steps.
        whole, rest = divmod(position, self.world * self.config.batch_size)
        self.epoch, self.start, self.step = (epoch, 0, whole) if rest == 0 else (epoch, position, 0)
        self._jumped()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        """The batches of `self.epoch` from `self.step` on; afterwards the next epoch is set."""
        epoch, total = self.epoch, len(self)
        if self.step < total:
            self._seek(epoch, self.start, self.step)
        while self.step < total:
            images = self._next_images()
            batch = self._in_flight.popleft()
            self._top_up()
            targets = self._targets(batch)
            self.served_samples = batch.samples
            self.step += 1
            yield images, targets
        self.epoch, self.start, self.step = epoch + 1, 0, 0

    def close(self) -> None:
        """Stop the reading threads (the loader cannot be iterated afterwards)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> _DaliLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------- epochs and batches

    def _epoch(self, epoch: int, start: int = 0) -> EpochSource:
        if (epoch, start) not in self._epochs:
            # The batch stream only moves on (a jump starts it afresh), so the epoch it leaves
            # is done with: only the one it is in is kept (with its current piece, if any).
            self._epochs.clear()
            self._epochs[epoch, start] = self._epoch_data(epoch, start)
        return self._epochs[epoch, start]

    def _moved_on(self, epoch: int, start: int, step: int) -> tuple[int, int, int]:
        """(epoch, start, step) itself, or the first batch after it when its epoch has no
        batch left (later epochs from their beginning)."""
        while step >= self._batch_count(start):
            self._check_not_empty()  # an empty epoch would make this loop spin forever
            epoch, start, step = epoch + 1, 0, 0
        return epoch, start, step

    def _cursor_ready(self) -> bool:
        """Whether the batch at the cursor can be made without waiting for its metadata."""
        assert self._cursor is not None
        epoch, start, step = self._cursor
        return self._epoch(epoch, start).ready(step * self.config.batch_size)

    def _next_batch(self) -> _Batch:
        """The batch at the cursor, with its files being read; the cursor moves on."""
        assert self._cursor is not None
        epoch, start, step = self._cursor
        lo = step * self.config.batch_size
        hi = min(lo + self.config.batch_size, self._epoch_length(start))
        part = self._epoch(epoch, start).part(lo, hi)
        fields: dict[str, np.ndarray] = {}
        partners = None
        if part.records is not None:
            fields = {f: np.ascontiguousarray(part.records[f]) for f in self._fields()}
            if self.has_partner:
                partners = part.records["partner"].astype(np.int64)
        self._cursor = self._moved_on(epoch, start, step + 1)
        return _Batch(epoch, start, step, part.samples, fields, part.classes, part.probs,
                      self._read(part.samples),
                      self._read(partners) if partners is not None else None)

    def _read(self, samples: np.ndarray) -> list[Future[list[np.ndarray]]]:
        chunks = np.array_split(samples, min(self.config.read_threads, len(samples)))
        return [self._pool.submit(_read_samples, self.source, chunk) for chunk in chunks]

    def _next_read(self) -> _Batch:
        """The next batch to feed. Up to `read_ahead` batches have their files read ahead,
        but only those whose metadata is ready: waiting for a later batch's (its epoch's next
        piece) must not hold up this one."""
        while len(self._reading) < self.config.read_ahead and (
                not self._reading or self._cursor_ready()):
            self._reading.append(self._next_batch())
        return self._reading.popleft()

    # ----------------------------------------------------------- the DALI pipeline

    def _check_not_empty(self) -> None:
        """OptionError, before any work, if an epoch would serve no batch (iterating it would
        otherwise never end: the batch stream has nothing to yield)."""
        n, size = self._epoch_length(), self.config.batch_size
        if self._batch_count(0) == 0:
            raise OptionError(
                f"loader option 'batch_size' is {size} but an epoch of rank {self.rank} of "
                f"{self.world} has {n} samples, so last_batch=DROP serves no batch; valid: "
                f"batch_size <= {n}, or last_batch=LastBatch.PARTIAL")

    def _build(self, check: bool = True) -> Pipeline:
        if check:  # a subclass that learns its epoch's length meanwhile checks it after
            self._check_not_empty()
        cfg = self.config
        device = "cpu" if cfg.device_id is None else "gpu"
        channels_last, crop = cfg.channels_last, self._crop()

        @pipeline_def(enable_conditionals=True)
        def _pipeline() -> DataNode:
            jpegs = fn.external_source(name="jpegs", dtype=types.DALIDataType.UINT8, no_copy=True)
            partner_jpegs = None
            if self.has_partner:
                partner_jpegs = fn.external_source(name="partner_jpegs",
                                                   dtype=types.DALIDataType.UINT8,
                                                   no_copy=True)
            inputs = {f: fn.external_source(name=f, no_copy=False) for f in self._fields()}
            images = self._images(jpegs, partner_jpegs, inputs, device)
            extra: dict[str, Any] = {"crop": (crop, crop)} if crop else {}
            return fn.crop_mirror_normalize(
                images, dtype=types.DALIDataType.FLOAT,
                output_layout="HWC" if channels_last else "CHW",
                mean=[255.0 * m for m in cfg.mean], std=[255.0 * s for s in cfg.std], **extra)

        pipe = _pipeline(batch_size=cfg.batch_size, num_threads=cfg.num_threads,
                         device_id=cfg.device_id, prefetch_queue_depth=cfg.prefetch_depth,
                         seed=cfg.seed * 7919 + self.rank, exec_dynamic=True)
        pipe.build()
        return pipe

    def _feed(self, batch: _Batch) -> None:
        assert self._pipe is not None
        jpegs = [data for future in batch.jpegs for data in future.result()]
        self._pipe.feed_input("jpegs", jpegs)
        if self.has_partner:
            assert batch.partner_jpegs is not None
            partners = [data for future in batch.partner_jpegs for data in future.result()]
            self._pipe.feed_input("partner_jpegs", partners)
        for name, values in batch.fields.items():
            self._pipe.feed_input(name, values)
        self._in_flight.append(batch)

    def _top_up(self) -> None:
        """Keep `prefetch_depth` iterations in flight (the first schedule_run runs them all).
        Past the first, a batch whose metadata is not ready yet (its piece is still being
        read) is fed on a later call, unless the pipeline would otherwise run dry: a batch
        that is ready is never held back by the one after it."""
        if self._pipe is None:
            self._pipe = self._build()
        depth = self.config.prefetch_depth
        if not self._scheduled:
            while len(self._in_flight) < depth:
                self._feed(self._next_read())
            self._pipe.schedule_run()
            self._scheduled = True
            return
        while len(self._in_flight) < depth and (
                not self._in_flight or self._reading or self._cursor_ready()):
            self._feed(self._next_read())
            self._pipe.schedule_run()

    def _seek(self, epoch: int, start: int, step: int) -> None:
        """Make (epoch, start, step) the next batch out of the pipeline, dropping what is not."""
        head = self._in_flight[0] if self._in_flight else (
            self._reading[0] if self._reading else None)
        if head is not None and (head.epoch, head.start, head.step) == (epoch, start, step):
            return
        while self._in_flight:  # discard iterations already running
            assert self._pipe is not None
            self._pipe.outputs()
            self._in_flight.popleft()
        for batch in self._reading:
            for future in batch.jpegs + (batch.partner_jpegs or []):
                future.cancel()
        self._reading.clear()
        self._cursor = self._moved_on(epoch, start, step)
        self._top_up()

    def _next_images(self) -> torch.Tensor:
        assert self._pipe is not None
        batch = self._in_flight[0]
        try:
            (images,) = self._pipe.outputs()
        except RuntimeError as exc:
            raise ImageError(f"DALI failed on epoch {batch.epoch}, step {batch.step} (samples "
                             f"{batch.samples[:8].tolist()}...): {exc}") from exc
        tensor = images.as_tensor()
        out = torch.empty(tensor.shape(), dtype=torch.float32, device=self.config.device)
        stream = torch.cuda.current_stream(out.device) if out.is_cuda else None
        feed_ndarray(tensor, out, cuda_stream=stream)
        return out.permute(0, 3, 1, 2) if self.config.channels_last else out

    def _targets(self, batch: _Batch) -> Any:
        cfg = self.config
        classes = torch.from_numpy(batch.classes.astype(np.int64))
        probs = torch.from_numpy(batch.probs)
        if cfg.targets is Targets.DENSE:
            dense = densify_topk(classes, probs, self.num_classes, cfg.densify)
            return self._to_device(dense)
        return SparseTargets(self._to_device(classes), self._to_device(probs))

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.config.device_id is None:
            return tensor
        return tensor.pin_memory().to(self.config.device, non_blocking=True)


def _check_classes(num_classes: int | None, have: int, what: str) -> None:
    if num_classes is not None and num_classes != have:
        raise DatasetError(f"the model predicts {num_classes} classes but {what} has {have}")
