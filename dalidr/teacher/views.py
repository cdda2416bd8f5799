"""The teacher pass's data path: blocks of (sample, slot) views, fed to DALI, decoded once.

`ViewSource` walks the store blocks a process owns, draws their records
(`dalidr.augment.records.draw_records`) and yields batches that span samples and slots but never
cross a block. Each batch carries the distinct JPEGs of its views once, with an index that
`view_pipeline` uses to fan the decoded images out to every view (`fn.permute_batch`), so an
image is decoded once for all of its slots in the batch (Dataset Reinforcement Sec. 2.2: many
views per image). Every member view is rendered by `dalidr.augment.replay.replay_graph`, the code
the
training loader runs. Images decode as PIL decodes them (`dalidr.augment.replay.DECODE_ARGS`: EXIF
orientation ignored), whatever their format. Unreadable files, and JPEGs whose image data
libjpeg reports missing (`dalidr.augment.image_formats.jpeg_damage`), are refused with their path,
or
with `--skip-bad` recorded so the store marks their views skipped (with a warning naming
each); JPEGs libjpeg merely complains about are served, with a warning naming the path.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from dalidr.augment.image_formats import jpeg_damage
from dalidr.augment.recipe import Recipe
from dalidr.augment.records import draw_records
from dalidr.data.data_source import DataSource
from dalidr.errors import DatasetError, ImageError
from dalidr.teacher.ensemble import TeacherView
from store.writer import StoreWriter

__all__ = ["BlockState", "ViewBatch", "ViewSource", "view_pipeline", "decodes"]


def _tiny_jpeg() -> np.ndarray:
    from PIL import Image

    from dalidr.data.sample_data import encode_jpeg

    return np.frombuffer(encode_jpeg(Image.new("RGB", (8, 8))), dtype=np.uint8)


@dataclass
class BlockState:
    """A block being labelled: its records, skip marks and the top-k filled in so far."""

    index: int
    records: np.ndarray  # [n, slots]
    skipped: np.ndarray  # [n, slots] bool
    classes: np.ndarray  # [n, slots, k]
    probs: np.ndarray
    remaining: int


@dataclass(frozen=True)
class ViewBatch:
    block: int
    positions: np.ndarray  # flat (sample-in-block * slots + slot) of each view
    unique: np.ndarray  # block-local rows of the decoded images


class ViewSource:
    """DALI's source: walks the blocks, yields batches of views, remembers what it yielded."""

    def __init__(self, writer: StoreWriter, blocks: list[int], data: DataSource,
                 batch_size: int, known_bad: set[int], skip_bad: bool) -> None:
        self.writer, self.config = writer, writer.config
        # Sample i's bytes (a store's manifest order: `DataSource.for_paths`).
        self.blocks, self.data, self.batch_size = blocks, data, batch_size
        self.known_bad, self.skip_bad = known_bad, skip_bad
        self.image_hw = writer.layout.image_hw
        self.open: dict[int, BlockState] = {}  # registered blocks, in order
        self.in_flight: deque[ViewBatch] = deque()
        self.tiny = _tiny_jpeg()
        self.checked = np.zeros(len(data), dtype=bool)  # damage checked (once per file)
        self.fields = list(_fields(self.config.recipe))
        self._iter = self._batches()

    def _read(self, sample: int) -> np.ndarray | None:
        from dalidr.augment.replay import check_jpeg

        if sample in self.known_bad:
            return None
        where = f"sample {sample} ({self.data.describe(sample)})"
        try:
            data = self.data.read([sample])[0]
            check_jpeg(data, where)
            if not self.checked[sample]:
                self._check_damage(data, where)
                self.checked[sample] = True
            return data
        except (DatasetError, ImageError) as exc:
            if not self.skip_bad:
                raise ImageError(f"{where} cannot be read: {exc}; rerun with "
                                 "--skip-bad to record it as skipped") from exc
            warnings.warn(f"skipping {where}: {exc}", stacklevel=2)
            self.known_bad.add(sample)
            return None

    @staticmethod
    def _check_damage(data: np.ndarray, where: str) -> None:
        """Refuse JPEGs whose image data libjpeg reports missing; warn of other complaints."""
        damage = jpeg_damage(data, where)
        if damage is None:
            return
        if damage.corrupt:
            raise ImageError(str(damage))
        warnings.warn(str(damage), stacklevel=3)

    def _batches(self) -> Iterator[tuple[ViewBatch, tuple[Any, ...]]]:
        cfg, recipe = self.config, self.config.recipe
        for block in self.blocks:
            samples = self.writer.block_range(block)
            records = draw_records(recipe, cfg.seed, np.arange(samples.start, samples.stop),
                                   np.arange(cfg.slots), self.image_hw)
            jpegs = [self._read(s) for s in samples]
            skipped = np.zeros(records.shape, dtype=bool)
            skipped[[j for j, d in enumerate(jpegs) if d is None]] = True
            partners: dict[int, np.ndarray | None] = {}
            if recipe.has_mix:
                mixing = (records["mix"] != 0) & ~skipped
                for p in np.unique(records["partner"][mixing]):
                    partners[int(p)] = self._read(int(p))
                bad = [p for p, d in partners.items() if d is None]
                skipped |= mixing & np.isin(records["partner"], bad)
            n = len(samples)
            placeholder = np.tile(np.arange(cfg.k), (n, cfg.slots, 1))
            state = BlockState(block, records, skipped, placeholder,
                               np.zeros((n, cfg.slots, cfg.k), np.float32),
                               int((~skipped).sum()))
            self.open[block] = state
            views = np.flatnonzero(~skipped.reshape(-1))
            flat = records.reshape(-1)
            for start in range(0, len(views), self.batch_size):
                positions = views[start:start + self.batch_size]
                rows = positions // cfg.slots
                unique, index = np.unique(rows, return_inverse=True)
                encoded = [jpegs[r] for r in unique] + [self.tiny] * (len(rows) - len(unique))
                chosen = flat[positions]
                inputs: list[Any] = [encoded, index.astype(np.int32)]
                if recipe.has_mix:
                    inputs.append([partners[int(r["partner"])] if r["mix"] != 0 else self.tiny
                                   for r in chosen])
                inputs += [np.ascontiguousarray(chosen[f]) for f in self.fields]
                yield ViewBatch(block, positions, unique), tuple(inputs)

    def __call__(self) -> tuple[Any, ...]:
        batch, inputs = next(self._iter)
        self.in_flight.append(batch)
        return inputs


def _fields(recipe: Recipe) -> tuple[str, ...]:
    from dalidr.augment.replay import ReplaySpec

    return ReplaySpec(recipe).fields


def view_pipeline(recipe: Recipe, views: tuple[TeacherView, ...], source: ViewSource,
                   batch_size: int, num_threads: int, device_id: int | None) -> Any:
    from nvidia.dali import fn, pipeline_def

    from dalidr.augment.replay import DECODE_ARGS, Output, ReplaySpec, replay_graph

    device = "cpu" if device_id is None else "gpu"
    output = Output.FLOAT_CHW if device_id is None else Output.UINT8_HWC
    specs = [ReplaySpec(recipe, size=v.size, output=output, mean=v.mean, std=v.std)
             for v in views]
    count = 2 + int(recipe.has_mix) + len(source.fields)

    @pipeline_def(enable_conditionals=True)
    def _pipeline() -> Any:
        outs = fn.external_source(source=source, num_outputs=count, batch=True)
        unique, index = outs[0], outs[1]
        decoded = fn.decoders.image(unique, device="mixed" if device == "gpu" else "cpu",
                                    **DECODE_ARGS)
        decoded = fn.permute_batch(decoded, indices=index)
        jpegs = fn.permute_batch(unique, indices=index)
        partner = outs[2] if recipe.has_mix else None
        first = 2 + int(recipe.has_mix)
        inputs = {f: outs[first + i] for i, f in enumerate(source.fields)}
        return tuple(replay_graph(jpegs, partner, inputs, spec, device, decoded=decoded)
                     for spec in specs)

    pipe = _pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                     prefetch_queue_depth=2, exec_dynamic=True)
    pipe.build()
    return pipe


def decodes(data: np.ndarray) -> bool:
    """Whether DALI's CPU decoder accepts one whole image (used to find a bad batch's culprit)."""
    from nvidia.dali import fn, pipeline_def, types

    from dalidr.augment.replay import DECODE_ARGS

    # DALI's stub types device_id as int; None (CPU only) is what the runtime documents.
    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)  # type: ignore[call-overload]
    def _probe() -> Any:
        return fn.decoders.image(fn.external_source(name="x", dtype=types.DALIDataType.UINT8),
                                 **DECODE_ARGS)

    pipe = _probe()
    pipe.build()
    pipe.feed_input("x", [data])
    try:
        pipe.run()
        return True
    except RuntimeError:
        return False
