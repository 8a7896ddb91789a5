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

// The same update over many parameters in one launch (CudaAdamW's step): a table of entries, each parameter split
// into chunks of ADAMW_CHUNK elements; CUDA block b updates chunk (b - first_chunk) of the entry whose chunk range
// holds b. State pointers may be device memory or pinned host memory (paged_adamw_32bit: read over the bus, UVA).
struct AdamWEntry {
    float* p;
    const float* g;
    float* m;
    float* v;
    long long n;
    long long first_chunk;   // prefix sum of ceil(n / ADAMW_CHUNK) over the entries before this one
    float decay, lerp_weight, beta2, one_minus_beta2, neg_step_size, bias2_sqrt, eps;
    int pad;
    __nv_bfloat16* copy;     // [n] or null: the parameter's BF16 copy, rewritten with the updated value (one
                             // rounding), so that the LoRA path's copies need no cast launch per tensor and step
};
static_assert(sizeof(AdamWEntry) == 88, "AdamWEntry layout is fixed: CudaAdamW writes it");

#define ADAMW_CHUNK 4096

extern "C" __global__ void __launch_bounds__(256) adamw_f32_multi(const AdamWEntry* __restrict__ table, int count) {
    __shared__ int entry_index;
    const long long b = blockIdx.x;
    if (threadIdx.x == 0) {   // the last entry whose first_chunk <= b
        int lo = 0, hi = count - 1;
        while (lo < hi) {
            int mid = (lo + hi + 1) >> 1;
            if (table[mid].first_chunk <= b) lo = mid; else hi = mid - 1;
        }
        entry_index = lo;
    }
    __syncthreads();
    const AdamWEntry& e = table[entry_index];
    const long long start = (b - e.first_chunk) * ADAMW_CHUNK;
    const long long end = min(e.n, start + ADAMW_CHUNK);
    const bool lerp_from_start = fabsf(e.lerp_weight) < 0.5f;
    for (long long i = start + threadIdx.x; i < end; i += blockDim.x) {
        float pi = __fmul_rn(e.p[i], e.decay);
        float gi = e.g[i];
        float mi = e.m[i];
        float diff = __fsub_rn(gi, mi);
        mi = lerp_from_start ? fmaf(e.lerp_weight, diff, mi) : fmaf(-diff, __fsub_rn(1.f, e.lerp_weight), gi);
        float vi = __fadd_rn(__fmul_rn(e.v[i], e.beta2), __fmul_rn(__fmul_rn(e.one_minus_beta2, gi), gi));
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), e.bias2_sqrt), e.eps);
        const float pn = __fadd_rn(pi, __fdiv_rn(__fmul_rn(e.neg_step_size, mi), denom));
        e.p[i] = pn;
        e.m[i] = mi;
        e.v[i] = vi;
        if (e.copy != nullptr) e.copy[i] = f32_to_bf16(pn);
    }
}
