// rmsnorm.cu — RMSNorm over the hidden dimension.
//
// Tensors: x [n, h] of T (float or bf16 activations); weight [h] of W (float, bf16 or half);
//          out [n, h] of T, rows of stride ldo >= h (a wider buffer: columns [h, ldo) are written as zeros).
// Launch:  grid = n blocks (one row each), block = RmsNormKernels.rowThreads (a multiple of 32), 32 floats of static
//          shared memory for the block reduction. Rows are read with 16-byte loads when h is a multiple
//          of the pack (4 floats / 8 bf16; the launcher passes vec = 1 then, and every row then starts
//          16-byte aligned because blocks from the allocator do), else element by element (vec = 0).
// Math it mirrors (backend/cpu/RowOps.rmsNorm, HF LlamaRMSNorm in float32):
//          mean = (sum of x^2 in float32) / h;  inv = (float)(1 / sqrt((double)(mean + eps)));
//          out = (x * inv) * weight, rounded once to T.
//          The per-thread partial sums and the shuffle tree sum in another order than the CPU's
//          vector lanes: differences are float32 rounding only (~1e-7 relative).
#include "rmsnorm.cuh"

template <typename T, typename W>
__device__ __forceinline__ void rmsnorm_impl(const T* __restrict__ x, const W* __restrict__ w, T* __restrict__ out,
                                             int h, float eps, int vec, int64_t ldo) {
    __shared__ float scratch[32];
    const T* row = x + (int64_t)blockIdx.x * h;
    T* dst = out + (int64_t)blockIdx.x * ldo;
    constexpr int V = Pack16<T>::N;
    float ss = 0.f;
    if (vec) {
        const int4* r4 = reinterpret_cast<const int4*>(row);
        for (int p = threadIdx.x; p < h / V; p += blockDim.x) {
            Pack16<T> a;
            a.raw = r4[p];
#pragma unroll
            for (int i = 0; i < V; i++) { float f = to_f32(a.v[i]); ss += f * f; }
        }
    } else {
        for (int j = threadIdx.x; j < h; j += blockDim.x) { float f = to_f32(row[j]); ss += f * f; }
    }
    float inv = rmsnorm_inverse(ss, h, eps, scratch);
    rmsnorm_write_row(row, w, dst, h, inv, vec);
    rmsnorm_zero_tail(dst, h, ldo, vec);
}

#define QL_RMSNORM(tn, T)                                                                                        \
    extern "C" __global__ void rmsnorm_fwd_##tn##_wf32(const T* x, const float* w, T* out, int h, float eps,      \
                                                       int vec, int64_t ldo) { pdl_enter();                     \
        rmsnorm_impl(x, w, out, h, eps, vec, ldo);                                                              \
    }                                                                                                           \
    extern "C" __global__ void rmsnorm_fwd_##tn##_wbf16(const T* x, const __nv_bfloat16* w, T* out, int h,      \
                                                        float eps, int vec, int64_t ldo) { pdl_enter();        \
        rmsnorm_impl(x, w, out, h, eps, vec, ldo);                                                              \
    }                                                                                                           \
    extern "C" __global__ void rmsnorm_fwd_##tn##_wf16(const T* x, const __half* w, T* out, int h, float eps,     \
                                                       int vec, int64_t ldo) { pdl_enter();                     \
        rmsnorm_impl(x, w, out, h, eps, vec, ldo);                                                              \
    }

QL_FOR_ACT(QL_RMSNORM)
