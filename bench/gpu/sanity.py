"""The first step of a GPU check: what the machine is, and whether DALI decodes on it at all.

Records the machine (`bench.machine.describe_machine`: CPU and cores, GPU, driver, CUDA, library
versions), the driver's CUDA version (`cuDriverGetVersion`, read through ctypes, so a driver
too old for the installed DALI is named rather than guessed at), then decodes one real JPEG
with DALI (`mixed` on a GPU, `cpu` otherwise) and checks that every operator dalidr's GPU graphs
place on the GPU has a GPU backend in the installed DALI (`bench.gpu.dali_ops`). Meant to take
seconds: a failure here means the rest of the check cannot run, and says why.

Run: `python bench/gpu/sanity.py --device gpu|cpu [--out FILE]`.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

from bench.machine import describe_machine, summary

__all__ = ["ROUTE_NEEDS_CUDA", "driver_cuda_version", "decode_one", "main"]

# The CUDA version each bundle route's DALI needs from the driver (bench/gpu/pack.sh).
ROUTE_NEEDS_CUDA = {"cuda120": (12, 0), "cuda130": (13, 0)}


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def driver_cuda_version() -> str | None:
    """The CUDA version the installed driver supports ("12.8"), None without a driver."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def decode_one(device: str) -> dict[str, Any]:
    """Decode one real JPEG through a DALI pipeline; its shape, mean and the seconds it took."""
    from nvidia.dali import fn, pipeline_def, types

    from dalidr.data.sample_data import make_corpus

    with tempfile.TemporaryDirectory(prefix="dalidr-sanity-") as tmp:
        path = make_corpus(tmp, 1, seed=0)[0]
        jpeg = np.fromfile(path, dtype=np.uint8)
    start = time.perf_counter()

    @pipeline_def(batch_size=1, num_threads=1, device_id=0 if device == "gpu" else None,
                  prefetch_queue_depth=1)
    def _decode() -> Any:
        data = fn.external_source(name="jpeg", dtype=types.UINT8)
        return fn.decoders.image(data, device="mixed" if device == "gpu" else "cpu",
                                 output_type=types.RGB)

    pipe = _decode()
    pipe.build()
    pipe.feed_input("jpeg", [jpeg])
    (out,) = pipe.run()
    tensor = out.as_cpu() if hasattr(out, "as_cpu") else out
    image = np.array(tensor.as_array()[0])
    return {"device": device, "shape": list(image.shape), "mean": float(image.mean()),
            "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "gpu"], default="gpu")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu-sanity.json"))
    args = parser.parse_args(argv)
    machine = describe_machine()
    print(summary(machine))
    report: dict[str, Any] = {"benchmark": "sanity", "device": args.device,
                              "driver_cuda": driver_cuda_version(), "machine": machine}
    route = os.environ.get("GPU_BUNDLE_ROUTE")
    report["bundle_route"] = route
    print(f"driver supports CUDA {report['driver_cuda']}; torch built for CUDA "
          f"{machine['gpu']['cuda_runtime']}; bundle route {route or 'none (DALI installed)'}")
    ok = True
    needed = ROUTE_NEEDS_CUDA.get(route or "")
    if args.device == "gpu" and needed and report["driver_cuda"] and \
            _version(report["driver_cuda"]) < needed:
        report["route_error"] = (f"bundle route {route} needs a driver for CUDA "
                                 f"{needed[0]}.{needed[1]}, this one supports "
                                 f"{report['driver_cuda']}: carry the cuda120 bundle instead")
        print(report["route_error"])
        ok = False
    try:
        report["decode"] = decode_one(args.device)
        print(f"decoded one JPEG on {args.device}: {report['decode']['shape']} in "
              f"{report['decode']['seconds']:.2f} s")
        ok = len(report["decode"]["shape"]) == 3 and report["decode"]["mean"] > 0
    except Exception as exc:  # noqa: BLE001 - recorded and reported, the check goes on
        report["decode"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        print(f"decode failed: {report['decode']['error']}")
        ok = False
    from bench.gpu.dali_ops import (
        gpu_graph_ops,
        missing_backends,
        numba_cuda_found,
        numba_requirement,
    )

    errors: dict[str, str] = {}
    graphs = gpu_graph_ops(errors)
    report["gpu_graph_errors"] = errors
    for label, error in errors.items():
        print(f"GPU graph {label!r} could not be defined: {error}")
    every = set().union(*graphs.values()) if graphs else set()
    missing = missing_backends(every)
    report["gpu_ops"] = sorted(f"{n} ({d})" for n, d in every if d in ("gpu", "mixed"))
    report["gpu_ops_missing_backend"] = [f"{n} ({d})" for n, d in missing]
    print(f"{len(report['gpu_ops'])} GPU/mixed operators in {len(graphs)} graphs; missing a "
          f"backend: {report['gpu_ops_missing_backend'] or 'none'}")
    ok = ok and not missing and not errors
    report["numba_cuda"] = numba_cuda_found()
    print(f"numba's CUDA target: {report['numba_cuda']}")
    requirement = numba_requirement()
    report["gpu_requirement"] = requirement
    if requirement is not None:
        # On the GPU machine this is a failure; on a CPU rehearsal it cannot be checked.
        print(("GPU replay cannot run: " if args.device == "gpu" else
               "required of the GPU machine (not checkable here): ") + requirement)
        ok = ok and args.device != "gpu"
    report["passed"] = ok
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
