#!/usr/bin/env bash
# Unpacks the bundle kept in BUNDLE_DIR (default /tmp/bundle) into BUNDLE_TARGET (default
# /tmp/gpu-bundle: site/, photos/, BUNDLE.txt). Every part listed in SHA256SUMS must be there
# and intact: a machine that went cold between calls has lost the earlier parts, and this says
# which. Uses xz (multi-threaded) where installed, else Python's lzma.
set -euo pipefail
bundle=${BUNDLE_DIR:-/tmp/bundle}
target=${BUNDLE_TARGET:-/tmp/gpu-bundle}
python=${PYTHON:-python3}
if [ ! -f "$bundle/SHA256SUMS" ]; then
  echo "no $bundle/SHA256SUMS: carry .gpu-bundle/SHA256SUMS with each part" >&2; exit 1
fi
if ! (cd "$bundle" && sha256sum --quiet -c SHA256SUMS); then
  echo "bundle parts missing or damaged in $bundle (there: $(cd "$bundle" && ls part-* 2>/dev/null | tr '\n' ' ')); the machine went cold between calls: carry every part again" >&2
  exit 1
fi
rm -rf "$target.tmp" && mkdir -p "$target.tmp"
if command -v xz >/dev/null; then
  cat "$bundle"/part-* | xz -d -T0 | tar -x -C "$target.tmp"
else
  cat "$bundle"/part-* | "$python" -c 'import sys, tarfile
tarfile.open(fileobj=sys.stdin.buffer, mode="r|xz").extractall(sys.argv[1], filter="data")' "$target.tmp"
fi
rm -rf "$target" && mv "$target.tmp" "$target"
echo "unpacked $(head -1 "$target/BUNDLE.txt") into $target ($(du -sh "$target" | cut -f1))"
