// norm_bwd.cu — RMSNorm backward (backend/cpu/ActivationBackward.rmsNorm / rmsNormWeight).
//
// Tensors: x [n, h] of T, weight [h] of W (float, bf16 or half), g [n, h] of T (row stride ldg >= h: a joined
//          input gradient's wider buffer, CudaJoinedInputGrad#intoWide) -> gx [n, h] of T;
//          inv F32 [n] (1/rms per row, written for the weight gradient); gw F32 [h] += sum_rows g x inv;
//          add [n, h] of T or null: gx = round(T, round(T, gx) + add) (the residual stream's skip path, with the bits
//          of a separate add_fwd: one pass over gx fewer in a decoder layer's backward).
// Launch:  rmsnorm_bwd_<t>_w<w> (x, w, eps, g, gx, inv, h, add, ldg): grid = n blocks (one row each) of
//          RmsNormKernels.rowThreads threads (256 for few rows; a quarter of the row's 16-byte packs for many);
//          rmsnorm_bwd_weight_<t> (x, g, inv, gw, n, h, ldg): 1-D grid-stride over the h columns, rows summed in order.
// Math:    r = (float)(1 / sqrt((double)(mean(x^2) + eps))) as the forward; dot = sum_j (g_j w_j) x_j;
//          coef = r^3 dot / h; gx_k = (g_k w_k) r - x_k coef. Float32 throughout; the block reductions sum
//          in another order than the CPU's lanes (float32 rounding only).
#include "activations.cuh"

// Eight weights as floats from w + i (16-byte aligned: one or two vector loads).
__device__ __forceinline__ void load_w8(const float* w, float (&v)[8]) {
    const float4 a = *reinterpret_cast<const float4*>(w), b = *reinterpret_cast<const float4*>(w + 4);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}
template <typename W>
__device__ __forceinline__ void load_w8(const W* w, float (&v)[8]) {
    Pack16<W> p;
    p.raw = *reinterpret_cast<const int4*>(w);
#pragma unroll
    for (int e = 0; e < 8; e++) v[e] = to_f32(p.v[e]);
}

// The row in registers with 16-byte accesses, for 16-bit activations whose row is whole 16-byte chunks, at most
// MAXC per thread (h <= 8 * MAXC * blockDim), every pointer 16-byte aligned: x and g are read once (the loop below
// reads them twice, 2 bytes per lane and access). Returns false (nothing done, the same for the whole block) when
// it does not apply. Same formula; the sums of x^2 and (g w) x run in another order (float32 rounding only).
template <typename T, typename W>
__device__ __forceinline__ bool rmsnorm_bwd_rows_in_registers(const T* __restrict__ x, const W* __restrict__ w, float eps,
                                                              const T* __restrict__ g, T* __restrict__ gx,
                                                              float* __restrict__ inv, int h,
                                                              const T* __restrict__ add, int64_t ldg, float* scratch) {
    if constexpr (sizeof(T) != 2) {
        return false;
    } else {
    constexpr int MAXC = 4;   // h <= 8192 at 256 threads; 8 made 166 registers: one block per SM, latency-bound
    const int chunks = h / 8;
    if (h % 8 != 0 || chunks > MAXC * (int)blockDim.x
            || ((reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(g) | reinterpret_cast<uintptr_t>(gx)
                 | reinterpret_cast<uintptr_t>(w) | reinterpret_cast<uintptr_t>(add)) & 15) != 0) {
        return false;
    }
    const int64_t o = (int64_t)blockIdx.x * h, og = (int64_t)blockIdx.x * ldg;
    // Every load of the row (x, g, the skip path's add and the weights) is issued before the reduction, so the block
    // waits for memory once: the add and the weights were loaded after it before (a second round trip per row).
    Pack16<T> xv[MAXC], gv[MAXC], av[MAXC];
    float wv[MAXC][8];
#pragma unroll
    for (int c = 0; c < MAXC; c++) {
        const int ch = threadIdx.x + c * blockDim.x;
        if (ch < chunks) {
            xv[c].raw = *reinterpret_cast<const int4*>(x + o + 8 * ch);
            gv[c].raw = *reinterpret_cast<const int4*>(g + og + 8 * ch);
            if (add != nullptr) av[c].raw = *reinterpret_cast<const int4*>(add + o + 8 * ch);
            load_w8(w + 8 * ch, wv[c]);
        }
    }
    float ss = 0.f, dot = 0.f;
#pragma unroll
    for (int c = 0; c < MAXC; c++) {
        const int ch = threadIdx.x + c * blockDim.x;
        if (ch >= chunks) continue;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            const float xf = to_f32(xv[c].v[e]);
            ss = fmaf(xf, xf, ss);
            dot = fmaf(to_f32(gv[c].v[e]) * wv[c][e], xf, dot);
        }
    }
    const float2 sums = block_sum2(make_float2(ss, dot), scratch);   // each as block_sum would give it
    ss = sums.x;
    dot = sums.y;
    const float r = (float)(1.0 / sqrt((double)(ss / (float)h + eps)));
    const float coef = r * r * r * dot / (float)h;
    if (threadIdx.x == 0 && inv != nullptr) inv[blockIdx.x] = r;
#pragma unroll
    for (int c = 0; c < MAXC; c++) {
        const int ch = threadIdx.x + c * blockDim.x;
        if (ch >= chunks) continue;
        Pack16<T> out;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            out.v[e] = from_f32<T>((to_f32(gv[c].v[e]) * wv[c][e]) * r - to_f32(xv[c].v[e]) * coef);
            if (add != nullptr) out.v[e] = from_f32<T>(to_f32(out.v[e]) + to_f32(av[c].v[e]));
        }
        *reinterpret_cast<int4*>(gx + o + 8 * ch) = out.raw;
    }
    return true;
    }
}

template <typename T, typename W>
__device__ __forceinline__ void rmsnorm_bwd_impl(const T* __restrict__ x, const W* __restrict__ w, float eps,
                                                 const T* __restrict__ g, T* __restrict__ gx, float* __restrict__ inv,
                                                 int h, const T* __restrict__ add, int64_t ldg) {
    __shared__ float scratch[64];
    if (rmsnorm_bwd_rows_in_registers<T, W>(x, w, eps, g, gx, inv, h, add, ldg, scratch)) return;
    int64_t o = (int64_t)blockIdx.x * h, og = (int64_t)blockIdx.x * ldg;
    float ss = 0.f, dot = 0.f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        float xf = to_f32(x[o + j]);
        ss = fmaf(xf, xf, ss);
        dot = fmaf(to_f32(g[og + j]) * to_f32(w[j]), xf, dot);
    }
    ss = block_sum(ss, scratch);
    dot = block_sum(dot, scratch);
    float r = (float)(1.0 / sqrt((double)(ss / (float)h + eps)));
    float coef = r * r * r * dot / (float)h;
    if (threadIdx.x == 0 && inv != nullptr) inv[blockIdx.x] = r;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        T v = from_f32<T>((to_f32(g[og + j]) * to_f32(w[j])) * r - to_f32(x[o + j]) * coef);
        if (add != nullptr) v = from_f32<T>(to_f32(v) + to_f32(add[o + j]));
        gx[o + j] = v;
    }
}

template <typename T>
__device__ __forceinline__ void rmsnorm_bwd_weight_impl(const T* __restrict__ x, const T* __restrict__ g,
                                                        const float* __restrict__ inv, float* __restrict__ gw,
                                                        int n, int h, int64_t ldg) {
    for (int64_t j = global_thread_index(); j < h; j += grid_stride()) {
        float acc = 0.f;
        for (int r = 0; r < n; r++) {
            int64_t o = (int64_t)r * h + j;
            acc = fmaf(to_f32(x[o]) * inv[r], to_f32(g[(int64_t)r * ldg + j]), acc);
        }
        gw[j] += acc;
    }
}

#define QL_RMSNORM_BWD_W(tn, T, wn, W)                                                                           \
    extern "C" __global__ void rmsnorm_bwd_##tn##_##wn(const T* x, const W* w, float eps, const T* g, T* gx,      \
                                                       float* inv, int h, const T* add, int64_t ldg) { pdl_enter();          \
        rmsnorm_bwd_impl<T, W>(x, w, eps, g, gx, inv, h, add, ldg);                                             \
    }
#define QL_RMSNORM_BWD(tn, T)                                                                                    \
    QL_RMSNORM_BWD_W(tn, T, wf32, float)                                                                        \
    QL_RMSNORM_BWD_W(tn, T, wbf16, __nv_bfloat16)                                                               \
    QL_RMSNORM_BWD_W(tn, T, wf16, __half)                                                                       \
    extern "C" __global__ void rmsnorm_bwd_weight_##tn(const T* x, const T* g, const float* inv, float* gw, int n, int h, \
                                                       int64_t ldg) { pdl_enter();                                           \
        rmsnorm_bwd_weight_impl<T>(x, g, inv, gw, n, h, ldg);                                                   \
    }

QL_FOR_ACT(QL_RMSNORM_BWD)
