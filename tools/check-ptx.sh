#!/usr/bin/env bash
# Checks that the committed kernels-ptx/ (PTX + MANIFEST) is exactly what native/*.cu compile to:
# rebuilds into a temporary directory with native/Makefile's pinned flags and diffs the two.
# PTX is deterministic for one nvcc release, so a difference means a source was edited without
# `make -C native` (or nvcc differs from the MANIFEST's). Exit 0: identical or nvcc absent (skipped);
# exit 1: mismatch.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
nvcc_bin=${NVCC:-nvcc}
if ! command -v "$nvcc_bin" >/dev/null 2>&1; then
  echo "check-ptx: nvcc not found; skipping the PTX check (install CUDA 13.0 or set NVCC=/path/to/nvcc)"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! make -s -C "$root/native" NVCC="$nvcc_bin" OUT="$tmp" all >"$tmp.log" 2>&1; then
  cat "$tmp.log"; rm -f "$tmp.log"
  echo "check-ptx: building native/*.cu failed (see above)"
  exit 1
fi
rm -f "$tmp.log"
if diff -r "$root/kernels-ptx" "$tmp" >/dev/null; then
  echo "check-ptx: kernels-ptx/ matches native/ ($(grep -m1 '^nvcc ' "$tmp/MANIFEST"))"
  exit 0
fi
diff -r "$root/kernels-ptx" "$tmp" | head -40 || true
echo "check-ptx: MISMATCH between kernels-ptx/ and what native/ compiles to."
echo "  committed: $(grep -m1 '^nvcc ' "$root/kernels-ptx/MANIFEST" 2>/dev/null || echo 'no MANIFEST')"
echo "  here:      $(grep -m1 '^nvcc ' "$tmp/MANIFEST")"
echo "  fix: run 'make -C native' and commit kernels-ptx/ (with the nvcc release the MANIFEST names)"
exit 1
