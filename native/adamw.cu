// adamw.cu — torch.optim.AdamW's element update (optim/AdamWKernel, the CPU twin), one launch per parameter.
//
// Tensors: p, g, m, v F32 [n] (p, m, v updated in place).
// Launch:  1-D grid-stride, 256 threads.
// Math:    bit-identical to AdamWKernel.update: every product and sum is rounded separately (the __f*_rn
//          intrinsics stop the compiler from contracting them into FMAs, which Java does not do), except the
//          lerp, which torch (and the CPU twin) evaluate as an explicit fma.
#include "common.cuh"

extern "C" __global__ void adamw_f32(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                                     float* __restrict__ v, int64_t n, float decay, float lerp_weight, float beta2,
                                     float one_minus_beta2, float neg_step_size, float bias2_sqrt, float eps) {
    bool lerp_from_start = fabsf(lerp_weight) < 0.5f;
    for (int64_t i = global_thread_index(); i < n; i += grid_stride()) {
        float pi = __fmul_rn(p[i], decay);
        float gi = g[i];
        float mi = m[i];
        float diff = __fsub_rn(gi, mi);
        mi = lerp_from_start ? fmaf(lerp_weight, diff, mi) : fmaf(-diff, __fsub_rn(1.f, lerp_weight), gi);
        float vi = __fadd_rn(__fmul_rn(v[i], beta2), __fmul_rn(__fmul_rn(one_minus_beta2, gi), gi));
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bias2_sqrt), eps);
        p[i] = __fadd_rn(pi, __fdiv_rn(__fmul_rn(neg_step_size, mi), denom));
        m[i] = mi;
        v[i] = vi;
    }
}
