"""Imports the unpacked GPU bundle and uses it a little, on whatever Python runs this.

Run by bench/gpu/verify_bundle.sh with a Python 3.12 (the GPU machine's) whose PYTHONPATH
starts with the bundle's site/: DALI decodes one of the bundle's photographs in CPU mode,
zarr writes and reads an array with the codecs dalidr's store uses (Blosc, CRC32C), pytest
imports, and numba's CUDA target is numba-cuda seeing CUDA 13 with its NVVM loaded (no driver
needed; bench/gpu/bundle_env.sh sets that up). Prints one line of versions; exits non-zero on
any failure. Needs only numpy besides
the bundle (the GPU machine has it with torch).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main() -> int:
    import numcodecs
    import pytest
    import zarr
    from nvidia import dali
    from nvidia.dali import fn, pipeline_def, types
    from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec

    photos = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    jpeg_path = photos / "grace_hopper.jpg" if photos else None
    if jpeg_path is None or not jpeg_path.is_file():
        print(f"no photograph at {jpeg_path}", file=sys.stderr)
        return 1
    jpeg = np.fromfile(jpeg_path, dtype=np.uint8)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def decode():  # type: ignore[no-untyped-def]
        return fn.decoders.image(fn.external_source(name="jpeg", dtype=types.UINT8),
                                 output_type=types.RGB)

    pipe = decode()
    pipe.build()
    pipe.feed_input("jpeg", [jpeg])
    (images,) = pipe.run()
    shape = images.as_array().shape
    if shape != (1, 600, 512, 3):
        print(f"DALI decoded {jpeg_path} to {shape}, not (1, 600, 512, 3)", file=sys.stderr)
        return 1
    checked = zarr.create_array(store={}, shape=(64, 8), chunks=(16, 8), dtype="uint16",
                                serializer=BytesCodec(),
                                compressors=[BloscCodec(), Crc32cCodec()])
    data = np.arange(64 * 8, dtype=np.uint16).reshape(64, 8)
    checked[:] = data
    if not np.array_equal(checked[:], data):
        print("zarr round trip changed the data", file=sys.stderr)
        return 1
    from numba import cuda
    from numba.cuda.cudadrv import nvvm

    if getattr(cuda, "implementation", "Built-in") != "NVIDIA":  # the .pth redirect did not run
        print(f"numba.cuda is numba's built-in target ({cuda.__file__}), not numba-cuda",
              file=sys.stderr)
        return 1
    toolkit = cuda.runtime.get_version()  # numba-cuda reads it from NVRTC
    if toolkit[0] != 13:
        print(f"numba-cuda sees CUDA {toolkit}, not the bundle's CUDA 13", file=sys.stderr)
        return 1
    nvvm_version = nvvm.NVVM().get_version()
    print(f"python {sys.version.split()[0]}: DALI {dali.__version__} decoded {shape}, zarr "
          f"{zarr.__version__}, numcodecs {numcodecs.__version__}, pytest {pytest.__version__}, "
          f"numba-cuda sees CUDA {toolkit[0]}.{toolkit[1]} with NVVM {nvvm_version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
