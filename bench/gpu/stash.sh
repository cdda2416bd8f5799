#!/usr/bin/env bash
# One bundle-carrying device call: keeps the carried part N (.gpu-bundle/<route>/part-NN, carried
# with its SHA256SUMS) in /tmp/bundle, which survives while the machine stays warm, and says which
# parts are there, so a machine that went cold between calls shows at once. Call 0 also prints
# the GPU, the driver and the CUDA version it supports: the cuda130 route needs CUDA 13.
# Usage (in the repository root of the device's copy): bash bench/gpu/stash.sh N
set -euo pipefail
n=$(printf '%02d' "$((10#${1:?usage: stash.sh PART_NUMBER}))")
dest=${BUNDLE_DIR:-/tmp/bundle}
shopt -s nullglob
carried=(.gpu-bundle/*/part-"$n")
if [ "${#carried[@]}" -ne 1 ]; then
  echo "expected one carried .gpu-bundle/<route>/part-$n, found ${#carried[@]}" >&2; exit 1
fi
folder=$(dirname "${carried[0]}")
route=$(basename "$folder")
mkdir -p "$dest"
if [ -f "$dest/ROUTE" ] && [ "$(cat "$dest/ROUTE")" != "$route" ]; then
  echo "$dest held parts of route $(cat "$dest/ROUTE"); starting over with $route"
  rm -f "$dest"/part-* "$dest/SHA256SUMS"
fi
echo "$route" > "$dest/ROUTE"
cp "${carried[0]}" "$dest/"
cp "$folder/SHA256SUMS" "$dest/"
have=$(cd "$dest" && ls part-* | tr '\n' ' ')
echo "route $route: part-$n kept in $dest; there now: $have(of $(wc -l < "$dest/SHA256SUMS"))"
if [ "$n" = 00 ] || [ -n "${STASH_PROBE:-}" ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -2 || true
  nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' || echo "nvidia-smi: no CUDA version"
  echo "cores $(nproc); $(python3 --version 2>&1); torch $(python3 -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)' 2>&1 | tail -1)"
fi
