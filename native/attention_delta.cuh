// attention_delta.cuh — the first step of a flash-attention backward, shared by the float32 kernels
// (attention_train.cu) and the tensor-core ones (attention_tc.cu): delta = rowsum(dO * O) per query and head, in
// float32 (fmaf over the head's dims, then a warp sum).
#pragma once
#include "activations.cuh"

// delta[b, h, t] = dO . O over the head's D dims; one warp per (b, t, h).
template <typename T>
__device__ __forceinline__ void attn_delta_impl(const T* __restrict__ o, const T* __restrict__ dout,
                                                float* __restrict__ delta, int B, int T_, int H, int D) {
    int64_t warps = (int64_t)B * T_ * H;
    int lane = threadIdx.x & 31;
    for (int64_t w = global_thread_index() >> 5; w < warps; w += grid_stride() >> 5) {
        int h = (int)(w % H);
        int64_t row = w / H;   // b * T + t
        const T* a = o + row * H * D + (int64_t)h * D;
        const T* g = dout + row * H * D + (int64_t)h * D;
        float s = 0.f;
        for (int d = lane; d < D; d += 32) s = fmaf(to_f32(a[d]), to_f32(g[d]), s);
        s = warp_sum(s);
        int b = (int)(row / T_), t = (int)(row - (int64_t)b * T_);
        if (lane == 0) delta[((int64_t)b * H + h) * T_ + t] = s;
    }
}

// attn_delta_impl for 16-bit T and a head dim D of 8 x (a power of two up to 32): D / 8 lanes per (row, head), each
// with one 16-byte load of O and of dO (eight products, fmaf in order), then a sum over those lanes; so a warp covers
// 32 / (D / 8) rows (two at D = 128) with all its loads in flight at once. Why: the one-warp-per-row form loads 2
// bytes a lane in D / 32 dependent rounds, too few bytes in flight for DRAM (Llama-7B: 17 us a layer against ~9 us
// for its 32 MB at copy bandwidth). The float32 sum runs in another order than attn_delta_impl's (each lane's eight
// values in turn, then the lanes pairwise), so delta agrees with it to float32 rounding.
template <typename T>
__device__ __forceinline__ bool attn_delta_vec_applies(const T* o, const T* dout, int D) {
    return sizeof(T) == 2 && D % 8 == 0 && D / 8 <= 32 && ((D / 8) & (D / 8 - 1)) == 0
           && ((reinterpret_cast<uintptr_t>(o) | reinterpret_cast<uintptr_t>(dout)) & 15) == 0;
}

template <typename T>
__device__ __forceinline__ void attn_delta_vec_impl(const T* __restrict__ o, const T* __restrict__ dout,
                                                    float* __restrict__ delta, int B, int T_, int H, int D) {
    const int L = D / 8, per_warp = 32 / L;
    const int lane = threadIdx.x & 31, part = lane & (L - 1);
    const int64_t items = (int64_t)B * T_ * H;   // (row, head) pairs: O's item-th D values are row * H * D + h * D
    const int64_t first = (global_thread_index() >> 5) * per_warp + lane / L;
    for (int64_t item = first, step = (grid_stride() >> 5) * per_warp; item - lane / L < items; item += step) {
        float s = 0.f;
        if (item < items) {
            const uint4 a = *reinterpret_cast<const uint4*>(o + item * D + part * 8);
            const uint4 g = *reinterpret_cast<const uint4*>(dout + item * D + part * 8);
            const T* av = reinterpret_cast<const T*>(&a);
            const T* gv = reinterpret_cast<const T*>(&g);
#pragma unroll
            for (int e = 0; e < 8; e++) s = fmaf(to_f32(av[e]), to_f32(gv[e]), s);
        }
        for (int off = L >> 1; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
        if (item < items && part == 0) {
            const int h = (int)(item % H);
            const int64_t row = item / H;
            const int b = (int)(row / T_), t = (int)(row - (int64_t)b * T_);
            delta[((int64_t)b * H + h) * T_ + t] = s;
        }
    }
}

