#!/usr/bin/env bash
# The GPU check in one command (bench/gpu/check.py has the steps and their budgets).
#
# On the GPU machine, in the last of the bundle-carrying calls (bench/gpu/README.md):
#   bash bench/gpu/stash.sh NN && bash bench/gpu/check.sh
# Unless DALI and zarr import already, it unpacks the bundle kept in /tmp/bundle into
# /tmp/gpu-bundle (bench/gpu/unpack.sh, at most 40 s) and puts it on PYTHONPATH; then it runs
# the steps, whose results go to $OUT and bench/results/gpu-check/ as each step ends.
# The CPU rehearsal, here: bash bench/gpu/check.sh --device cpu --quick
# Extra arguments go to bench/gpu/check.py. PYTHON picks the interpreter (default: python3, or
# .venv/bin/python where it exists and imports DALI).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
export GPU_CHECK_STARTED=$(date +%s)
target=${BUNDLE_TARGET:-/tmp/gpu-bundle}
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import nvidia.dali' 2>/dev/null; then
    PYTHON=.venv/bin/python
  fi
fi
export PYTHON
if ! "$PYTHON" -c 'import nvidia.dali, zarr' 2>/dev/null; then
  if [ ! -d "$target/site" ]; then
    timeout 40 bash bench/gpu/unpack.sh || { echo "[check.sh] no bundle unpacked (above); stopping" >&2; exit 3; }
  fi
  export PYTHONPATH="$target/site${PYTHONPATH:+:$PYTHONPATH}"
  GPU_BUNDLE_ROUTE=$(head -1 "$target/BUNDLE.txt" 2>/dev/null | cut -d' ' -f2)
  export GPU_BUNDLE_ROUTE
fi
# Equalize's numba GPU operator needs numba to see a CUDA 12 toolkit (DALI 2.4's plugin refuses
# 13): a toolkit-shaped folder of the bundle's CUDA 12 runtime and NVVM, as CUDA_HOME, so numba
# does not pick a system /usr/local/cuda of another version.
nv="$target/site/nvidia"
if [ -d "$nv/cuda_runtime/lib" ] && [ -d "$nv/cuda_nvcc/nvvm" ] && [ -z "${CUDA_HOME:-}" ]; then
  rm -rf /tmp/dalidr-cuda12 && mkdir -p /tmp/dalidr-cuda12/lib64 /tmp/dalidr-cuda12/nvvm
  ln -s "$nv"/cuda_runtime/lib/* /tmp/dalidr-cuda12/lib64/
  ln -s "$nv"/cuda_nvcc/nvvm/* /tmp/dalidr-cuda12/nvvm/
  export CUDA_HOME=/tmp/dalidr-cuda12
fi
# The corpus's photographs, where scikit-learn or matplotlib (which ship them) is missing.
if [ -d "$target/photos" ] && ! "$PYTHON" -c 'import sklearn, matplotlib' 2>/dev/null; then
  export DALIDR_PHOTOS="$target/photos"
fi
exec "$PYTHON" bench/gpu/check.py "$@"
