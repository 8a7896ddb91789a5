#!/usr/bin/env bash
# tools/gpu-bench-dequant.sh — the dequantize microbenchmark on the GPU machine (run from the repository root; nvcc 13, no Java).
# Builds native/bench/dequant_bench.cu (it includes native/nf4.cu, so NEW = the committed kernels) for sm_90a, keeps
# the ptxas report of the dequantize kernels, runs the checks (bit-equal to the OLD body) and the timings.
# Logs: $OUT/dequant_bench.txt (the run), $OUT/ptxas.txt, $OUT/build.txt. Exit code = the bench's (0: all checks passed).
set -uo pipefail
OUT=${OUT:-/tmp/deq-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,memory.total --format=csv > "$OUT/gpu.txt" 2>&1 || true
start=$(date +%s)
if ! nvcc -O3 -std=c++17 -arch=sm_90a -I native -Xptxas -v native/bench/dequant_bench.cu -o /tmp/dequant_bench \
        > "$OUT/build.txt" 2>&1; then
    echo "build failed"; tail -40 "$OUT/build.txt"; exit 2
fi
grep -A3 -E "Compiling entry function '(_Z10old_kernel|_Z10new_kernel|_Z13expand|q4_dequantize)" "$OUT/build.txt" \
    | grep -E "Compiling|registers|spill" > "$OUT/ptxas.txt" || true
echo "build: $(( $(date +%s) - start )) s"
/tmp/dequant_bench 2>&1 | tee "$OUT/dequant_bench.txt"
rc=${PIPESTATUS[0]}
echo "total: $(( $(date +%s) - start )) s, exit $rc"
exit $rc
