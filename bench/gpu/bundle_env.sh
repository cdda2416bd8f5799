# Sourced (not run) by bench/gpu/check.sh and bench/gpu/verify_bundle.sh: the environment in
# which a Python uses an unpacked bundle (bench/gpu/pack.sh) at $1 (its site/ beside BUNDLE.txt).
#
# - PYTHONPATH starts with the bundle's site/. A folder on PYTHONPATH is not a site folder, so
#   its .pth files never run, and numba-cuda takes over `numba.cuda` from numba's built-in CUDA
#   target through one (_numba_cuda_redirector.pth). A sitecustomize.py ahead of it on PYTHONPATH
#   (in $1/hook) adds site/ as a site folder, which runs them. Trade-off: it hides any
#   sitecustomize of the machine's Python (Debian's only installs apport's hook).
# - CUDA_HOME (unless set) is a toolkit-shaped folder of the bundle's CUDA 13 libraries
#   (nvidia/cu13/lib: NVRTC, NVVM, runtime; nvidia/cu13/nvvm/libdevice). cuda-pathfinder, which
#   numba-cuda loads NVRTC and NVVM through, searches the interpreter's own site-packages, the
#   already loaded libraries and the system's before CUDA_HOME, so the bundle's libraries are the
#   fallback; numba-cuda takes libdevice from the nvidia-nvvm wheel it finds on PYTHONPATH.
#   bench/gpu/sanity.py records what numba-cuda found (numba_cuda in sanity.json).
# Exports GPU_BUNDLE_ROUTE (BUNDLE.txt's first line) too.
bundle_env_target=$1
export PYTHONPATH="$bundle_env_target/hook:$bundle_env_target/site${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$bundle_env_target/hook"
cat > "$bundle_env_target/hook/sitecustomize.py" <<'PY'
"""Made by bench/gpu/bundle_env.sh: the bundle's site/ as a site folder, so its .pth files run."""
import os
import site

site.addsitedir(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "site"))
PY
GPU_BUNDLE_ROUTE=$(head -1 "$bundle_env_target/BUNDLE.txt" 2>/dev/null | cut -d' ' -f2 || true)
export GPU_BUNDLE_ROUTE
bundle_env_cu13="$bundle_env_target/site/nvidia/cu13"
if [ -f "$bundle_env_cu13/lib/libnvvm.so.4" ] && [ -d "$bundle_env_cu13/nvvm/libdevice" ] \
    && [ -z "${CUDA_HOME:-}" ]; then
  rm -rf /tmp/dalidr-cuda13 && mkdir -p /tmp/dalidr-cuda13/lib64 /tmp/dalidr-cuda13/nvvm/lib64
  ln -s "$bundle_env_cu13"/lib/* /tmp/dalidr-cuda13/lib64/
  ln -s "$bundle_env_cu13"/lib/libnvvm.so* /tmp/dalidr-cuda13/nvvm/lib64/
  ln -s "$bundle_env_cu13"/nvvm/libdevice /tmp/dalidr-cuda13/nvvm/libdevice
  export CUDA_HOME=/tmp/dalidr-cuda13
fi
unset bundle_env_target bundle_env_cu13
