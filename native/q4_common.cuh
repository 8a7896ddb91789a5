// q4_common.cuh — dtype codes and the load / store / rounding helpers of the 4-bit kernels (nf4.cu and nf4_gemv.cu):
// values arrive and leave in the dtype a launch argument names, and rounding to the compute dtype is "round to
// nearest even, then widen back exactly", as dev.qlora4j.quant.Nf4Matmul.round does.
#pragma once
#include "common.cuh"

// Dtype codes (launch arguments): 0 = float32, 1 = bfloat16, 2 = float16.
#define DT_F32 0
#define DT_BF16 1
#define DT_F16 2

__device__ __forceinline__ float load_as_f32(const void* p, int64_t i, int dtype) {
    if (dtype == DT_BF16) return bf16_to_f32(reinterpret_cast<const __nv_bfloat16*>(p)[i]);
    if (dtype == DT_F16) return f16_to_f32(reinterpret_cast<const __half*>(p)[i]);
    return reinterpret_cast<const float*>(p)[i];
}

__device__ __forceinline__ void store_from_f32(void* p, int64_t i, int dtype, float v) {
    if (dtype == DT_BF16) reinterpret_cast<__nv_bfloat16*>(p)[i] = f32_to_bf16(v);
    else if (dtype == DT_F16) reinterpret_cast<__half*>(p)[i] = f32_to_f16(v);
    else reinterpret_cast<float*>(p)[i] = v;
}

// v rounded to the dtype's precision and widened back (exact widening), as Nf4Matmul.round does.
__device__ __forceinline__ float round_to(float v, int dtype) {
    if (dtype == DT_BF16) return bf16_to_f32(f32_to_bf16(v));
    if (dtype == DT_F16) return f16_to_f32(f32_to_f16(v));
    return v;
}
