#!/usr/bin/env bash
# Checks a built bundle as the GPU machine will use it: unpacks .gpu-bundle/part-* (as
# bench/gpu/unpack.sh does there) and runs bench/gpu/bundle_check.py with a Python 3.12 whose
# only packages are numpy, PyYAML and typing_extensions (what the GPU machine has with torch and
# timm), with the bundle's environment (bench/gpu/bundle_env.sh).
# Usage: bench/gpu/verify_bundle.sh [BUNDLE_FOLDER=.gpu-bundle/cuda130]
# The Python 3.12: $PY312, else python3.12 on PATH, else pyenv's. Its venv with numpy is made
# once in BUNDLE_FOLDER/py312 (needs the package registry the first time). Exit 77: no Python
# 3.12 or no bundle here (a test skips on it).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
folder=$(cd "${1:-$root/.gpu-bundle/cuda130}" 2>/dev/null && pwd) || { echo "no bundle folder ${1:-.gpu-bundle/cuda130}" >&2; exit 77; }
ls "$folder"/part-* >/dev/null 2>&1 || { echo "no parts in $folder: run bench/gpu/pack.sh" >&2; exit 77; }
py=${PY312:-}
if [ -z "$py" ]; then
  for candidate in python3.12 "$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)"; do
    if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 \
        && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
      py=$candidate; break
    fi
  done
fi
[ -n "$py" ] || { echo "no Python 3.12 found (set PY312)" >&2; exit 77; }
venv="$folder/py312"
if ! "$venv/bin/python" -c 'import numpy, yaml, typing_extensions' 2>/dev/null; then
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q numpy==2.4.6 pyyaml typing_extensions 2>&1 \
    | grep -v '^WARNING' || true
  "$venv/bin/python" -c 'import numpy, yaml, typing_extensions' \
    || { echo "could not install numpy into a Python 3.12 venv" >&2; exit 77; }
fi
target="$folder/unpacked"
start=$(date +%s.%N)
BUNDLE_DIR="$folder" BUNDLE_TARGET="$target" PYTHON="$venv/bin/python" bash "$root/bench/gpu/unpack.sh"
echo "unpacked in $(python3 -c "import time; print(round(time.time() - $start, 1))") s"
# As check.sh sets it up on the GPU machine: bench/gpu/bundle_env.sh (a CUDA_HOME of this
# machine's own is left out, as the GPU machine has none set).
(unset PYTHONPATH CUDA_HOME; source "$root/bench/gpu/bundle_env.sh" "$target"
 "$venv/bin/python" "$root/bench/gpu/bundle_check.py" "$target/photos") 2>&1 \
  | grep -v -e nvjpeg2k -e nvtiff -e nvJPEG2000 -e nvTIFF
