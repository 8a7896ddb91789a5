// rope.cu — rotary position embedding (HF "rotate_half" layout), in place.
//
// Tensors: x [n, heads * headDim] of T (float or bf16), positions I32 [n], invFreq float [headDim / 2].
// Launch:  1-D grid-stride over n * headDim/2 (row, i) pairs, 256 threads; each thread computes the
//          angle's cos and sin once and rotates pair (i, i + headDim/2) of every head of its row, so
//          consecutive threads touch consecutive elements of a head (coalesced).
// Math it mirrors (backend/cpu/Rope): angle = (float)position * invFreq[i] (a float32 product);
//          cos, sin evaluated in double and rounded to float32 (as the CPU's (float) Math.cos), times
//          attentionScaling in float32; then (a, b) -> (a cos - b sin, b cos + a sin) in float32.
//          The compiler may fuse the products into FMAs (no fast-math, but fmad is on): differences
//          from the CPU are float32 rounding only.
#include "rope.cuh"

template <typename T>
__device__ __forceinline__ void rope_impl(T* x, const int* __restrict__ positions, const float* __restrict__ inv_freq,
                                          int n, int heads, int head_dim, float scaling) {
    int half = head_dim >> 1;
    int64_t total = (int64_t)n * half;
    for (int64_t p = global_thread_index(); p < total; p += grid_stride()) {
        int64_t row = p / half;
        int i = (int)(p - row * half);
        float cs, sn;
        rope_cos_sin(positions[row], inv_freq[i], scaling, cs, sn);
        rope_rotate_heads<T, false>(x, row, i, heads, head_dim, cs, sn);
    }
}

#define QL_ROPE(tn, T)                                                                                           \
    extern "C" __global__ void rope_fwd_##tn(T* x, const int* positions, const float* inv_freq, int n, int heads,  \
                                             int head_dim, float scaling) { pdl_enter();                                     \
        rope_impl<T>(x, positions, inv_freq, n, heads, head_dim, scaling);                                      \
    }

QL_FOR_ACT(QL_ROPE)
