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
  # The bundle on PYTHONPATH, numba-cuda as numba's CUDA target, CUDA_HOME at its CUDA 13
  # NVRTC and NVVM (for Equalize's numba GPU operator): bench/gpu/bundle_env.sh.
  source bench/gpu/bundle_env.sh "$target"
fi
# The corpus's photographs, where scikit-learn or matplotlib (which ship them) is missing.
if [ -d "$target/photos" ] && ! "$PYTHON" -c 'import sklearn, matplotlib' 2>/dev/null; then
  export DALIDR_PHOTOS="$target/photos"
fi
exec "$PYTHON" bench/gpu/check.py "$@"
