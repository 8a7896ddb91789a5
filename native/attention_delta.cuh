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
