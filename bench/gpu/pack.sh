#!/usr/bin/env bash
# Builds the offline bundle of what dalidr needs on the GPU machine (Python 3.12 with torch,
# torchvision, Triton and timm, but no DALI, zarr, numcodecs or pytest, and no package registry):
# DALI with its JPEG codec libraries, zarr, numcodecs, pytest and their small dependencies, plus
# the three photographs `dalidr.data.sample_data` cuts its corpus from (the machine may lack
# scikit-learn and matplotlib, which ship them). The bundle is one xz-compressed tar split into
# parts that each fit one device call beside the working tree (64 MiB per call in all).
#
# Equalize (PIL's table, dalidr/augment/equalize.py) runs on the GPU through DALI's numba plugin.
# Both routes carry numba, llvmlite and the `gpu` extra of pyproject.toml: numba-cuda on CUDA 13
# (cuda-bindings 13, NVRTC, NVVM with libdevice, the CUDA runtime; `numba_gpu` below), the same
# CUDA as torch 2.14's build. DALI 2.4's plugin lists only CUDA 11 and 12; equalize.py adds 13
# (docs/gpu.md: what the first GPU run must confirm). bench/gpu/bundle_env.sh makes numba-cuda
# numba's CUDA target in the unpacked bundle and points CUDA_HOME at its NVRTC and NVVM. The
# default route is cuda120, the DALI users install.
#
# Routes (bench/gpu/README.md has the measurements behind them):
#   cuda130  nvidia-dali-cuda130 with the libraries it loads at run time (nvImageCodec,
#            nvJPEG 13 and the three NPP libraries it opens): 173 MB, 3 calls; needs a driver for
#            CUDA 13 (R580 or newer).
#   cuda120  (default) nvidia-dali-cuda120 (NPP, nvJPEG, cuFFT linked in): 214 MB, 4 calls
#            before the numba stack; any driver for CUDA 12 or 13. What users install.
#
# Usage, from the project's root:
#   bench/gpu/pack.sh [--route cuda130|cuda120] [--verify] [--list]
# The parts land in .gpu-bundle/ROUTE/ (git-ignored) with SHA256SUMS and BUNDLE.txt; --verify then
# unpacks them and imports DALI (CPU mode), zarr and numcodecs with a Python 3.12
# (bench/gpu/verify_bundle.sh). --list only prints the requirements it would fetch. PART_MB
# overrides the part size (default: what fits one call).
set -euo pipefail
route=cuda120
verify=0
list=0
while [ $# -gt 0 ]; do
  case "$1" in
    --route) route=$2; shift 2 ;;
    --verify) verify=1; shift ;;
    --list) list=1; shift ;;
    *) echo "usage: $0 [--route cuda120|cuda130] [--verify] [--list]" >&2; exit 2 ;;
  esac
done
root=$(git rev-parse --show-toplevel)
cd "$root"
out=.gpu-bundle/$route
call_mib=64   # what one device call carries: the working tree plus the carried paths
case "$route" in
  cuda120) dali=(nvidia-dali-cuda120==2.4.0 "nvidia-nvimgcodec-cu12>=0.9,<0.10"
                 "nvidia-nvjpeg-cu12>=12,<13") ;;
  cuda130) dali=(nvidia-dali-cuda130==2.4.0 "nvidia-nvimgcodec-cu13>=0.9,<0.10"
                 "nvidia-nvjpeg>=13,<14" "nvidia-npp>=13,<14") ;;
  *) echo "unknown route '$route'; valid: cuda120, cuda130" >&2; exit 2 ;;
esac
# Pinned to the versions the project is tested with (the shared venv), so the GPU run tests
# the same code. DALI's own dependencies first, then the store's, then the test runner's.
# Equalize's GPU operator: numba (a base dependency) and the `gpu` extra of pyproject.toml as
# it stands (numba-cuda, cuda-bindings 13, CUDA 13.0's NVRTC, NVVM and runtime), so the bundle
# and `pip install "dalidr[gpu]"` bring the same packages.
mapfile -t numba_gpu < <("${PYTHON:-.venv/bin/python}" -c 'import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["gpu"]))')
[ "${#numba_gpu[@]}" -gt 0 ] || { echo "no gpu extra read from pyproject.toml" >&2; exit 1; }
pkgs=(
  "${dali[@]}" numba==0.68.1 llvmlite==0.50.0 "${numba_gpu[@]}"
  astunparse==1.6.3 gast==0.7.0 optree==0.20.0 nvtx==0.2.17 makefun==1.16.0 libcst==1.9.0
  six==1.17.0 packaging==26.3
  zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
  pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0
)
if [ "$list" = 1 ]; then  # what would be fetched, one requirement a line; nothing fetched
  printf '%s\n' "${pkgs[@]}"
  exit 0
fi
stage=$(mktemp -d "${TMPDIR:-/tmp}/dalidr-bundle.XXXXXX")
trap 'rm -rf "$stage"' EXIT
echo "route $route: fetching ${#pkgs[@]} distributions for CPython 3.12 x86-64"
python3 -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --target "$stage/site" "${pkgs[@]}" 2>&1 | grep -v '^WARNING' || true
site="$stage/site"
test -d "$site/nvidia/dali" || { echo "pip did not install DALI into $site" >&2; exit 1; }
installed=$(du -sb "$site" | cut -f1)
# Left out: headers, console scripts, extension modules built for other Pythons, nvImageCodec's
# own Python binding (DALI opens libnvimgcodec.so directly) and its DICOM tools, and the NPP
# libraries DALI never opens (it opens libnppc, libnppicc and libnppig only). The nvJPEG2000,
# nvTIFF and nvCOMP libraries are not fetched: DALI and nvImageCodec load them only for those
# formats.
rm -rf "$site"/nvidia/dali/include "$site"/bin "$site"/nvidia/cu13/include \
  "$site"/nvidia/nvimgcodec/include "$site"/nvidia/nvimgcodec/tools "$site"/nvidia/*/include
find "$site" -name '*.cpython-3*' ! -name '*cpython-312*' -delete
find "$site" -name 'nvimgcodec_impl*' -delete
if [ -d "$site/nvidia/cu13/lib" ]; then
  find "$site/nvidia/cu13/lib" -name 'libnpp*' ! -name 'libnppc.so*' ! -name 'libnppicc.so*' \
    ! -name 'libnppig.so*' -delete
fi
rm -f "$site"/nvidia/nvimgcodec/extensions/lib{nvjpeg2k,nvtiff}_ext.so*  # their libraries are left out
# The gpu extra's CUDA 13 wheels (nvidia/cu13/): numba-cuda loads libnvrtc.so.13 (and its
# builtins) and libnvvm.so.4 with nvvm/libdevice; never the "alt" NVRTC variants or NVVM's cicc
# executable (~190 MB installed).
rm -f "$site"/nvidia/cu13/lib/libnvrtc.alt.so.* "$site"/nvidia/cu13/lib/libnvrtc-builtins.alt.so.*
rm -rf "$site"/nvidia/cu13/nvvm/bin
find "$site" -name __pycache__ -type d -prune -exec rm -rf {} +
# DALI's libraries carry their full symbol tables (.symtab/.strtab, ~60 MB), which nothing reads
# at run time (the dynamic linker uses .dynsym); CUDA kernels (.nv_fatbin) are loaded sections
# and stay. Checked: the CPU test suite's replay and op tests pass on stripped libraries.
if [ "${STRIP:-1}" = 1 ] && ! command -v strip >/dev/null; then
  echo "no strip (binutils) here: the bundle keeps DALI's symbol tables (~5 % larger)" >&2
elif [ "${STRIP:-1}" = 1 ]; then
  find "$site/nvidia/dali" -maxdepth 2 \( -name 'libdali*.so' -o -path '*/.libs/*.so*' \) \
    -type f -exec strip --strip-all {} +
fi
# The photographs of dalidr.data.sample_data (DALIDR_PHOTOS points at them on the GPU machine).
mkdir -p "$stage/photos"
PYTHONPATH="$root" "${PYTHON:-.venv/bin/python}" - "$stage/photos" <<'PY'
import shutil, sys
from dalidr.data.sample_data import bundled_photos
for path in bundled_photos():
    shutil.copy(path, sys.argv[1])
PY
kept=$(du -sb "$site" | cut -f1)
{
  echo "route $route"
  echo "made $(date -u +%Y-%m-%dT%H:%M:%SZ) from commit $(git rev-parse --short HEAD)"
  echo "installed $installed bytes, kept $kept bytes"
  find "$site" -maxdepth 1 -name '*.dist-info' -printf '%f\n' | sed 's/\.dist-info$//' | sort
} > "$stage/BUNDLE.txt"
cat "$stage/BUNDLE.txt"

# Part size: what one call can carry beside the working tree, less 2 MiB of margin.
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null \
  | tail -1 | cut -f1)
part_mb=${PART_MB:-$(( (call_mib * 1048576 - tree) / 1048576 - 2 ))}
rm -rf "$out" && mkdir -p "$out"
# The x86 branch filter before LZMA2 makes machine code ~15 % smaller; -T2 writes independent
# blocks, so xz -T0 can decompress them in parallel on the GPU machine.
tar -C "$stage" -cf - BUNDLE.txt photos site | xz --x86 --lzma2=preset=9e -T2 \
  | split -b "${part_mb}m" -d -a 2 - "$out/part-"
cp "$stage/BUNDLE.txt" "$out/BUNDLE.txt"
(cd "$out" && sha256sum part-* > SHA256SUMS)
parts=$(ls "$out"/part-* | wc -l)
total=$(cat "$out"/part-* | wc -c)
echo "route $route: $total bytes compressed in $parts parts of at most $part_mb MiB" \
  "(working tree $tree bytes)" | tee -a "$out/BUNDLE.txt"
ls -l "$out"
if [ "$verify" = 1 ]; then
  bash bench/gpu/verify_bundle.sh "$out"
fi
cat <<MSG

Device calls, back to back (each within 30 s of the last, so the machine stays warm):
MSG
last=$(( parts - 1 ))
for i in $(seq 0 "$last"); do
  n=$(printf '%02d' "$i")
  if [ "$i" -lt "$last" ]; then
    echo "  carry [\"$out/part-$n\", \"$out/SHA256SUMS\"]  command: bash bench/gpu/stash.sh $n"
  else
    echo "  carry [\"$out/part-$n\", \"$out/SHA256SUMS\"]  command: bash bench/gpu/stash.sh $n && bash bench/gpu/check.sh"
  fi
done
