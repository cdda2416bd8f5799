#!/usr/bin/env bash
# One bundle-carrying device call: keeps the carried part N in /tmp/bundle (which survives while
# the machine stays warm) and says which parts are there, so a machine that went cold between
# calls shows at once. The first call also prints the driver and GPU, which decide whether the
# cuda130 route could be used on this machine (CUDA 13 needs a driver >= 580).
# Usage (in the repository root of the device's copy): bash bench/gpu/stash.sh N
set -euo pipefail
n=$(printf '%02d' "$((10#${1:?usage: stash.sh PART_NUMBER}))")
dest=${BUNDLE_DIR:-/tmp/bundle}
mkdir -p "$dest"
test -f ".gpu-bundle/part-$n" || { echo "part-$n was not carried (carry .gpu-bundle/part-$n)" >&2; exit 1; }
cp ".gpu-bundle/part-$n" "$dest/"
cp .gpu-bundle/SHA256SUMS "$dest/" 2>/dev/null || true
expected=$(wc -l < "$dest/SHA256SUMS" 2>/dev/null || echo "?")
have=$(cd "$dest" && ls part-* 2>/dev/null | tr '\n' ' ')
echo "part-$n kept in $dest; there now: $have(of $expected)"
if [ "$n" = 00 ] || [ -n "${STASH_PROBE:-}" ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -2 || true
  nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' || true
  echo "cores $(nproc); $(python3 --version 2>&1); torch $(python3 -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>&1 | tail -1)"
fi
