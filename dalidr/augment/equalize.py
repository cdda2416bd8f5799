"""Equalize as the paper's code defines it (PIL's `ImageOps.equalize`), as one DALI operator.

The paper's code (apple/ml-dr) applies torchvision's RandAugment to PIL images, so its
Equalize is PIL's `ImageOps.equalize`, which torchvision's tensor `equalize` follows too. Per
channel, with `h` the 256-bin histogram, `total` the pixel count and `last` the count of the
highest value present:

    step = (total - last) // 255
    lut[v] = min(255, (step // 2 + h[0] + ... + h[v - 1]) // step)      (identity if step == 0)

DALI's `fn.equalize` is OpenCV's `equalizeHist`, another table (about 6 uint8 levels apart on
photographs), and DALI has no histogram or per-sample lookup-table operator, so this module
runs the definition above, in integer arithmetic and therefore exactly, through DALI's numba
plugin (`nvidia.dali.plugin.numba.NumbaFunction`): a compiled function per sample on the CPU,
a CUDA kernel per sample on the GPU (one block per channel: a shared-memory histogram, the
table, then the lookup). The table is built by `lut_from_histogram`, one function compiled for
both targets and for the CPU's fused replay kernel (`dalidr.augment.cpu.tone`, which is what
CPU replay runs; this operator serves the GPU and `OpsBackend.DALI`). No Python runs per
sample. Trade-off: numba is a dependency, and compiling this operator costs seconds once per
process and device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import cuda, int32, njit
from nvidia.dali import fn, types
from nvidia.dali.data_node import DataNode
from nvidia.dali.pipeline import do_not_convert

from dalidr.errors import DeviceError

__all__ = ["pil_equalize", "equalize_reference", "lut_from_histogram"]

_THREADS = 256  # GPU threads per block (one block per channel); must be 256, one per bin


def lut_from_histogram(hist: Any, lut: Any, total: int) -> None:
    """PIL's equalize table from one channel's 256-bin histogram (njit and CUDA device code)."""
    last = 255
    while last > 0 and hist[last] == 0:
        last -= 1
    step = (total - hist[last]) // 255
    if step == 0:
        for v in range(256):
            lut[v] = v
        return
    acc = step // 2
    for v in range(256):
        q = acc // step
        lut[v] = q if q < 255 else 255
        acc += hist[v]


def equalize_reference(image: np.ndarray) -> np.ndarray:
    """The same table in numpy, for one uint8 HWC image (tests and documentation)."""
    out = np.empty_like(image)
    for c in range(image.shape[2]):
        hist = np.bincount(image[:, :, c].ravel(), minlength=256)
        lut = np.empty(256, dtype=np.int64)
        lut_from_histogram(hist, lut, image.shape[0] * image.shape[1])
        out[:, :, c] = lut[image[:, :, c]]
    return out


_lut_cpu = njit(lut_from_histogram)
_lut_gpu = cuda.jit(device=True)(lut_from_histogram)


def _equalize_cpu(out: Any, image: Any) -> None:
    """One HWC sample, compiled with njit (the plugin calls it per sample from C++)."""
    height, width, channels = image.shape
    hist = np.zeros(256, dtype=np.int64)
    lut = np.zeros(256, dtype=np.uint8)
    for c in range(channels):
        hist[:] = 0
        for y in range(height):
            for x in range(width):
                hist[image[y, x, c]] += 1
        _lut_cpu(hist, lut, height * width)
        for y in range(height):
            for x in range(width):
                out[y, x, c] = lut[image[y, x, c]]


def _equalize_gpu(out: Any, image: Any) -> None:
    """One HWC sample as a CUDA kernel: block c equalizes channel c with _THREADS threads."""
    c = cuda.blockIdx.x
    t = cuda.threadIdx.x
    hist = cuda.shared.array(256, dtype=int32)
    lut = cuda.shared.array(256, dtype=int32)
    height, width, channels = image.shape
    total = height * width
    hist[t] = 0
    cuda.syncthreads()  # type: ignore[call-arg]  # numba's stub types the lowering, not the call
    if c < channels:
        i = t
        while i < total:
            y = i // width
            cuda.atomic.add(hist, image[y, i - y * width, c], 1)
            i += _THREADS
    cuda.syncthreads()
    if t == 0 and c < channels:
        _lut_gpu(hist, lut, total)
    cuda.syncthreads()
    if c < channels:
        i = t
        while i < total:
            y = i // width
            out[y, i - y * width, c] = lut[image[y, i - y * width, c]]
            i += _THREADS


_OPERATORS: dict[tuple[str, int | None], Any] = {}


# DALI 2.4's numba plugin keeps the CUDA toolkits it runs GPU operators under in a module table,
# `minimal_numba_version` (CUDA 11 and 12, each with its least numba), and refuses any other
# ("Unsupported CUDA toolkit version"). Its GPU path has numba compile the kernel and hands DALI
# the kernel's handle, which numba-cuda builds for CUDA 13 as for 12. torch 2.14 is a CUDA 13
# build, so the `gpu` extra is numba-cuda on CUDA 13, and CUDA 13 joins that table (with
# numba-cuda's own least numba) where numba-cuda is numba's CUDA target (`numba.cuda` is then
# numba-cuda's, implementation "NVIDIA"). Not yet run on a GPU: docs/gpu.md says what the first
# GPU session must confirm.
_CUDA_13_LEAST_NUMBA = "0.60.0"


def _accept_cuda_13() -> dict[int, Any]:
    """DALI's table of CUDA toolkits, with 13 added where numba-cuda is numba's CUDA target."""
    from nvidia.dali.plugin import numba as plugin
    from packaging.version import Version

    table = getattr(plugin, "minimal_numba_version", None)
    if not isinstance(table, dict):  # a DALI that decides otherwise: leave it to its checks
        return {}
    if getattr(cuda, "implementation", "Built-in") == "NVIDIA":
        table.setdefault(13, Version(_CUDA_13_LEAST_NUMBA))
    return table


def gpu_support_problem() -> str | None:
    """Why DALI's numba plugin cannot place Equalize on the GPU here, or None if it can.

    DALI 2.4's plugin accepts the CUDA toolkits of its table as numba sees them (11 and 12, and
    13 once `_accept_cuda_13` has added it, which needs numba-cuda), and a driver at least as
    new as that toolkit unless numba-cuda is installed; here a driver of the toolkit's major
    version is required in any case. None means these checks pass; that a CUDA 13 kernel then
    runs on DALI's stream is for a GPU run to confirm (docs/gpu.md)."""
    from nvidia.dali.plugin.numba import NumbaFunction

    accepted = _accept_cuda_13()
    try:  # two private checks of the plugin, absent from its stub (hence the ignores)
        if not NumbaFunction._check_minimal_numba_version(throw=False):  # type: ignore[attr-defined]
            version = cuda.runtime.get_version()
            listed = ", ".join(str(major) for major in sorted(accepted)) or "its own list"
            hint = "" if 13 in accepted else "; 13 needs numba-cuda as numba's CUDA target"
            return (f"numba {numba_version()} sees CUDA toolkit {version[0]}.{version[1]}, "
                    f"which DALI's numba plugin does not accept (it accepts CUDA {listed}{hint})")
        if not NumbaFunction._check_cuda_compatibility(throw=False):  # type: ignore[attr-defined]
            return "the CUDA driver is older than the CUDA toolkit numba sees"
        # The plugin leaves that to numba-cuda, which cannot bridge a major version: NVVM 13's
        # code needs a driver for CUDA 13 (R580 or newer).
        driver, toolkit = cuda.driver.driver.get_version(), cuda.runtime.get_version()
        if driver[0] < toolkit[0]:
            return (f"the CUDA driver supports CUDA {driver[0]}.{driver[1]}, older than the CUDA "
                    f"{toolkit[0]}.{toolkit[1]} toolkit numba sees")
    except Exception as exc:  # noqa: BLE001 - any failure to probe CUDA is the answer
        return f"numba cannot probe CUDA: {type(exc).__name__}: {exc}"
    return None


def numba_version() -> str:
    import numba

    return str(numba.__version__)


@do_not_convert
def _operator(device: str, device_id: int | None) -> Any:
    """The compiled operator for a device, made once per process (compiling takes seconds)."""
    key = (device, device_id if device == "gpu" else None)
    if key not in _OPERATORS:
        from nvidia.dali.plugin.numba import NumbaFunction

        common: dict[str, Any] = dict(
            out_types=[types.DALIDataType.UINT8],
            in_types=[types.DALIDataType.UINT8],
            outs_ndim=[3],
            ins_ndim=[3],
        )
        if device == "gpu":
            problem = gpu_support_problem()
            if problem is not None:
                raise DeviceError(
                    "Equalize on the GPU (dalidr/augment/equalize.py, PIL's table) runs through "
                    f"DALI's numba plugin, which cannot run here: {problem}. Install numba-cuda "
                    'for CUDA 13 (`pip install "dalidr[gpu]"`), or replay on the CPU '
                    "(device_id=None)")
            _OPERATORS[key] = NumbaFunction(
                device="gpu",
                run_fn=_equalize_gpu,
                blocks=[3, 1, 1],
                threads_per_block=[_THREADS, 1, 1],
                **common,
            )
        else:
            _OPERATORS[key] = NumbaFunction(
                device="cpu", run_fn=_equalize_cpu, batch_processing=False, **common
            )
    return _OPERATORS[key]


def pil_equalize(images: DataNode) -> DataNode:
    """PIL's `ImageOps.equalize` of each uint8 HWC image (3 channels at most), CPU or GPU."""
    from nvidia.dali.pipeline import Pipeline

    pipeline = Pipeline.current()
    device_id = pipeline.device_id if pipeline is not None else None
    # The plugin's output has no layout; the ops after it (erase) look axes up by name.
    return fn.reshape(_operator(images.device, device_id)(images), layout="HWC")
