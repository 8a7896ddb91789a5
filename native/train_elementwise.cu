// train_elementwise.cu — element-wise and per-row ops of the training step (backend/cpu/ElementwiseOps,
// ActivationBackward.siluMul, RopeBackward, Dropout, ColumnSums), for CudaBackend's training overrides.
//
// Tensors (T = float or __nv_bfloat16, the activation dtype; grads accumulated into F32):
//   scale_<t>            a[n] -> out[n] = a * s                          (out may be a: in-place scaling)
//   mul_<t>              a[n], b[n] -> out[n] = a * b
//   axpy_<t>             a[n] += alpha * b[n]   (fmaf(alpha, b, a), as the CPU's VectorMath.axpy)
//   sum_squares_<t>      a[n] -> partial[blockIdx.x] (double): squares summed in float64 (each exact)
//   dropout_<t>          x[n] -> out[n] = keep(seed, i) ? x * scale : 0 (SplitMix64 mask, bit-identical
//                        to backend/cpu/Dropout: u = hash >> 40 >= threshold)
//   row_norms_<t>        x[n, h] -> norms F32 [n] = sqrt(sum x^2)         (one block per row)
//   scale_columns_<t>    x[n, m], s F32 [m] -> out[n, m] = x * s[j]
//   transpose_<t>        x[n, m] -> out[m, n]                             (32 x 32 shared tiles)
//   sum_rows_<t>         g[n, m] -> gb F32 [m] += column sums (one thread per column, rows in order)
//   silu_mul_halves_bwd_<t> the same over one buffer [rows, 2 cols] holding gate's columns then up's, in place
//   silu_mul_bwd_<t>     gate, up, g -> grad_gate = g up s (1 + gate (1 - s)), grad_up = g silu(gate); outputs
//                        may be gate / up (in place); packed: 16-byte accesses (all five pointers aligned)
//   rope_bwd_<t>         grad[n, heads*hd] in place: (ga, gb) -> (ga c + gb s, gb c - ga s)
//   embedding_bwd_<t>    ids I32 [n], g[n, h] -> table F32 [vocab, h] += g rows (atomicAdd: the order of
//                        rows with the same id varies, float32 rounding only); bad ids: status code 1
// Launch: 1-D grid-stride, 256 threads, unless stated above. Arithmetic: float32, one rounding on store.
#include "activations.cuh"
#include "rope.cuh"

template <typename T>
__device__ __forceinline__ void scale_impl(const T* a, float s, T* out, int64_t n) {
    for (int64_t i = global_thread_index(); i < n; i += grid_stride()) out[i] = from_f32<T>(to_f32(a[i]) * s);
}

template <typename T>
__device__ __forceinline__ void mul_impl(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out, int64_t n) {
    for (int64_t i = global_thread_index(); i < n; i += grid_stride()) out[i] = from_f32<T>(to_f32(a[i]) * to_f32(b[i]));
}

template <typename T>
__device__ __forceinline__ void axpy_impl(T* a, float alpha, const T* b, int64_t n) {
    for (int64_t i = global_thread_index(); i < n; i += grid_stride()) {
        a[i] = from_f32<T>(fmaf(alpha, to_f32(b[i]), to_f32(a[i])));
    }
}

// Block partial sums of squares in float64; blockDim.x = 256.
template <typename T>
__device__ __forceinline__ void sum_squares_impl(const T* __restrict__ a, int64_t n, double* __restrict__ partial) {
    __shared__ double scratch[256];
    double s = 0;
    for (int64_t i = global_thread_index(); i < n; i += grid_stride()) {
        double x = (double)to_f32(a[i]);
        s += x * x;
    }
    scratch[threadIdx.x] = s;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) scratch[threadIdx.x] += scratch[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = scratch[0];
}

__device__ __forceinline__ unsigned long long splitmix_hash(unsigned long long seed, unsigned long long i) {
    unsigned long long z = seed + (i + 1ull) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// threshold = (int)(p * 2^24) and scale = 1/(1-p) are computed on the host exactly as Dropout.java does.
template <typename T>
__device__ __forceinline__ void dropout_impl(const T* __restrict__ x, T* __restrict__ out, int64_t n,
                                             unsigned long long seed, int threshold, float scale) {
    for (int64_t i = global_thread_index(); i < n; i += grid_stride()) {
        int u = (int)(splitmix_hash(seed, (unsigned long long)i) >> 40);
        out[i] = u >= threshold ? from_f32<T>(to_f32(x[i]) * scale) : from_f32<T>(0.f);
    }
}

template <typename T>
__device__ __forceinline__ void row_norms_impl(const T* __restrict__ x, float* __restrict__ norms, int h) {
    __shared__ float scratch[32];
    const T* row = x + (int64_t)blockIdx.x * h;
    float s = 0.f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) { float f = to_f32(row[j]); s = fmaf(f, f, s); }
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) norms[blockIdx.x] = sqrtf(s);
}

template <typename T>
__device__ __forceinline__ void scale_columns_impl(const T* __restrict__ x, const float* __restrict__ s,
                                                   T* __restrict__ out, int n, int m) {
    int64_t total = (int64_t)n * m;
    for (int64_t i = global_thread_index(); i < total; i += grid_stride()) {
        out[i] = from_f32<T>(to_f32(x[i]) * s[i % m]);
    }
}

// grid = (ceil(m/32), ceil(n/32)), block = (32, 8).
template <typename T>
__device__ __forceinline__ void transpose_impl(const T* __restrict__ x, T* __restrict__ out, int n, int m) {
    __shared__ T tile[32][33];
    int c0 = blockIdx.x * 32, r0 = blockIdx.y * 32;
    for (int dy = threadIdx.y; dy < 32; dy += blockDim.y) {
        int r = r0 + dy, c = c0 + threadIdx.x;
        if (r < n && c < m) tile[dy][threadIdx.x] = x[(int64_t)r * m + c];
    }
    __syncthreads();
    for (int dy = threadIdx.y; dy < 32; dy += blockDim.y) {
        int c = c0 + dy, r = r0 + threadIdx.x;   // out row c, column r
        if (r < n && c < m) out[(int64_t)c * n + r] = tile[threadIdx.x][dy];
    }
}

template <typename T>
__device__ __forceinline__ void sum_rows_impl(const T* __restrict__ g, float* __restrict__ gb, int n, int m) {
    for (int64_t j = global_thread_index(); j < m; j += grid_stride()) {
        float acc = 0.f;
        for (int r = 0; r < n; r++) acc += to_f32(g[(int64_t)r * m + j]);
        gb[j] += acc;
    }
}

__device__ __forceinline__ void silu_mul_grads(float x, float u, float go, float& grad_gate, float& grad_up) {
    float s = 1.f / (1.f + expf(-x));
    grad_up = go * (x * s);
    grad_gate = (go * u) * (s * (1.f + x * (1.f - s)));
}

// silu_mul_grads on one 16-byte pack of gate, up and g each (raw), rounded to T into dg and du.
template <typename T>
__device__ __forceinline__ void silu_mul_grads_pack(int4 gate, int4 up, int4 g, Pack16<T>& dg, Pack16<T>& du) {
    constexpr int V = Pack16<T>::N;
    Pack16<T> x, u, go;
    x.raw = gate;
    u.raw = up;
    go.raw = g;
#pragma unroll
    for (int i = 0; i < V; i++) {
        float a, b;
        silu_mul_grads(to_f32(x.v[i]), to_f32(u.v[i]), to_f32(go.v[i]), a, b);
        dg.v[i] = from_f32<T>(a);
        du.v[i] = from_f32<T>(b);
    }
}

// No __restrict__ on gate / up / grad_gate / grad_up: the training step passes grad_gate = gate and grad_up = up
// (CudaBackend.siluMulBackwardInPlace); each element is read before it is written, by the same thread. With
// packed != 0 (the launcher saw five 16-byte aligned pointers) the bulk runs on 16-byte packs and the n % pack
// tail element-wise: a [tokens, intermediate] pass moves 5 x its bytes, so it is bandwidth-bound and wants wide
// accesses. With packed == 0 every element goes the element-wise way.
template <typename T>
__device__ __forceinline__ void silu_mul_bwd_impl(const T* gate, const T* up, const T* __restrict__ g, T* grad_gate,
                                                  T* grad_up, int64_t n, int packed) {
    constexpr int V = Pack16<T>::N;
    const int64_t packs = packed ? n / V : 0;
    const int4* gate4 = reinterpret_cast<const int4*>(gate);
    const int4* up4 = reinterpret_cast<const int4*>(up);
    const int4* g4 = reinterpret_cast<const int4*>(g);
    int4* gg4 = reinterpret_cast<int4*>(grad_gate);
    int4* gu4 = reinterpret_cast<int4*>(grad_up);
    for (int64_t p = global_thread_index(); p < packs; p += grid_stride()) {
        Pack16<T> dg, du;
        silu_mul_grads_pack<T>(gate4[p], up4[p], g4[p], dg, du);
        gg4[p] = dg.raw;
        gu4[p] = du.raw;
    }
    for (int64_t i = packs * V + global_thread_index(); i < n; i += grid_stride()) {
        float a, b;
        silu_mul_grads(to_f32(gate[i]), to_f32(up[i]), to_f32(g[i]), a, b);
        grad_gate[i] = from_f32<T>(a);
        grad_up[i] = from_f32<T>(b);
    }
}

// The same gradients for gate and up held as one buffer gu [rows, 2 cols] (gate's columns, then up's), written in
// place over it ([grad_gate | grad_up]: the layout the joined gate/up input-gradient GEMM reads). packed: as
// elementwise.cu's silu_mul_halves (cols a multiple of the pack, gu and g 16-byte aligned).
template <typename T>
__device__ __forceinline__ void silu_mul_halves_bwd_impl(T* gu, const T* __restrict__ g, int64_t rows, int cols, int packed) {
    constexpr int V = Pack16<T>::N;
    if (packed) {
        const int cp = cols / V;
        const int64_t packs = rows * cp;
        int4* gu4 = reinterpret_cast<int4*>(gu);
        const int4* g4 = reinterpret_cast<const int4*>(g);
        for (int64_t p = global_thread_index(); p < packs; p += grid_stride()) {
            int64_t r = p / cp;
            int64_t c = p - r * cp;
            int64_t gi = r * 2 * cp + c, ui = gi + cp;
            Pack16<T> dg, du;
            silu_mul_grads_pack<T>(gu4[gi], gu4[ui], g4[p], dg, du);
            gu4[gi] = dg.raw;
            gu4[ui] = du.raw;
        }
        return;
    }
    for (int64_t i = global_thread_index(); i < rows * cols; i += grid_stride()) {
        int64_t r = i / cols;
        int64_t gi = r * 2 * cols + (i - r * cols), ui = gi + cols;
        float a, b;
        silu_mul_grads(to_f32(gu[gi]), to_f32(gu[ui]), to_f32(g[i]), a, b);
        gu[gi] = from_f32<T>(a);
        gu[ui] = from_f32<T>(b);
    }
}

// Same layout and angle arithmetic as rope.cu's forward; the rotation by -angle.
template <typename T>
__device__ __forceinline__ void rope_bwd_impl(T* g, const int* __restrict__ positions, const float* __restrict__ inv_freq,
                                              int n, int heads, int head_dim, float scaling) {
    int half = head_dim >> 1;
    int64_t total = (int64_t)n * half;
    for (int64_t p = global_thread_index(); p < total; p += grid_stride()) {
        int64_t row = p / half;
        int i = (int)(p - row * half);
        float cs, sn;
        rope_cos_sin(positions[row], inv_freq[i], scaling, cs, sn);
        rope_rotate_heads<T, true>(g, row, i, heads, head_dim, cs, sn);
    }
}

template <typename T>
__device__ __forceinline__ void embedding_bwd_impl(const int* __restrict__ ids, const T* __restrict__ g,
                                                   float* table, int n, int h, int vocab, int* status) {
    int64_t total = (int64_t)n * h;
    for (int64_t i = global_thread_index(); i < total; i += grid_stride()) {
        int row = (int)(i / h);
        int col = (int)(i - (int64_t)row * h);
        int id = ids[row];
        if (id < 0 || id >= vocab) {
            if (col == 0) report_error(status, 1, id, vocab);
            continue;
        }
        atomicAdd(table + (int64_t)id * h + col, to_f32(g[i]));
    }
}

#define QL_TRAIN_ELEMENTWISE(tn, T)                                                                              \
    extern "C" __global__ void scale_##tn(const T* a, float s, T* out, int64_t n) { pdl_enter(); scale_impl<T>(a, s, out, n); } \
    extern "C" __global__ void mul_##tn(const T* a, const T* b, T* out, int64_t n) { pdl_enter(); mul_impl<T>(a, b, out, n); }  \
    extern "C" __global__ void axpy_##tn(T* a, float alpha, const T* b, int64_t n) { pdl_enter(); axpy_impl<T>(a, alpha, b, n); } \
    extern "C" __global__ void sum_squares_##tn(const T* a, int64_t n, double* partial) { pdl_enter();                        \
        sum_squares_impl<T>(a, n, partial);                                                                     \
    }                                                                                                           \
    extern "C" __global__ void dropout_##tn(const T* x, T* out, int64_t n, unsigned long long seed, int threshold, \
                                            float scale) { pdl_enter();                                                      \
        dropout_impl<T>(x, out, n, seed, threshold, scale);                                                     \
    }                                                                                                           \
    extern "C" __global__ void row_norms_##tn(const T* x, float* norms, int h) { pdl_enter(); row_norms_impl<T>(x, norms, h); } \
    extern "C" __global__ void scale_columns_##tn(const T* x, const float* s, T* out, int n, int m) { pdl_enter();            \
        scale_columns_impl<T>(x, s, out, n, m);                                                                 \
    }                                                                                                           \
    extern "C" __global__ void transpose_##tn(const T* x, T* out, int n, int m) { pdl_enter(); transpose_impl<T>(x, out, n, m); } \
    extern "C" __global__ void sum_rows_##tn(const T* g, float* gb, int n, int m) { pdl_enter(); sum_rows_impl<T>(g, gb, n, m); } \
    extern "C" __global__ void silu_mul_bwd_##tn(const T* gate, const T* up, const T* g, T* grad_gate, T* grad_up, \
                                                 int64_t n, int packed) { pdl_enter();                                       \
        silu_mul_bwd_impl<T>(gate, up, g, grad_gate, grad_up, n, packed);                                       \
    }                                                                                                           \
    extern "C" __global__ void silu_mul_halves_bwd_##tn(T* gu, const T* g, int64_t rows, int cols, int packed) { pdl_enter();  \
        silu_mul_halves_bwd_impl<T>(gu, g, rows, cols, packed);                                                 \
    }                                                                                                           \
    extern "C" __global__ void rope_bwd_##tn(T* g, const int* positions, const float* inv_freq, int n, int heads, \
                                             int head_dim, float scaling) { pdl_enter();                                     \
        rope_bwd_impl<T>(g, positions, inv_freq, n, heads, head_dim, scaling);                                  \
    }                                                                                                           \
    extern "C" __global__ void embedding_bwd_##tn(const int* ids, const T* g, float* table, int n, int h, int vocab, \
                                                  int* status) { pdl_enter();                                                \
        embedding_bwd_impl<T>(ids, g, table, n, h, vocab, status);                                              \
    }

QL_FOR_ACT(QL_TRAIN_ELEMENTWISE)
