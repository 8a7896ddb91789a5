// rope.cuh — the rotary-embedding arithmetic shared by rope.cu (forward), train_elementwise.cu (backward) and
// fused.cu (q and k in one launch), so that every kernel rounds exactly as backend/cpu/Rope does:
//   angle = (float)position * inv_freq[i] (a float32 product); cos and sin evaluated in double, rounded to float32,
//   times the attention scaling in float32; forward (a, b) -> (a cos - b sin, b cos + a sin), backward (the rotation
//   by -angle) (ga, gb) -> (ga cos + gb sin, gb cos - ga sin), in float32, one rounding to T per element.
#pragma once
#include "activations.cuh"

__device__ __forceinline__ void rope_cos_sin(int position, float inv_freq_i, float scaling, float& cs, float& sn) {
    float angle = (float)position * inv_freq_i;
    double s, c;
    sincos((double)angle, &s, &c);
    cs = (float)c * scaling;
    sn = (float)s * scaling;
}

// One pair (a, b) rotated by the angle (forward) or by minus the angle (BACKWARD), each result rounded to T once.
// Each product and sum rounded to float32 separately (the _rn intrinsics keep nvcc from contracting them into an FMA,
// which it would do differently at each place this is inlined): the same float32 value in every kernel, and the CPU's.
template <typename T, bool BACKWARD>
__device__ __forceinline__ void rope_rotate_pair(float a, float b, float cs, float sn, T& ra, T& rb) {
    if (BACKWARD) {
        ra = from_f32<T>(__fadd_rn(__fmul_rn(a, cs), __fmul_rn(b, sn)));
        rb = from_f32<T>(__fsub_rn(__fmul_rn(b, cs), __fmul_rn(a, sn)));
    } else {
        ra = from_f32<T>(__fsub_rn(__fmul_rn(a, cs), __fmul_rn(b, sn)));
        rb = from_f32<T>(__fadd_rn(__fmul_rn(b, cs), __fmul_rn(a, sn)));
    }
}

// Rotates pair (i, i + head_dim/2) of heads [h0, h1) of one row of x (rows of stride ld elements, head h at
// h * head_dim) in place.
template <typename T, bool BACKWARD>
__device__ __forceinline__ void rope_rotate_head_range(T* x, int64_t row, int i, int h0, int h1, int64_t ld, int head_dim,
                                                       float cs, float sn) {
    int half = head_dim >> 1;
    T* base = x + row * ld + i;
    for (int h = h0; h < h1; h++) {
        T* e = base + (int64_t)h * head_dim;
        rope_rotate_pair<T, BACKWARD>(to_f32(e[0]), to_f32(e[half]), cs, sn, e[0], e[half]);
    }
}

// Rotates pair (i, i + head_dim/2) of every head of one row of x [rows, heads * head_dim] in place.
template <typename T, bool BACKWARD>
__device__ __forceinline__ void rope_rotate_heads(T* x, int64_t row, int i, int heads, int head_dim, float cs, float sn) {
    rope_rotate_head_range<T, BACKWARD>(x, row, i, 0, heads, (int64_t)heads * head_dim, head_dim, cs, sn);
}
