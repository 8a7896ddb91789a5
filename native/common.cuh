// common.cuh — helpers shared by every kernel family in native/*.cu.
//
// Conventions (see DESIGN.md, "Native code"):
//  - kernels are extern "C" so their PTX names are the plain C names the Java launchers look up;
//  - element counts and offsets are 64-bit (tensors of more than 2^31 elements exist: a 7B model's
//    embedding gradient alone is ~1.3e8, and flattened activations grow with batch x sequence);
//  - 1-D kernels use a grid-stride loop, so the launcher may cap the grid (e.g. 32 blocks per SM)
//    and a launch is correct for any grid size >= 1;
//  - no fast-math: conversions and arithmetic round as IEEE-754 says, which is what the CPU
//    backend (the reference) does, so casts compare bit-exactly.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "pdl.cuh"

// Index of this thread in a 1-D launch, computed in 64 bits (blockIdx.x * blockDim.x can exceed 2^31).
__device__ __forceinline__ int64_t global_thread_index() {
    return (int64_t)blockIdx.x * (int64_t)blockDim.x + (int64_t)threadIdx.x;
}

// Total number of threads in a 1-D launch: the stride of a grid-stride loop.
__device__ __forceinline__ int64_t grid_stride() {
    return (int64_t)gridDim.x * (int64_t)blockDim.x;
}

// The KV-cache slot of a launch's first token: start, or *start_ptr when given (a decode step captured in a CUDA
// graph reads its position from device memory, so that each replay writes the next slot).
__device__ __forceinline__ int kv_slot_start(int start, const int* start_ptr) { return start_ptr ? *start_ptr : start; }

// silu(g) * u in float32 (elementwise.cu's silu_mul, and the joint gate / up decode of nf4_gemv_code.cuh, which must
// give its values bit for bit): expf (IEEE, <= 2 ulp) and an IEEE division, as the CPU twin's RowOps.
__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// Round-to-nearest-even conversions (IEEE; NaN in gives a NaN out, infinities and overflow give inf).
__device__ __forceinline__ __nv_bfloat16 f32_to_bf16(float x) { return __float2bfloat16_rn(x); }
__device__ __forceinline__ float bf16_to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ __half f32_to_f16(float x) { return __float2half_rn(x); }
__device__ __forceinline__ float f16_to_f32(__half x) { return __half2float(x); }
