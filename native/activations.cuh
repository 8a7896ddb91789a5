// activations.cuh — what the activation kernels (rmsnorm, rope, attention, elementwise, xent, embedding)
// share: float32 <-> storage-type conversions, warp and block reductions, 16-byte packs, and the
// device status word through which kernels report bad indices (the host reads it at the next sync).
#pragma once

#include "common.cuh"
#include <float.h>

// ---- conversions: every kernel computes in float32 and rounds once (nearest even) on store ----
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return bf16_to_f32(x); }
__device__ __forceinline__ float to_f32(__half x) { return f16_to_f32(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return f32_to_bf16(x); }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return f32_to_f16(x); }

// 16 bytes of T: 4 floats or 8 bf16/f16 values, loaded and stored as one int4 (LDG.128 / STG.128).
template <typename T>
struct Pack16 {
    static constexpr int N = 16 / sizeof(T);
    union { int4 raw; T v[N]; };
};

// ---- reductions (blockDim.x a multiple of 32, at most 1024) ----
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block, returned to every thread. scratch: 32 floats of shared memory, reusable after return.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();                       // scratch may still be read by a previous reduction
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.f;
    return warp_sum(v);
}

// Two sums over the block at once (x and y each summed by block_sum's tree, so each equals its block_sum bit for bit)
// with one pair of barriers instead of two. scratch: 64 floats of shared memory, reusable after return.
__device__ __forceinline__ float2 block_sum2(float2 v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v.x = warp_sum(v.x);
    v.y = warp_sum(v.y);
    __syncthreads();                       // scratch may still be read by a previous reduction
    if (lane == 0) {
        scratch[warp] = v.x;
        scratch[32 + warp] = v.y;
    }
    __syncthreads();
    v.x = lane < warps ? scratch[lane] : 0.f;
    v.y = lane < warps ? scratch[32 + lane] : 0.f;
    return make_float2(warp_sum(v.x), warp_sum(v.y));
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : -INFINITY;
    return warp_max(v);
}

// ---- status word: int[3] = {code, offending value, limit}; the first error wins ----
// Codes (mirrored in DeviceStatus.java): 1 embedding id out of range, 2 gather row out of range,
// 3 cross-entropy target out of range, 4 a sampled row's logits not finite (NaN or +infinity).
__device__ __forceinline__ void report_error(int* status, int code, int value, int limit) {
    if (atomicCAS(status, 0, code) == 0) {
        status[1] = value;
        status[2] = limit;
    }
}

// Element type names for the extern "C" wrappers: act types f32/bf16, weight types f32/bf16/f16.
#define QL_FOR_ACT(X) X(f32, float) X(bf16, __nv_bfloat16)
