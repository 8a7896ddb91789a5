// elementwise.cu — element-wise ops of the decoder: add, SwiGLU, row gather, bias broadcast.
//
// Tensors (T = float for F32 activations, __nv_bfloat16 for BF16; W = float, bf16 or half weights):
//   add_fwd_<t>            a[n], b[n] -> out[n] = a + b           (out may be a: addInPlace; no restrict)
//   silu_mul_fwd_<t>       gate[n], up[n] -> out[n] = silu(gate) * up = gate / (1 + exp(-gate)) * up
//   silu_mul_halves_fwd_<t> gu[rows, 2 cols] (gate's columns, then up's: the gate/up projections run as one GEMM)
//                          -> out[rows, cols] = silu(gate) * up, element for element what silu_mul_fwd gives
//   gather_rows_fwd_<t>    x[nx, h], rows I32 [r] -> out[r, h] = x[rows[i], :]; a row outside [0, nx)
//                          writes zeros and reports code 2 in the status word
//   bias_rows_<t>_w<w>     b[m] -> y[n, m] = b[j] for every row (the linear's bias, preloaded so that
//                          cuBLAS adds it with beta = 1 and rounds once)
// Launch: 1-D grid-stride, 256 threads, grid capped by the launcher; any grid >= 1 is correct.
//   add / silu_mul: the bulk runs on 16-byte packs (the launcher passes 16-byte aligned pointers: all
//   tensors start at caching-allocator blocks), the n % pack tail element-wise.
// Math it mirrors (backend/cpu/RowOps): float32 arithmetic, one rounding to T on store.
//   silu uses expf (IEEE, <= 2 ulp), as the CPU's Vector API EXP is within 1 ulp.
#include "activations.cuh"

template <typename T>
__device__ __forceinline__ void add_impl(const T* a, const T* b, T* out, int64_t n) {
    constexpr int V = Pack16<T>::N;
    int64_t packs = n / V;
    const int4* a4 = reinterpret_cast<const int4*>(a);
    const int4* b4 = reinterpret_cast<const int4*>(b);
    int4* o4 = reinterpret_cast<int4*>(out);
    for (int64_t p = global_thread_index(); p < packs; p += grid_stride()) {
        Pack16<T> x, y, z;
        x.raw = a4[p];
        y.raw = b4[p];
#pragma unroll
        for (int i = 0; i < V; i++) z.v[i] = from_f32<T>(to_f32(x.v[i]) + to_f32(y.v[i]));
        o4[p] = z.raw;
    }
    for (int64_t i = packs * V + global_thread_index(); i < n; i += grid_stride()) {
        out[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i]));
    }
}


template <typename T>
__device__ __forceinline__ void silu_mul_impl(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ out,
                                              int64_t n) {
    constexpr int V = Pack16<T>::N;
    int64_t packs = n / V;
    const int4* g4 = reinterpret_cast<const int4*>(gate);
    const int4* u4 = reinterpret_cast<const int4*>(up);
    int4* o4 = reinterpret_cast<int4*>(out);
    for (int64_t p = global_thread_index(); p < packs; p += grid_stride()) {
        Pack16<T> g, u, z;
        g.raw = g4[p];
        u.raw = u4[p];
#pragma unroll
        for (int i = 0; i < V; i++) z.v[i] = from_f32<T>(silu_times(to_f32(g.v[i]), to_f32(u.v[i])));
        o4[p] = z.raw;
    }
    for (int64_t i = packs * V + global_thread_index(); i < n; i += grid_stride()) {
        out[i] = from_f32<T>(silu_times(to_f32(gate[i]), to_f32(up[i])));
    }
}

// packed != 0: cols is a multiple of the 16-byte pack and gu / out are 16-byte aligned (the launcher checks), so
// each pack of a row lies inside gate's or up's half.
template <typename T>
__device__ __forceinline__ void silu_mul_halves_impl(const T* __restrict__ gu, T* __restrict__ out, int64_t rows, int cols,
                                                     int packed) {
    constexpr int V = Pack16<T>::N;
    if (packed) {
        const int cp = cols / V;
        const int64_t packs = rows * cp;
        const int4* g4 = reinterpret_cast<const int4*>(gu);
        int4* o4 = reinterpret_cast<int4*>(out);
        for (int64_t p = global_thread_index(); p < packs; p += grid_stride()) {
            int64_t r = p / cp;
            int64_t c = p - r * cp;
            Pack16<T> g, u, z;
            g.raw = g4[r * 2 * cp + c];
            u.raw = g4[r * 2 * cp + cp + c];
#pragma unroll
            for (int i = 0; i < V; i++) z.v[i] = from_f32<T>(silu_times(to_f32(g.v[i]), to_f32(u.v[i])));
            o4[p] = z.raw;
        }
        return;
    }
    for (int64_t i = global_thread_index(); i < rows * cols; i += grid_stride()) {
        int64_t r = i / cols;
        int64_t c = i - r * cols;
        out[i] = from_f32<T>(silu_times(to_f32(gu[r * 2 * cols + c]), to_f32(gu[r * 2 * cols + cols + c])));
    }
}

template <typename T>
__device__ __forceinline__ void gather_rows_impl(const T* __restrict__ x, const int* __restrict__ rows,
                                                 T* __restrict__ out, int r, int h, int nx, int* status) {
    int64_t total = (int64_t)r * h;
    for (int64_t i = global_thread_index(); i < total; i += grid_stride()) {
        int row = (int)(i / h);
        int col = (int)(i - (int64_t)row * h);
        int src = rows[row];
        if (src < 0 || src >= nx) {
            if (col == 0) report_error(status, 2, src, nx);
            out[i] = from_f32<T>(0.f);
        } else {
            out[i] = x[(int64_t)src * h + col];
        }
    }
}

template <typename T, typename W>
__device__ __forceinline__ void bias_rows_impl(T* __restrict__ y, const W* __restrict__ b, int n, int m) {
    int64_t total = (int64_t)n * m;
    for (int64_t i = global_thread_index(); i < total; i += grid_stride()) {
        y[i] = from_f32<T>(to_f32(b[i % m]));
    }
}

#define QL_ELEMENTWISE(tn, T)                                                                                   \
    extern "C" __global__ void add_fwd_##tn(const T* a, const T* b, T* out, int64_t n) { pdl_enter(); add_impl<T>(a, b, out, n); } \
    extern "C" __global__ void silu_mul_fwd_##tn(const T* gate, const T* up, T* out, int64_t n) { pdl_enter();                  \
        silu_mul_impl<T>(gate, up, out, n);                                                                     \
    }                                                                                                           \
    extern "C" __global__ void silu_mul_halves_fwd_##tn(const T* gu, T* out, int64_t rows, int cols, int packed) { \
        pdl_enter();                                                                                            \
        silu_mul_halves_impl<T>(gu, out, rows, cols, packed);                                                   \
    }                                                                                                           \
    extern "C" __global__ void gather_rows_fwd_##tn(const T* x, const int* rows, T* out, int r, int h, int nx,   \
                                                    int* status) { pdl_enter();                                              \
        gather_rows_impl<T>(x, rows, out, r, h, nx, status);                                                    \
    }                                                                                                           \
    extern "C" __global__ void bias_rows_##tn##_wf32(T* y, const float* b, int n, int m) { pdl_enter(); bias_rows_impl(y, b, n, m); } \
    extern "C" __global__ void bias_rows_##tn##_wbf16(T* y, const __nv_bfloat16* b, int n, int m) { pdl_enter();              \
        bias_rows_impl(y, b, n, m);                                                                             \
    }                                                                                                           \
    extern "C" __global__ void bias_rows_##tn##_wf16(T* y, const __half* b, int n, int m) { pdl_enter(); bias_rows_impl(y, b, n, m); }

QL_FOR_ACT(QL_ELEMENTWISE)
