"""The fused CPU replay kernel as one DALI operator, compiled once per machine, not per process.

DALI's numba plugin (`nvidia.dali.plugin.numba.NumbaFunction`) wraps a Python function in a
`cfunc` of the plugin's own C signature and compiles it in every process, which costs seconds
before the first batch of every loader, worker and test (the Equalize operator alone took 6.4 s
of a 13.7M-sample loader's start, docs/scale.md). Here the two C entry points the plugin calls,
`run` (one sample) and `setup` (output shapes), are written against that same C signature as
module-level `cfunc`s with `cache=True`, so numba compiles them once and later processes load
the machine code from numba's cache; the plugin is handed their addresses.

The C signatures (DALI 2.4's plugin, `NumbaFunction._run_fn_sig` and `_setup_fn_sig`): every
pointer argument is a `uint64` address of an array of `int64` addresses, one per input or
output (per sample for `setup`), each pointing at that tensor's data or its `int64` shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import carray, cfunc, types
from numba.core import cgutils
from numba.extending import intrinsic
from nvidia.dali import types as dali_types

from dalidr.augment.cpu.randaugment import mix_sample, replay_sample

__all__ = ["fused_mix_operator", "fused_replay_operator", "INPUTS", "MIX_INPUTS"]

# The operator's inputs, in order, with their DALI types and dimensions.
INPUTS: tuple[tuple[str, Any, int], ...] = (
    ("image", dali_types.DALIDataType.UINT8, 3),
    ("ops", dali_types.DALIDataType.UINT8, 1),
    ("mags", dali_types.DALIDataType.INT8, 1),
    ("erase", dali_types.DALIDataType.UINT16, 1),
    ("magnitudes", dali_types.DALIDataType.FLOAT, 3),
    ("settings", dali_types.DALIDataType.INT32, 1),
)

_RUN_SIG = types.void(types.uint64, types.uint64, types.uint64, types.int32,
                      types.uint64, types.uint64, types.uint64, types.int32)
_SETUP_SIG = types.void(types.uint64, types.uint64, types.int32,
                        types.uint64, types.uint64, types.int32, types.int32)


def _pointer_typing(typingctx: Any, address: Any) -> Any:
    """An integer address as a `void*`, for `numba.carray`."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(address), codegen


_pointer: Any = intrinsic(_pointer_typing)  # called as _pointer(address) in compiled code


@cfunc(_RUN_SIG, cache=True)
def _run(out_ptr: int, out_shapes_ptr: int, out_ndims_ptr: int, num_outs: int,
         in_ptr: int, in_shapes_ptr: int, in_ndims_ptr: int, num_ins: int) -> None:
    data = carray(_pointer(in_ptr), 6, dtype=np.int64)
    shapes = carray(_pointer(in_shapes_ptr), 6, dtype=np.int64)
    image_shape = carray(_pointer(shapes[0]), 3, dtype=np.int64)
    hwc = (image_shape[0], image_shape[1], image_shape[2])
    image = carray(_pointer(data[0]), hwc, dtype=np.uint8)
    ops = carray(_pointer(data[1]), carray(_pointer(shapes[1]), 1, dtype=np.int64)[0],
                 dtype=np.uint8)
    mags = carray(_pointer(data[2]), carray(_pointer(shapes[2]), 1, dtype=np.int64)[0],
                  dtype=np.int8)
    erase = carray(_pointer(data[3]), 4, dtype=np.uint16)
    table_shape = carray(_pointer(shapes[4]), 3, dtype=np.int64)
    table = carray(_pointer(data[4]), (table_shape[0], table_shape[1], table_shape[2]),
                   dtype=np.float32)
    settings = carray(_pointer(data[5]), 4, dtype=np.int32)
    out = carray(_pointer(carray(_pointer(out_ptr), 1, dtype=np.int64)[0]), hwc,
                 dtype=np.uint8)
    replay_sample(out, image, ops, mags, erase, table, settings)


@cfunc(_SETUP_SIG, cache=True)
def _setup(out_shapes_ptr: int, out_ndims_ptr: int, num_outs: int,
           in_shapes_ptr: int, in_ndims_ptr: int, num_ins: int, num_samples: int) -> None:
    # The output has the image's shape, sample by sample.
    out_shapes = carray(_pointer(out_shapes_ptr), (num_outs, num_samples), dtype=np.int64)
    in_shapes = carray(_pointer(in_shapes_ptr), (num_ins, num_samples), dtype=np.int64)
    for s in range(num_samples):
        source = carray(_pointer(in_shapes[0, s]), 3, dtype=np.int64)
        target = carray(_pointer(out_shapes[0, s]), 3, dtype=np.int64)
        for d in range(3):
            target[d] = source[d]


# The mixing operator's inputs, in order.
MIX_INPUTS: tuple[tuple[str, Any, int], ...] = (
    ("own", dali_types.DALIDataType.UINT8, 3),
    ("partner", dali_types.DALIDataType.UINT8, 3),
    ("mix", dali_types.DALIDataType.UINT8, 0),
    ("lam", dali_types.DALIDataType.UINT16, 0),
    ("box", dali_types.DALIDataType.UINT16, 1),
)


@cfunc(_RUN_SIG, cache=True)
def _run_mix(out_ptr: int, out_shapes_ptr: int, out_ndims_ptr: int, num_outs: int,
             in_ptr: int, in_shapes_ptr: int, in_ndims_ptr: int, num_ins: int) -> None:
    data = carray(_pointer(in_ptr), 5, dtype=np.int64)
    shapes = carray(_pointer(in_shapes_ptr), 5, dtype=np.int64)
    own_shape = carray(_pointer(shapes[0]), 3, dtype=np.int64)
    hwc = (own_shape[0], own_shape[1], own_shape[2])
    own = carray(_pointer(data[0]), hwc, dtype=np.uint8)
    partner = carray(_pointer(data[1]), hwc, dtype=np.uint8)
    mix = carray(_pointer(data[2]), 1, dtype=np.uint8)[0]
    lam = carray(_pointer(data[3]), 1, dtype=np.uint16)[0]
    box = carray(_pointer(data[4]), 4, dtype=np.uint16)
    out = carray(_pointer(carray(_pointer(out_ptr), 1, dtype=np.int64)[0]), hwc,
                 dtype=np.uint8)
    mix_sample(out, own, partner, mix, lam, box)


_OPERATORS: dict[str, Any] = {}


def _precompiled(name: str, run: Any, inputs: tuple[tuple[str, Any, int], ...]) -> Any:
    """DALI's numba plugin operator over the cached `run` (one sample) and `_setup` (the output
    has input 0's shape), made once per process."""
    if name not in _OPERATORS:
        from nvidia.dali.plugin.numba import NumbaFunction

        class _Precompiled(NumbaFunction):  # the plugin, handed addresses instead of Python
            def _get_run_fn_cpu(self, *args: Any) -> int:
                return int(run.address)

            def _get_setup_fn_cpu(self, setup_fn: Any) -> int:
                return int(_setup.address)  # type: ignore[arg-type]  # set once compiled

        _OPERATORS[name] = _Precompiled(
            device="cpu",
            run_fn=None,
            out_types=[dali_types.DALIDataType.UINT8],
            in_types=[kind for _, kind, _ in inputs],
            outs_ndim=[3],
            ins_ndim=[ndim for _, _, ndim in inputs],
            batch_processing=False,
        )
    return _OPERATORS[name]


def fused_replay_operator() -> Any:
    """The DALI CPU operator `(image, ops, mags, erase, magnitudes, settings) -> image`: a
    view's RandAugment ops and erase (`randaugment.replay_sample`)."""
    return _precompiled("replay", _run, INPUTS)


def fused_mix_operator() -> Any:
    """The DALI CPU operator `(own, partner, mix, lam, box) -> image`: a view's MixUp or CutMix
    (`randaugment.mix_sample`)."""
    return _precompiled("mix", _run_mix, MIX_INPUTS)
