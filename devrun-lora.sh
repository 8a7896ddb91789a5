#!/usr/bin/env bash
# The lora-gemm branch's GPU checks, run by the lead on the GPU machine from the repo root (< 2 minutes):
#   1. native/bench/lora_gemm_bench.cu: our kernels vs cuBLAS on the Llama-7B step's LoRA shapes + odd shapes
#      (self-checking: float64 reference, determinism, padding untouched; exit 0 only if all pass), then the same
#      timings with half and double the planned K splits (tuning data for LoraGemmPlan);
#   2. the GPU JUnit tests of the kernels (LoraGemmGpuTest) and of the LoRA paths routed through them.
# Logs go to $OUT (default /tmp/lora-gemm-out).
set -u
OUT=${OUT:-/tmp/lora-gemm-out}
mkdir -p "$OUT"
rc=0
nvcc -O3 -std=c++17 -arch=sm_90a -I native -I native/bench/stub native/bench/lora_gemm_bench.cu \
    native/bench/stub/cublas_shim.cpp -ldl -o "$OUT/lgb" 2>&1 | tee "$OUT/bench-build.log"
if [ -x "$OUT/lgb" ]; then
    "$OUT/lgb" 2>&1 | tee "$OUT/bench.log"; rc=$((rc | PIPESTATUS[0]))
    QL_LG_SPLITS=0.5 "$OUT/lgb" > "$OUT/bench-splits-half.log" 2>&1
    QL_LG_SPLITS=2 "$OUT/lgb" > "$OUT/bench-splits-double.log" 2>&1
    nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1
else
    echo "bench did not build" | tee -a "$OUT/bench.log"; rc=1
fi
if [ -x .gpu-pack/run ]; then
    bash .gpu-pack/run test --details=tree --disable-ansi-colors \
        --include-classname '.*(LoraGemmGpuTest|CudaLoraLinearGpuTest|CudaLoraGroupGpuTest|DequantCacheGpuTest)' \
        2>&1 | tee "$OUT/junit.log"; rc=$((rc | PIPESTATUS[0]))
else
    echo "no .gpu-pack/run: JUnit GPU tests skipped" | tee "$OUT/junit.log"
fi
exit $rc
