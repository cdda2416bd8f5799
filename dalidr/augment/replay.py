"""Replay: encoded JPEGs plus parameter records in, the exact augmented views out, with DALI.

This is the one augmentation implementation of dalidr. The teacher pass labels what it returns
and the training loader serves what it returns, so the student sees exactly the image the
teacher saw (paper Sec. 2: parameters are stored, images are re-created). It runs on the CPU
(`device_id=None`) and on the GPU (`mixed` decode, GPU operators) from the same graph.

Per view, in the order of the paper's code (apple/ml-dr, torchvision transforms):
1. crop: the stored fractions become source pixels (`round(fraction * side)`), and only that
   region is decoded (`decoders.image_slice`, ROI decoding where the decoder supports it).
   Images decode as PIL decodes them (`dalidr.augment.conventions.DECODE_CONVENTION`,
   `DECODE_ARGS`):
   RGB, EXIF orientation ignored, whatever the format (`dalidr.augment.image_formats`), so the size
   the
   sampler drew the crop for (PIL's `Image.open(path).size`) is the size decoded here;
2. resize to the output side (linear, antialiased, as torchvision's RandomResizedCrop);
3. horizontal flip, folded into the resize as a mirrored region of interest;
4. RandAugment: each stored (op id, signed magnitude bin) applies its op of
   `dalidr.augment.ops`. On the GPU, `auto_aug.select` splits the batch among the ops' DALI
   operators with DALI conditionals; on the CPU, where those operators and conditionals cost
   more than decoding, one fused numba operator (`dalidr.augment.cpu`) applies the view's ops
   and step 5 to each sample and returns the same pixels (`OpsBackend`);
5. RandomErasing: the stored box, filled with `recipe.erase_fill`;
6. MixUp/CutMix: the partner is decoded and augmented with its own stored view (steps 1-5),
   then blended with weight lambda (MixUp) or pasted inside the stored box (CutMix).
Boxes are fractions of the output, so the same record replays at the student's size and at a
larger teacher size. No per-sample Python runs on this path: records are fed as batch arrays.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from nvidia.dali import fn, math, pipeline_def, types
from nvidia.dali.auto_aug.core import select, signed_bin
from nvidia.dali.data_node import DataNode
from nvidia.dali.pipeline import Pipeline, do_not_convert
from nvidia.dali.tensors import TensorListGPU

from dalidr.augment.image_formats import check_image
from dalidr.augment.ops import replay_ops
from dalidr.augment.recipe import Recipe
from dalidr.augment.records import COORD_SCALE, MixMode, record_dtype, validate_records
from dalidr.errors import ImageError, OptionError

__all__ = [
    "Output",
    "OpsBackend",
    "ReplaySpec",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "replay_graph",
    "replay_pipeline",
    "Replayer",
    "check_jpeg",
    "DECODE_ARGS",
    "PEEK_ARGS",
]

# How every dalidr pipeline decodes an image (dalidr.augment.conventions.DECODE_CONVENTION): RGB,
# and
# EXIF orientation ignored, as PIL, torchvision's ImageFolder and the paper's code (DALI's
# default would rotate). Pass to every `fn.decoders.*` and to `fn.peek_image_shape`
# (`PEEK_ARGS`).
DECODE_ARGS: dict[str, Any] = {
    "output_type": types.DALIImageType.RGB,
    "adjust_orientation": False,
}
PEEK_ARGS: dict[str, Any] = {"adjust_orientation": False}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class OpsBackend(enum.Enum):
    """What runs RandAugment and erasing (steps 4-5) on each device."""

    # The CPU's fused numba kernel (`dalidr.augment.cpu`), DALI's operators on the GPU.
    AUTO = "auto"
    # DALI's operators under `auto_aug.select` on both devices (the CPU kernel's reference).
    DALI = "dali"


class Output(enum.Enum):
    """What replay returns."""

    UINT8_HWC = "uint8_hwc"  # uint8 [H, W, 3], for pictures and for teachers normalising themselves
    FLOAT_CHW = "float_chw"  # float32 [3, H, W], normalised with mean/std


@dataclass(frozen=True)
class ReplaySpec:
    """One replay pipeline's configuration."""

    # The recipe the records were drawn with.
    recipe: Recipe
    # Output side in pixels; None: the recipe's output_size (the student's).
    size: int | None = None
    # Returned format.
    output: Output = Output.UINT8_HWC
    # Normalisation for Output.FLOAT_CHW, in [0, 1] units.
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # What runs the RandAugment ops and the erase; the pixels are the same either way.
    ops_backend: OpsBackend = OpsBackend.AUTO

    @property
    def side(self) -> int:
        return self.size or self.recipe.output_size

    @property
    def fields(self) -> tuple[str, ...]:
        """The record fields the graph reads; the partner index is for the host (which JPEG)."""
        return tuple(n for n in record_dtype(self.recipe).names or () if n != "partner")


def _pixels(fraction: DataNode, extent: DataNode | float) -> DataNode:
    """Stored 1/65535 fractions of `extent` rounded to whole pixels, as float."""
    return math.floor(
        fn.cast(fraction, dtype=types.DALIDataType.FLOAT) * (extent * (1.0 / COORD_SCALE)) + 0.5
    )


def _view(
    jpegs: DataNode,
    inputs: dict[str, DataNode],
    prefix: str,
    spec: ReplaySpec,
    device: str,
    decoded: DataNode | None = None,
) -> DataNode:
    """Steps 1-5 of the module docstring for one view of every sample.

    With `decoded` (the whole images, already decoded, one per view), the crop is cut from them
    rather than decoded from `jpegs`; the pixels are the same, and a caller replaying many
    views of one image decodes it once.
    """
    recipe, side = spec.recipe, spec.side
    crop = inputs[prefix + "crop"]
    source_hw = fn.peek_image_shape(jpegs, dtype=types.DALIDataType.FLOAT, **PEEK_ARGS)[0:2]
    anchor, extent = _pixels(crop[0:2], source_hw), _pixels(crop[2:4], source_hw)
    if decoded is None:
        images = fn.decoders.image_slice(
            jpegs,
            anchor,
            extent,
            axis_names="HW",
            normalized_anchor=False,
            normalized_shape=False,
            device="mixed" if device == "gpu" else "cpu",
            **DECODE_ARGS,
        )
    else:
        images = fn.slice(
            decoded,
            anchor,
            extent,
            axis_names="HW",
            normalized_anchor=False,
            normalized_shape=False,
        )
    # The flip rides on the resize: a relative ROI running right to left mirrors the output.
    flip = fn.cast(inputs[prefix + "flip"], dtype=types.DALIDataType.FLOAT)
    images = fn.resize(
        images,
        size=[side, side],
        antialias=True,
        interp_type=types.DALIInterpType.INTERP_LINEAR,
        roi_start=fn.stack(types.Constant(0.0), flip),
        roi_end=fn.stack(types.Constant(1.0), 1.0 - flip),
        roi_relative=True,
    )
    if recipe.has_ra_re and device == "cpu" and spec.ops_backend is OpsBackend.AUTO:
        images = _fused_ra_re(images, inputs, prefix, spec)
    elif recipe.has_ra_re:
        ops = replay_ops(side, recipe.ra_num_bins)
        op_ids, mags = inputs[prefix + "ops"], inputs[prefix + "mags"]
        for k in range(max(recipe.ra_num_ops, 1)):
            magnitude = mags[k]
            negative = magnitude < 0
            bin_ = fn.cast(
                math.abs(fn.cast(magnitude, dtype=types.DALIDataType.INT32)),
                dtype=types.DALIDataType.INT32,
            )
            images = select(
                ops,
                op_ids[k],
                images,
                magnitude_bin=signed_bin(
                    bin_, random_sign=fn.cast(negative, dtype=types.DALIDataType.INT32)
                ),
                num_magnitude_bins=recipe.ra_num_bins,
                fill_value=float(recipe.fill),
                interp_type=types.DALIInterpType.INTERP_NN,
            )
        erase = inputs[prefix + "erase"]
        images = fn.erase(
            images,
            anchor=_pixels(erase[0:2], float(side)),
            shape=_pixels(erase[2:4], float(side)),
            axis_names="HW",
            fill_value=list(recipe.erase_fill),
        )
    return images


@do_not_convert
def _fused_parts(spec: ReplaySpec) -> tuple[Any, np.ndarray, np.ndarray]:
    """The fused operator and its constant inputs (magnitude table, fills). Plain Python, kept
    out of DALI's autograph, which would otherwise transform every function it calls (seconds
    of a loader's start)."""
    from dalidr.augment.cpu.operator import fused_replay_operator
    from dalidr.augment.cpu.randaugment import magnitude_table, settings_vector

    recipe = spec.recipe
    table = magnitude_table(spec.side, recipe.ra_num_bins)
    return fused_replay_operator(), table, settings_vector(recipe.fill, recipe.erase_fill)


@do_not_convert
def _mix_operator() -> Any:
    from dalidr.augment.cpu.operator import fused_mix_operator

    return fused_mix_operator()


def _fused_ra_re(
    images: Any, inputs: dict[str, DataNode], prefix: str, spec: ReplaySpec
) -> DataNode:
    """Steps 4-5 on the CPU as one operator per view: `dalidr.augment.cpu`'s kernel, the same
    pixels as the DALI operators of the other branch at a fraction of their cost."""
    operator, table, settings = _fused_parts(spec)
    out = operator(
        images,
        inputs[prefix + "ops"],
        inputs[prefix + "mags"],
        inputs[prefix + "erase"],
        types.Constant(table, device="cpu"),
        types.Constant(settings, device="cpu"),
    )
    # The plugin's output has no layout; the ops after it look axes up by name.
    return fn.reshape(out, layout="HWC")


def _mix(own: DataNode, partner: DataNode, inputs: dict[str, DataNode], spec: ReplaySpec,
         device: str) -> DataNode:
    """Blend with lambda (MixUp) or paste the partner inside the box (CutMix), in float."""
    side = spec.side
    if device == "cpu" and spec.ops_backend is OpsBackend.AUTO:
        mixed = _mix_operator()(own, partner, inputs["mix"], inputs["lam"], inputs["box"])
        return fn.reshape(mixed, layout="HWC")
    lam = fn.cast(inputs["lam"], dtype=types.DALIDataType.FLOAT) * (1.0 / COORD_SCALE)
    is_cutmix = inputs["mix"] == int(MixMode.CUTMIX)
    box = inputs["box"]
    ones = types.Constant(np.ones((side, side, 1), dtype=np.float32), device=own.device)
    # Zero inside the CutMix box, one elsewhere; an empty box (MixUp) leaves it all ones.
    keep = fn.erase(
        ones,
        anchor=_pixels(box[0:2], float(side)),
        shape=_pixels(box[2:4], float(side)),
        axes=[0, 1],
        fill_value=0.0,
    )
    weight = keep * (is_cutmix + (is_cutmix ^ True) * lam)
    mixed = fn.cast(own, dtype=types.DALIDataType.FLOAT) * weight + fn.cast(
        partner, dtype=types.DALIDataType.FLOAT
    ) * (1.0 - weight)
    return fn.cast(math.clamp(mixed, 0.0, 255.0), dtype=types.DALIDataType.UINT8)  # the cast rounds


def replay_graph(
    jpegs: DataNode,
    partner_jpegs: DataNode | None,
    inputs: dict[str, DataNode],
    spec: ReplaySpec,
    device: str,
    decoded: DataNode | None = None,
) -> DataNode:
    """The replay graph, for pipelines that add their own inputs and outputs around it.

    `jpegs` holds each view's encoded image; `inputs` maps every field of
    `record_dtype(spec.recipe)` (but the partner index) to a batch DataNode on the CPU.
    `decoded`, if given, holds each view's whole image already decoded (RGB, HWC), so that
    many views of one image need one decode. Call it inside a pipeline built with
    `enable_conditionals=True`.
    """
    images = _view(jpegs, inputs, "", spec, device, decoded)
    if spec.recipe.has_mix:
        if partner_jpegs is None:
            raise OptionError("recipe has mixing but no partner JPEG input was given")
        if inputs["mix"] != int(MixMode.NONE):
            partner = _view(partner_jpegs, inputs, "p_", spec, device)
            images = _mix(images, partner, inputs, spec, device)
    if spec.output is Output.FLOAT_CHW:
        images = fn.crop_mirror_normalize(
            images,
            dtype=types.DALIDataType.FLOAT,
            output_layout="CHW",
            mean=[255.0 * m for m in spec.mean],
            std=[255.0 * s for s in spec.std],
        )
    return images


def replay_pipeline(
    spec: ReplaySpec,
    batch_size: int,
    num_threads: int = 2,
    device_id: int | None = None,
    prefetch_queue_depth: int = 2,
) -> Pipeline:
    """A pipeline fed by name: "jpegs", "partner_jpegs" (mixing recipes) and each record field.

    `device_id=None` runs everything on the CPU; an integer runs decode and ops on that GPU.
    """
    device = "cpu" if device_id is None else "gpu"

    @pipeline_def(enable_conditionals=True)
    def _pipeline() -> DataNode:
        jpegs = fn.external_source(name="jpegs", dtype=types.DALIDataType.UINT8, no_copy=True)
        partner_jpegs = None
        if spec.recipe.has_mix:
            partner_jpegs = fn.external_source(
                name="partner_jpegs", dtype=types.DALIDataType.UINT8, no_copy=True
            )
        inputs = {field: fn.external_source(name=field, no_copy=False) for field in spec.fields}
        return replay_graph(jpegs, partner_jpegs, inputs, spec, device)

    pipe = _pipeline(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        prefetch_queue_depth=prefetch_queue_depth,
        exec_dynamic=True,
    )
    pipe.build()
    return pipe


def check_jpeg(data: np.ndarray | bytes, where: str) -> None:
    """Raise ImageError naming `where` unless replay decodes `data` (any format of
    `dalidr.augment.image_formats.REPLAY_FORMATS`, whole); kept under its old name for the
    loaders."""
    check_image(data, where)


class Replayer:
    """Runs a replay pipeline on batches of (encoded JPEG, record) pairs.

    A convenience over `replay_pipeline` for tools, tests and benchmarks; the loader and the
    teacher pass build their pipelines from `replay_graph` with their own sources.
    """

    def __init__(
        self,
        spec: ReplaySpec,
        batch_size: int,
        num_threads: int = 2,
        device_id: int | None = None,
    ) -> None:
        self.spec = spec
        self.batch_size = batch_size
        self.pipeline = replay_pipeline(
            spec, batch_size, num_threads, device_id, prefetch_queue_depth=1
        )

    def __call__(
        self,
        jpegs: Sequence[np.ndarray],
        records: np.ndarray,
        partner_jpegs: Sequence[np.ndarray] | None = None,
        names: Sequence[str] | None = None,
        num_samples: int | None = None,
    ) -> np.ndarray:
        """Replay one batch; returns a numpy array [B, H, W, 3] uint8 or [B, 3, H, W] float."""
        records = np.asarray(records).reshape(-1)
        count = len(records)
        if count != len(jpegs) or count > self.batch_size:
            raise OptionError(
                f"got {len(jpegs)} JPEGs and {count} records; both must match and be at most "
                f"batch_size={self.batch_size}"
            )
        names = list(names) if names is not None else [f"sample {i}" for i in range(count)]
        validate_records(records, self.spec.recipe, num_samples or 2**32, names)
        for i, data in enumerate(jpegs):
            check_jpeg(data, f"sample {i} ({names[i]})")
        self.pipeline.feed_input("jpegs", list(jpegs))
        if self.spec.recipe.has_mix:
            partners = list(partner_jpegs) if partner_jpegs is not None else list(jpegs)
            for i, data in enumerate(partners):
                check_jpeg(data, f"partner of sample {i} ({names[i]})")
            self.pipeline.feed_input("partner_jpegs", partners)
        for field in self.spec.fields:
            self.pipeline.feed_input(field, np.ascontiguousarray(records[field]))
        try:
            (images,) = self.pipeline.run()
        except RuntimeError as exc:
            raise ImageError(f"replaying the batch {names} failed: {exc}") from exc
        if isinstance(images, TensorListGPU):
            images = images.as_cpu()
        return np.asarray(images.as_array())
