"""Which DALI operators dalidr's GPU graphs use, and whether the installed DALI has them on GPU.

A GPU run is too short to discover that an operator has no GPU backend. The graphs are
defined here exactly as the product defines them (`dalidr.augment.replay.replay_graph` for every
preset, with per-view decoding as in the loader and once-decoded images fanned out as in the
teacher pass, and the plain DALI ResNet-50 pipeline of `bench/replay.py`), with
`device_id=0` but never built, so no GPU is needed. Every operator placed on "gpu" or "mixed"
is then looked up in DALI's registry of GPU and mixed operator schemas
(`nvidia.dali.backend.RegisteredGPUOps` / `RegisteredMixedOps`).

`NumbaFunction` (Equalize as PIL's table, `dalidr/augment/equalize.py`) is a Python plugin operator,
not in DALI's registry: whether it can run on the GPU is
`dalidr.augment.equalize.gpu_support_problem()`
(numba's CUDA toolkit as DALI's plugin accepts it, and a driver). Where that names a problem, as
on a CPU machine (no driver, or numba's built-in CUDA target on CUDA 13), it is reported as a
requirement of the GPU machine, and the graphs are defined with Equalize as an identity so the
rest of their operators are still checked. `numba_cuda_found` records which CUDA target numba
uses and where it found NVRTC, NVVM and libdevice (no driver needed).

Run: `python -m bench.gpu.dali_ops` (prints the operators, exits 1 if one lacks its backend).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nvidia.dali import backend, fn, pipeline_def, types
from nvidia.dali.pipeline import Pipeline

from dalidr.augment.recipe import PRESETS, Recipe
from dalidr.augment.replay import Output, ReplaySpec, replay_graph

__all__ = ["gpu_graph_ops", "missing_backends", "numba_requirement", "numba_cuda_found", "main"]

# Plugin operators defined in Python, checked by `numba_requirement` instead of the registry.
PLUGIN_OPS = {"NumbaFunction"}


def numba_requirement() -> str | None:
    """What the GPU machine must provide for Equalize's numba operator, if this one cannot."""
    from dalidr.augment.equalize import gpu_support_problem

    problem = gpu_support_problem()
    return None if problem is None else f"Equalize's numba GPU operator: {problem}"


def numba_cuda_found() -> dict[str, Any]:
    """numba's CUDA target ("NVIDIA" is numba-cuda), the toolkit it sees, and where it found
    NVRTC, NVVM and libdevice (numba-cuda's own record: how, and the path), or the error."""
    from numba import cuda

    found: dict[str, Any] = {"implementation": getattr(cuda, "implementation", "Built-in")}
    try:
        found["toolkit"] = ".".join(str(part) for part in cuda.runtime.get_version())
        from numba.cuda.cuda_paths import get_cuda_paths

        paths = get_cuda_paths()
        for name in ("nvrtc", "nvvm", "libdevice"):  # numba's built-in target lacks nvrtc
            if name in paths:
                found[name] = f"{paths[name].by}: {paths[name].info}"
    except Exception as exc:  # noqa: BLE001 - recorded: what the GPU session reads first
        found["error"] = f"{type(exc).__name__}: {exc}"[:500]
    return found


@contextlib.contextmanager
def _equalize_as_identity(active: bool):  # type: ignore[no-untyped-def]
    """Define graphs with Equalize as an identity (only to list the other operators)."""
    import dalidr.augment.ops

    saved = dalidr.augment.ops.pil_equalize
    if active:
        dalidr.augment.ops.pil_equalize = lambda images: fn.reshape(images, layout="HWC")
    try:
        yield
    finally:
        dalidr.augment.ops.pil_equalize = saved


def _ops_of(pipe: Pipeline) -> set[tuple[str, str]]:
    """(schema name, device) of every operator in a defined (not built) pipeline."""
    pipe._build_graph()  # graph definition only: no backend pipeline, no device
    found = set()
    for instance in pipe._ops:
        op = instance._op
        found.add((getattr(op, "schema_name", type(op).__name__), op.device))
    return found


def _define(body: Callable[[], Any], conditionals: bool) -> Pipeline:
    @pipeline_def(enable_conditionals=conditionals)
    def _pipeline() -> Any:
        return body()

    return _pipeline(batch_size=2, num_threads=1, device_id=0, prefetch_queue_depth=1)


def _replay(recipe: Recipe, once_decoded: bool) -> Callable[[], Any]:
    spec = ReplaySpec(recipe, size=32, output=Output.UINT8_HWC if once_decoded
                      else Output.FLOAT_CHW)

    def body() -> Any:
        jpegs = fn.external_source(name="jpegs", dtype=types.UINT8)
        partner = (fn.external_source(name="partner_jpegs", dtype=types.UINT8)
                   if recipe.has_mix else None)
        inputs = {f: fn.external_source(name=f) for f in spec.fields}
        decoded = None
        if once_decoded:  # the teacher pass: decode once, fan out to the views
            decoded = fn.permute_batch(
                fn.decoders.image(jpegs, device="mixed", output_type=types.RGB),
                indices=[0, 0])
        return replay_graph(jpegs, partner, inputs, spec, "gpu", decoded=decoded)

    return body


def _plain() -> Any:
    from bench.replay import IMAGENET_MEAN, IMAGENET_STD

    jpegs = fn.external_source(name="jpegs", dtype=types.UINT8)
    images = fn.decoders.image_random_crop(jpegs, device="mixed", output_type=types.RGB)
    images = fn.resize(images, resize_x=32, resize_y=32, antialias=True)
    return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                    mean=[255.0 * m for m in IMAGENET_MEAN],
                                    std=[255.0 * s for s in IMAGENET_STD],
                                    mirror=fn.random.coin_flip())


def gpu_graph_ops(errors: dict[str, str] | None = None) -> dict[str, set[tuple[str, str]]]:
    """Graph name -> (schema, device) of its operators, for every graph a GPU run builds.

    A graph that cannot even be defined raises, or, given `errors`, is recorded there (graph
    name -> the exception) and left out, so that a report can name every such graph."""
    definitions: dict[str, tuple[Callable[[], Any], bool]] = {}
    for name, preset in PRESETS.items():
        for once in (False, True):
            label = f"replay {name}" + (" (decoded once, teacher pass)" if once else "")
            definitions[label] = (_replay(preset, once), True)
    definitions["plain DALI ResNet-50"] = (_plain, False)
    graphs: dict[str, set[tuple[str, str]]] = {}
    for label, (body, conditionals) in definitions.items():
        try:
            with _equalize_as_identity(numba_requirement() is not None):
                graphs[label] = _ops_of(_define(body, conditionals))
        except Exception as exc:  # noqa: BLE001 - reported per graph when asked to
            if errors is None:
                raise
            # DALI wraps the cause in a long trace; its last line names it.
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            errors[label] = f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:500]
    return graphs


def missing_backends(ops: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (schema, device) pairs whose device has no backend in the installed DALI."""
    registered = {"gpu": set(backend.RegisteredGPUOps()),
                  "mixed": set(backend.RegisteredMixedOps()),
                  "cpu": set(backend.RegisteredCPUOps())}
    return sorted((name, device) for name, device in ops
                  if device in registered and name not in registered[device]
                  and name not in PLUGIN_OPS)


def main() -> int:
    errors: dict[str, str] = {}
    graphs = gpu_graph_ops(errors)
    for label, error in errors.items():
        print(f"graph {label!r} could not be defined: {error}")
    every = set().union(*graphs.values())
    placed = sorted((n, d) for n, d in every if d in ("gpu", "mixed"))
    print(f"{len(placed)} operators placed on gpu/mixed in {len(graphs)} graphs:")
    for name, device in placed:
        print(f"  {device:5s} {name}")
    missing = missing_backends(every)
    if missing:
        print("no backend in the installed DALI for: " + ", ".join(f"{n} ({d})"
                                                                for n, d in missing))
        return 1
    if errors:
        return 1
    requirement = numba_requirement()
    if requirement is not None:
        print(f"not checkable here, required of the GPU machine: {requirement}")
    print("every operator has its backend in the installed DALI")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
