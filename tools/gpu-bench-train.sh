#!/usr/bin/env bash
# gpu-bench-train.sh: the training benchmarks of bench/RESULTS.md in one device call, ours and the HF peer's
# (hf-peer-bench.py, same card, same call). Run on the GPU machine from the repo root after gpu-pack/gpu-slim:
#   bash tools/gpu-bench-train.sh [quick|full|alternate [ROUNDS]]  > writes $OUT/train-*.txt and $OUT/hf-*.json
# quick: Llama-7B seq 2048 batch 1, checkpointing on/off (and on with the embedding in host memory, the <= 6 GiB
#        configuration), ours and the peer's.
# full:  also batch 4, llama-1b, llama3-8b (vocab 128256, both sides) and llama-70b (ours only: bf16 70B does not fit).
# alternate [ROUNDS]: Llama-7B seq 2048 checkpointing (embedding in host memory), ours then the peer's, ROUNDS times (default 3), and the ratio of
#        each round: the peer's figure moved by 50% between calls in session 7, so one pair per call is a weak ratio.
set -uo pipefail
mode=${1:-quick}; out=${OUT:-/tmp/out}; mkdir -p "$out"
run() { bash .gpu-pack/run main dev.qlora4j.bench.CudaTrainBench "$@" 2>&1 | grep -v '^WARNING'; }
peer() { python3 .gpu-pack/hf-peer-bench.py --train "$@" 2>&1 | grep '^{'; }
if [ "$mode" = alternate ]; then
  for round in $(seq 1 "${2:-3}"); do
    ours=$(run --shape llama-7b --seq 2048 --batch 1 --checkpointing on --host-embedding on --warmup 2 --steps 5 | awk '$1 == "llama-7b" && $2 == "2048" {print $7}')
    theirs=$(peer --shape llama7b --out "$out/hf-7b-ckpt-$round.json" | sed -E 's/.*"tokens_per_s": ([0-9.]+).*/\1/')
    echo "round $round: ours $ours tokens/s, peer $theirs tokens/s, ratio $(awk -v a="$ours" -v b="$theirs" 'BEGIN {printf "%.2f", a / b}')" \
      | tee -a "$out/alternate.txt"
  done
  exit 0
fi
{ run --shape llama-7b --seq 2048 --batch 1 --checkpointing on,off --warmup 2 --steps 5;
  run --shape llama-7b --seq 2048 --batch 1 --checkpointing on --host-embedding on --warmup 2 --steps 5; } | tee "$out/train-7b.txt"
peer --shape llama7b --out "$out/hf-7b-ckpt.json"
peer --shape llama7b --no-checkpointing --out "$out/hf-7b-nockpt.json"
if [ "$mode" = full ]; then
  run --shape llama-7b --seq 2048 --batch 4 --checkpointing on --warmup 1 --steps 3 | tee "$out/train-7b-b4.txt"
  peer --shape llama7b --batch 4 --out "$out/hf-7b-b4.json"
  run --shape llama-1b --seq 2048 --batch 1 --checkpointing on,off --warmup 2 --steps 5 | tee "$out/train-1b.txt"
  peer --shape llama1b --out "$out/hf-1b.json"
  run --shape llama3-8b --seq 2048 --batch 1 --checkpointing on --warmup 2 --steps 4 | tee "$out/train-8b.txt"
  peer --shape llama3-8b --vocab 128256 --out "$out/hf-8b.json"
  run --shape llama-70b --seq 2048 --batch 1 --checkpointing on --warmup 1 --steps 2 | tee "$out/train-70b.txt"
fi
