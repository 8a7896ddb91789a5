#!/usr/bin/env bash
# gpu-aside.sh out|back: moves the large tracked folders the GPU runs do not need out of the working tree before a
# device call (so the transfer stays under its limit) and back afterwards.
set -euo pipefail
root=$(git rev-parse --show-toplevel); aside=/tmp/qlora4j-aside
case "${1:-}" in
  out)  mkdir -p $aside; for p in models kernels-ptx src/test/resources/golden/peft src/test/resources/golden/tokenizer; do
          [ -e "$root/$p" ] || continue
          # an aside copy still there (a "back" that stopped, or a build that remade the path meanwhile): mv would
          # nest the tree's copy inside it; stop and say so
          if [ -e "$aside/$p" ]; then echo "gpu-aside: $aside/$p is still set aside; run 'back' (or remove the stale one) first" >&2; exit 1; fi
          mkdir -p "$aside/$(dirname $p)"; mv "$root/$p" "$aside/$p"; done ;;
  back) for p in models kernels-ptx src/test/resources/golden/peft src/test/resources/golden/tokenizer; do
          [ -e "$aside/$p" ] || continue
          # a path restored meanwhile (git checkout) would get the aside copy nested inside it: stop and say so
          if [ -e "$root/$p" ]; then echo "gpu-aside: $p is in the tree again and also in $aside/$p; keep one" >&2; exit 1; fi
          mv "$aside/$p" "$root/$p"; done ;;
  *) echo "usage: gpu-aside.sh out|back"; exit 2 ;;
esac
