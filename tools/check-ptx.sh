#!/usr/bin/env bash
# Checks that the committed kernels-ptx/ (PTX, Hopper cubins, MANIFEST) is exactly what native/*.cu compile to:
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
if ! make -s -j"$(nproc)" -C "$root/native" NVCC="$nvcc_bin" OUT="$tmp" all >"$tmp.log" 2>&1; then
  cat "$tmp.log"; rm -f "$tmp.log"
  echo "check-ptx: building native/*.cu failed (see above)"
  exit 1
fi
rm -f "$tmp.log"
# What must hold: every source's checksum in the MANIFEST is that of the source now (no .cu/.cuh edited
# without rebuilding), the flags and nvcc release are the pinned ones, every source has its PTX, and
# the sources still compile. The PTX text itself is compared too, but a difference only warns: nvcc
# 13.0 is not deterministic on attention_train.cu (seen: the same source giving different register
# numbers and even different shared-memory load widths from one build to the next), so requiring
# byte-identical PTX would fail at random.
canon() { grep -v '^[[:space:]]*\.reg ' "$1" | sed -E 's/%(rd|rs|r|fd|f|p|h|hh|b)[0-9]+/%\1#/g'; }
same=1
for f in "$tmp"/*.ptx; do
  n=$(basename "$f")
  if [ ! -f "$root/kernels-ptx/$n" ]; then echo "check-ptx: kernels-ptx/$n is missing"; same=0; continue; fi
  if ! diff -q <(canon "$root/kernels-ptx/$n") <(canon "$f") >/dev/null; then
    echo "check-ptx: note: kernels-ptx/$n differs from this build in code generation only (nvcc is not deterministic here)"
  fi
done
for f in "$root"/kernels-ptx/*.ptx; do [ -f "$tmp/$(basename "$f")" ] || { echo "check-ptx: $(basename "$f") has no source"; same=0; }; done
# The Hopper cubins: each must be exactly what this nvcc's ptxas makes of the committed PTX beside it (ptxas is
# deterministic), and the set must be the build's.
for f in "$tmp"/*.cubin; do
  n=$(basename "$f"); c="$root/kernels-ptx/$n"
  if [ ! -f "$c" ]; then echo "check-ptx: kernels-ptx/$n is missing"; same=0; continue; fi
  case "$n" in *.sm90a.cubin) src=${n%.cubin}.ptx; arch=sm_90a ;; *) src=${n%.sm90.cubin}.ptx; arch=sm_90 ;; esac
  "$nvcc_bin" -cubin -O3 -arch=$arch "$root/kernels-ptx/$src" -o "$tmp/again.cubin"
  cmp -s "$c" "$tmp/again.cubin" || { echo "check-ptx: kernels-ptx/$n is not what kernels-ptx/$src assembles to"; same=0; }
done
for f in "$root"/kernels-ptx/*.cubin; do [ -f "$tmp/$(basename "$f")" ] || { echo "check-ptx: $(basename "$f") has no source"; same=0; }; done
if ! diff -q <(grep -vE '^(ptx|cubin) ' "$root/kernels-ptx/MANIFEST") <(grep -vE '^(ptx|cubin) ' "$tmp/MANIFEST") >/dev/null; then
  echo "check-ptx: MANIFEST sources, flags or nvcc release differ from native/:"
  diff <(grep -vE '^(ptx|cubin) ' "$root/kernels-ptx/MANIFEST") <(grep -vE '^(ptx|cubin) ' "$tmp/MANIFEST") | head -20
  same=0
fi
if [ "$same" = 1 ]; then
  echo "check-ptx: kernels-ptx/ is built from native/ as it is ($(grep -m1 '^nvcc ' "$tmp/MANIFEST"))"
  exit 0
fi
echo "check-ptx: MISMATCH between kernels-ptx/ and what native/ compiles to."
echo "  committed: $(grep -m1 '^nvcc ' "$root/kernels-ptx/MANIFEST" 2>/dev/null || echo 'no MANIFEST')"
echo "  here:      $(grep -m1 '^nvcc ' "$tmp/MANIFEST")"
echo "  fix: run 'make -C native' and commit kernels-ptx/ (with the nvcc release the MANIFEST names)"
exit 1
