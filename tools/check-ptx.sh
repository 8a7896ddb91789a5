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
# nvcc occasionally numbers its virtual registers differently from one build to the next (the
# `.reg .f32 %f<N>;` declarations); those lines are left out of the comparison, every instruction is
# compared, and the MANIFEST's source and flag lines must match exactly.
same=1
for f in "$tmp"/*.ptx; do
  n=$(basename "$f")
  if [ ! -f "$root/kernels-ptx/$n" ] || ! diff -q <(grep -v '^[[:space:]]*\.reg ' "$root/kernels-ptx/$n") <(grep -v '^[[:space:]]*\.reg ' "$f") >/dev/null; then
    echo "check-ptx: kernels-ptx/$n differs from what native/ compiles to"; same=0
  fi
done
for f in "$root"/kernels-ptx/*.ptx; do [ -f "$tmp/$(basename "$f")" ] || { echo "check-ptx: $(basename "$f") has no source"; same=0; }; done
if ! diff -q <(grep -v '^ptx ' "$root/kernels-ptx/MANIFEST") <(grep -v '^ptx ' "$tmp/MANIFEST") >/dev/null; then
  echo "check-ptx: MANIFEST sources or flags differ"; same=0
fi
if [ "$same" = 1 ]; then
  echo "check-ptx: kernels-ptx/ matches native/ ($(grep -m1 '^nvcc ' "$tmp/MANIFEST"))"
  exit 0
fi
diff -r "$root/kernels-ptx" "$tmp" | head -40 || true
echo "check-ptx: MISMATCH between kernels-ptx/ and what native/ compiles to."
echo "  committed: $(grep -m1 '^nvcc ' "$root/kernels-ptx/MANIFEST" 2>/dev/null || echo 'no MANIFEST')"
echo "  here:      $(grep -m1 '^nvcc ' "$tmp/MANIFEST")"
echo "  fix: run 'make -C native' and commit kernels-ptx/ (with the nvcc release the MANIFEST names)"
exit 1
