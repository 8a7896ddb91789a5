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

// The tile layout of a 4-bit weight [N, K] (N % 16 == 0, K % 128 == 0; CudaQuant4bit.Layout.TILES): the bytes of
// bitsandbytes' row layout regrouped as [N / 16 tiles][K / 128 chunks][2 row halves][32 lanes][16 bytes], lane
// 4 (r % 8) + (k % 128) / 32 holding the 16 bytes (32 values) of row r = 16 tile + 8 half + r % 8 from k = 128 chunk +
// 32 (lane % 4) in the row layout's order. So the decode GEMV's warp reads a chunk's 1 KiB for 16 rows contiguously
// (16 rows' 64-byte pieces in the row layout; 10-13% faster code decode, NOTES-nf4-gemv.md, session 21-22).
// The 32-bit word holding values 8 kp .. 8 kp + 7 of row r (kp = piece of the row), chunks = K / 128.
__device__ __forceinline__ uint32_t q4_tile_word(uint32_t r, uint32_t kp, uint32_t chunks) {
    const uint32_t record = (((r >> 4) * chunks + (kp >> 4)) * 2 + ((r >> 3) & 1)) * 32 + 4 * (r & 7) + ((kp >> 2) & 3);
    return record * 4 + (kp & 3);
}

// v rounded to the dtype's precision and widened back (exact widening), as Nf4Matmul.round does.
__device__ __forceinline__ float round_to(float v, int dtype) {
    if (dtype == DT_BF16) return bf16_to_f32(f32_to_bf16(v));
    if (dtype == DT_F16) return f16_to_f32(f32_to_f16(v));
    return v;
}

// Two values rounded to the compute dtype (through the state dtype when DR, i.e. round(compute, round(state, v)))
// as one bf16x2 / f16x2 register, lo in the low half. The cvt rounds to nearest even, as round_to does.
template <bool F16C, bool DR>
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi) {
    uint32_t r;
    if (!F16C) {
        if (DR) {  // state f16, compute bf16: bf16(f16(v))
            __half2 h = __floats2half2_rn(lo, hi);
            float2 f = __half22float2(h);
            lo = f.x; hi = f.y;
        }
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    } else {
        if (DR) {  // state bf16, compute f16: f16(bf16(v))
            __nv_bfloat162 b = __floats2bfloat162_rn(lo, hi);
            float2 f = __bfloat1622float2(b);
            lo = f.x; hi = f.y;
        }
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    }
    return r;
}

template <bool F16C>
__device__ __forceinline__ void mma16816(float* c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
    if (F16C) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    } else {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
}
