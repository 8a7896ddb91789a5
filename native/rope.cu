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
#include "activations.cuh"

template <typename T>
__device__ __forceinline__ void rope_impl(T* x, const int* __restrict__ positions, const float* __restrict__ inv_freq,
                                          int n, int heads, int head_dim, float scaling) {
    int half = head_dim >> 1;
    int64_t total = (int64_t)n * half;
    int64_t width = (int64_t)heads * head_dim;
    for (int64_t p = global_thread_index(); p < total; p += grid_stride()) {
        int row = (int)(p / half);
        int i = (int)(p - (int64_t)row * half);
        float angle = (float)positions[row] * inv_freq[i];
        double s, c;
        sincos((double)angle, &s, &c);
        float cs = (float)c * scaling;
        float sn = (float)s * scaling;
        T* base = x + row * width + i;
        for (int h = 0; h < heads; h++) {
            T* e = base + (int64_t)h * head_dim;
            float a = to_f32(e[0]);
            float b = to_f32(e[half]);
            e[0] = from_f32<T>(a * cs - b * sn);
            e[half] = from_f32<T>(b * cs + a * sn);
        }
    }
}

#define QL_ROPE(tn, T)                                                                                           \
    extern "C" __global__ void rope_fwd_##tn(T* x, const int* positions, const float* inv_freq, int n, int heads,  \
                                             int head_dim, float scaling) {                                     \
        rope_impl<T>(x, positions, inv_freq, n, heads, head_dim, scaling);                                      \
    }

QL_FOR_ACT(QL_ROPE)
