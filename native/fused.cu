// fused.cu — ops the decoder runs back to back, fused into one launch each (decode launches ~15 small kernels per
// layer; every launch saved is ~2 µs of a ~2 ms step). Each computes exactly what its unfused sequence computes,
// element for element and in the same order, so results are bit-identical to the separate kernels (rmsnorm.cu,
// elementwise.cu add, rope.cu) and to the CPU backend up to the same float32 reduction-order rounding.
//
//   add_rmsnorm_<t>_w<w>   resid [n, h] += y [n, h] (rounded to T, as add_fwd does), then
//                          out [n, h] (rows of stride ldo >= h; columns [h, ldo) written as zeros, as rmsnorm_fwd's)
//                          = rmsnorm(resid) * weight [h] exactly as rmsnorm_fwd (same thread/pack
//                          layout, same block_sum tree, same 1/sqrt in double). grid = n blocks, RmsNormKernels.rowThreads;
//                          vec = 1 when h is a multiple of the 16-byte pack (rows 16-byte aligned), else 0.
//                          Rows of at most 4 packs per thread keep their sums in registers and read the weight
//                          before the programmatic-launch wait (add_rmsnorm_registers); longer rows' second pass
//                          reads back only the packs the thread wrote itself.
//   rope_qk_<t>            rotary embedding of q [n, heads*D] and k [n, kvHeads*D] in place, one grid-stride
//                          loop over n * D/2 * groups (row, i, head group) items: the angle's cos/sin computed once
//                          per item for all its heads (groups > 1 only when n * D/2 alone would leave the GPU idle).
//   rope_qk_bwd_<t>        its backward on gq [n, heads*D] and gk [n, kvHeads*D] in place, as two rope_bwd_<t>
//                          (train_elementwise.cu): (ga, gb) -> (ga c + gb s, gb c - ga s), same angle arithmetic;
//                          rows of strides ldq / ldk (heads*D / kvHeads*D, or the joined q/k/v gradient's width).
//   rope_qk_kv_write_<t>   rope_qk_<t> followed by attention.cu's kv_write_<t> in one launch (one kernel fewer per
//                          layer of a decode step, and the rotated k goes straight from registers to the cache): q
//                          [B*T, heads*D] rotated in place; k [B*T, kvHeads*D] rotated into the key cache kc and v
//                          [B*T, kvHeads*D] copied into the value cache vc, both [B, kvHeads, cap, D], row b*T + t at
//                          slot s0 + t (s0 = start, or *start_ptr when not NULL: a decode step captured in a CUDA graph
//                          reads it from device memory, as kv_write does). k itself is left unrotated unless store_k
//                          (nobody reads it after the attention). One grid-stride loop over (row, head group g, pair i)
//                          items, i fastest (consecutive threads touch consecutive elements of one head); groups as in
//                          rope_qk_<t>. Same angle (rope_cos_sin) and rotation expressions as rope.cuh, so the cache
//                          holds bit for bit what the two kernels store.
#include "rmsnorm.cuh"
#include "rope.cuh"

template <typename T, typename W>
__device__ __forceinline__ void add_rmsnorm_impl(T* __restrict__ resid, const T* __restrict__ y,
                                                 const W* __restrict__ w, T* __restrict__ out, int h, float eps,
                                                 int vec, int64_t ldo) {
    __shared__ float scratch[32];
    T* row = resid + (int64_t)blockIdx.x * h;
    const T* yrow = y + (int64_t)blockIdx.x * h;
    T* dst = out + (int64_t)blockIdx.x * ldo;
    constexpr int V = Pack16<T>::N;
    float ss = 0.f;
    if (vec) {
        int4* r4 = reinterpret_cast<int4*>(row);
        const int4* y4 = reinterpret_cast<const int4*>(yrow);
        for (int p = threadIdx.x; p < h / V; p += blockDim.x) {
            Pack16<T> a, b, s;
            a.raw = r4[p];
            b.raw = y4[p];
#pragma unroll
            for (int i = 0; i < V; i++) {
                s.v[i] = from_f32<T>(to_f32(a.v[i]) + to_f32(b.v[i]));
                float f = to_f32(s.v[i]);
                ss += f * f;
            }
            r4[p] = s.raw;
        }
    } else {
        for (int j = threadIdx.x; j < h; j += blockDim.x) {
            T s = from_f32<T>(to_f32(row[j]) + to_f32(yrow[j]));
            row[j] = s;
            float f = to_f32(s);
            ss += f * f;
        }
    }
    float inv = rmsnorm_inverse(ss, h, eps, scratch);
    rmsnorm_write_row(row, w, dst, h, inv, vec);
    rmsnorm_zero_tail(dst, h, ldo, vec);
}

// add_rmsnorm with the row in registers (vec rows of at most ADD_RMSNORM_REG_PACKS packs per thread: h <= 8192 for
// 16-bit T at 256 threads): the weight is read before the programmatic-launch wait (it is a constant; the previous
// kernel cannot be writing it), and the second pass normalizes the sums the thread still holds instead of reading back
// what it wrote. The same per-thread order of the squares, the same block_sum tree and the same arithmetic as
// add_rmsnorm_impl, so the same values bit for bit; one global round trip less, and the weight's off the critical path.
constexpr int ADD_RMSNORM_REG_PACKS = 4;

template <typename T>
__device__ __forceinline__ bool add_rmsnorm_fits_registers(int h, int vec) {
    return vec && h / Pack16<T>::N <= (int)blockDim.x * ADD_RMSNORM_REG_PACKS;
}

template <typename T, typename W>
__device__ __forceinline__ void add_rmsnorm_registers(T* __restrict__ resid, const T* __restrict__ y,
                                                      const W* __restrict__ w, T* __restrict__ out, int h, float eps,
                                                      int64_t ldo) {
    __shared__ float scratch[32];
    constexpr int V = Pack16<T>::N;
    const int packs = h / V;
    float wv[ADD_RMSNORM_REG_PACKS][V];
#pragma unroll
    for (int k = 0; k < ADD_RMSNORM_REG_PACKS; k++) {
        const int p = threadIdx.x + k * blockDim.x;
#pragma unroll
        for (int i = 0; i < V; i++) wv[k][i] = p < packs ? to_f32(w[p * V + i]) : 0.f;
    }
    pdl_enter();
    int4* r4 = reinterpret_cast<int4*>(resid + (int64_t)blockIdx.x * h);
    const int4* y4 = reinterpret_cast<const int4*>(y + (int64_t)blockIdx.x * h);
    T* dst = out + (int64_t)blockIdx.x * ldo;
    int4* d4 = reinterpret_cast<int4*>(dst);
    Pack16<T> s[ADD_RMSNORM_REG_PACKS];
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < ADD_RMSNORM_REG_PACKS; k++) {
        const int p = threadIdx.x + k * blockDim.x;
        if (p < packs) {
            Pack16<T> a, b;
            a.raw = r4[p];
            b.raw = y4[p];
#pragma unroll
            for (int i = 0; i < V; i++) {
                s[k].v[i] = from_f32<T>(to_f32(a.v[i]) + to_f32(b.v[i]));
                float f = to_f32(s[k].v[i]);
                ss += f * f;
            }
            r4[p] = s[k].raw;
        }
    }
    const float inv = rmsnorm_inverse(ss, h, eps, scratch);
#pragma unroll
    for (int k = 0; k < ADD_RMSNORM_REG_PACKS; k++) {
        const int p = threadIdx.x + k * blockDim.x;
        if (p < packs) {
            Pack16<T> z;
#pragma unroll
            for (int i = 0; i < V; i++) z.v[i] = from_f32<T>((to_f32(s[k].v[i]) * inv) * wv[k][i]);
            d4[p] = z.raw;
        }
    }
    rmsnorm_zero_tail(dst, h, ldo, 1);
}

template <typename T, typename W>
__device__ __forceinline__ void add_rmsnorm_entry(T* resid, const T* y, const W* w, T* out, int h, float eps, int vec,
                                                  int64_t ldo) {
    if (add_rmsnorm_fits_registers<T>(h, vec)) {
        add_rmsnorm_registers(resid, y, w, out, h, eps, ldo);
    } else {
        pdl_enter();
        add_rmsnorm_impl(resid, y, w, out, h, eps, vec, ldo);
    }
}

// RoPE (forward, or its backward when BACKWARD) on q [n, heads*D] and k [n, kv_heads*D]. Work item = (row, pair i,
// head group g): the heads + kv_heads heads (q's, then k's) are cut into `groups` consecutive ranges so that a decode
// step (n = 1: only D/2 pairs) still spreads over enough threads; with groups = 1 one angle serves every head of a row.
// The same rotation with 16-byte accesses, for groups == 1 (prefill and training: many rows) when a head's halves are
// whole 16-byte chunks (head_dim % (2 * Pack16<T>::N) == 0) and q, k are 16-byte aligned. Work item = (row, group of V
// consecutive heads of q's then k's, chunk c of V consecutive pairs): V angles (the same rope_cos_sin per pair), then
// per head one 16-byte load and store of each half, the V heads' loads issued together. Why: the pair-per-thread loop
// moves 2 bytes per lane and access (64 bytes per warp instruction) and walks the heads one after the other: the
// training RoPE ran at ~1.7 TB/s (Llama-7B q and k, seq 2048: 37.5 us per call). Same values, element for element.
// Items: rows x ceil(all heads / V) x half / V, at most the pair-per-thread kernel's rows x half when there are at most
// V * V heads, so the launcher's grid (sized for pairs) covers them in one pass (else the grid-stride loop goes on).
template <typename T, bool BACKWARD>
__device__ __forceinline__ void rope_qk_vec_impl(T* q, T* k, int64_t ldq, int64_t ldk, const int* __restrict__ positions,
                                                 const float* __restrict__ inv_freq, int n, int heads, int kv_heads,
                                                 int head_dim, float scaling) {
    constexpr int V = Pack16<T>::N;
    const int half = head_dim >> 1, chunks = half / V, all = heads + kv_heads, hgroups = (all + V - 1) / V;
    const int64_t total = (int64_t)n * hgroups * chunks;
    for (int64_t p = global_thread_index(); p < total; p += grid_stride()) {
        const int c = (int)(p % chunks);
        const int64_t rg = p / chunks;
        const int64_t row = rg / hgroups;
        const int h0 = (int)(rg - row * hgroups) * V, i0 = c * V;
        float cs[V], sn[V];
        const int pos = positions[row];
#pragma unroll
        for (int j = 0; j < V; j++) rope_cos_sin(pos, inv_freq[i0 + j], scaling, cs[j], sn[j]);
        // The V heads U at a time (U heads' loads in flight at once). All V at once held 16 packs and took the bf16
        // kernel to 131 registers: one 256-thread block per SM, latency-bound at 8 warps. U = V / 4: 64 registers,
        // four blocks per SM (V / 2: 95 registers, two).
        constexpr int U = V > 4 ? V / 4 : V;
#pragma unroll
        for (int u0 = 0; u0 < V; u0 += U) {
            T* e[U];
            Pack16<T> a[U], b[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int h = h0 + u0 + u;
                e[u] = h >= all ? nullptr
                       : h < heads ? q + row * ldq + h * head_dim + i0 : k + row * ldk + (h - heads) * head_dim + i0;
                if (e[u] != nullptr) {
                    a[u].raw = *reinterpret_cast<const int4*>(e[u]);
                    b[u].raw = *reinterpret_cast<const int4*>(e[u] + half);
                }
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                if (e[u] == nullptr) continue;
#pragma unroll
                for (int j = 0; j < V; j++) {
                    rope_rotate_pair<T, BACKWARD>(to_f32(a[u].v[j]), to_f32(b[u].v[j]), cs[j], sn[j], a[u].v[j], b[u].v[j]);
                }
                *reinterpret_cast<int4*>(e[u]) = a[u].raw;
                *reinterpret_cast<int4*>(e[u] + half) = b[u].raw;
            }
        }
    }
}

template <typename T, bool BACKWARD>
__device__ __forceinline__ void rope_qk_impl(T* q, T* k, int64_t ldq, int64_t ldk, const int* __restrict__ positions,
                                             const float* __restrict__ inv_freq, int n, int heads, int kv_heads,
                                             int head_dim, float scaling, int groups) {
    if (groups == 1 && head_dim % (2 * Pack16<T>::N) == 0 && (ldq | ldk) % Pack16<T>::N == 0
            && ((reinterpret_cast<uintptr_t>(q) | reinterpret_cast<uintptr_t>(k)) & 15) == 0) {
        rope_qk_vec_impl<T, BACKWARD>(q, k, ldq, ldk, positions, inv_freq, n, heads, kv_heads, head_dim, scaling);
        return;
    }
    int half = head_dim >> 1;
    int all = heads + kv_heads;
    int per = (all + groups - 1) / groups;
    int64_t total = (int64_t)n * half * groups;
    for (int64_t p = global_thread_index(); p < total; p += grid_stride()) {
        int g = (int)(p % groups);
        int64_t pair = p / groups;
        int64_t row = pair / half;
        int i = (int)(pair - row * half);
        int h0 = g * per, h1 = min(h0 + per, all);
        if (h0 >= h1) continue;
        float cs, sn;
        rope_cos_sin(positions[row], inv_freq[i], scaling, cs, sn);
        if (h0 < heads) rope_rotate_head_range<T, BACKWARD>(q, row, i, h0, min(h1, heads), ldq, head_dim, cs, sn);
        if (h1 > heads) rope_rotate_head_range<T, BACKWARD>(k, row, i, max(h0, heads) - heads, h1 - heads, ldk,
                                                            head_dim, cs, sn);
    }
}

// RoPE of q and k fused with the KV-cache write (see rope_qk_kv_write_<t> above). k is rotated by rope.cuh's
// rope_rotate_pair, as rope_qk rotates it, with the results going to the cache instead of back into k.
template <typename T>
__device__ __forceinline__ void rope_qk_kv_write_impl(T* __restrict__ q, T* __restrict__ k, const T* __restrict__ v,
                                                      T* __restrict__ kc, T* __restrict__ vc,
                                                      const int* __restrict__ positions,
                                                      const float* __restrict__ inv_freq, int batch, int tokens,
                                                      int heads, int kv_heads, int head_dim, int cap, int start,
                                                      const int* start_ptr, float scaling, int groups, int store_k) {
    const int half = head_dim >> 1;
    const int all = heads + kv_heads;
    const int per = (all + groups - 1) / groups;
    const int s0 = kv_slot_start(start, start_ptr);
    const int64_t total = (int64_t)batch * tokens * groups * half;
    for (int64_t p = global_thread_index(); p < total; p += grid_stride()) {
        const int i = (int)(p % half);
        const int64_t rest = p / half;
        const int g = (int)(rest % groups);
        const int64_t row = rest / groups;
        const int h0 = g * per, h1 = min(h0 + per, all);
        if (h0 >= h1) continue;
        float cs, sn;
        rope_cos_sin(positions[row], inv_freq[i], scaling, cs, sn);
        if (h0 < heads) rope_rotate_head_range<T, false>(q, row, i, h0, min(h1, heads), (int64_t)heads * head_dim,
                                                         head_dim, cs, sn);
        if (h1 > heads) {
            const int b = (int)(row / tokens), t = (int)(row - (int64_t)b * tokens);
            const int64_t src = row * kv_heads * head_dim + i;                     // k, v: head 0, element i
            const int64_t dst = ((int64_t)b * kv_heads * cap + s0 + t) * head_dim + i; // cache: head 0, slot s0 + t
            const int64_t head_stride = (int64_t)cap * head_dim;
            for (int kh = max(h0, heads) - heads; kh < h1 - heads; kh++) {
                const int64_t e = src + (int64_t)kh * head_dim, c = dst + kh * head_stride;
                const float a = to_f32(k[e]);
                const float bb = to_f32(k[e + half]);
                T ra, rb;
                rope_rotate_pair<T, false>(a, bb, cs, sn, ra, rb);
                kc[c] = ra;
                kc[c + half] = rb;
                vc[c] = v[e];
                vc[c + half] = v[e + half];
                if (store_k) {
                    k[e] = ra;
                    k[e + half] = rb;
                }
            }
        }
    }
}

#define QL_FUSED(tn, T)                                                                                          \
    extern "C" __global__ void add_rmsnorm_##tn##_wf32(T* resid, const T* y, const float* w, T* out, int h,      \
                                                       float eps, int vec, int64_t ldo) {                       \
        add_rmsnorm_entry(resid, y, w, out, h, eps, vec, ldo);                                                   \
    }                                                                                                           \
    extern "C" __global__ void add_rmsnorm_##tn##_wbf16(T* resid, const T* y, const __nv_bfloat16* w, T* out,    \
                                                        int h, float eps, int vec, int64_t ldo) {               \
        add_rmsnorm_entry(resid, y, w, out, h, eps, vec, ldo);                                                   \
    }                                                                                                           \
    extern "C" __global__ void add_rmsnorm_##tn##_wf16(T* resid, const T* y, const __half* w, T* out, int h,     \
                                                       float eps, int vec, int64_t ldo) {                       \
        add_rmsnorm_entry(resid, y, w, out, h, eps, vec, ldo);                                                   \
    }                                                                                                           \
    extern "C" __global__ void rope_qk_##tn(T* q, T* k, const int* positions, const float* inv_freq, int n,       \
                                            int heads, int kv_heads, int head_dim, float scaling, int groups) { pdl_enter(); \
        rope_qk_impl<T, false>(q, k, (int64_t)heads * head_dim, (int64_t)kv_heads * head_dim, positions, inv_freq, n, \
                               heads, kv_heads, head_dim, scaling, groups);                                     \
    }                                                                                                           \
    extern "C" __global__ void rope_qk_bwd_##tn(T* gq, T* gk, int64_t ldq, int64_t ldk, const int* positions,     \
                                                const float* inv_freq, int n, int heads, int kv_heads,          \
                                                int head_dim, float scaling, int groups) { pdl_enter();         \
        rope_qk_impl<T, true>(gq, gk, ldq, ldk, positions, inv_freq, n, heads, kv_heads, head_dim, scaling, groups); \
    }                                                                                                           \
    extern "C" __global__ void rope_qk_kv_write_##tn(T* q, T* k, const T* v, T* kc, T* vc, const int* positions,   \
                                                     const float* inv_freq, int batch, int tokens, int heads,    \
                                                     int kv_heads, int head_dim, int cap, int start,             \
                                                     const int* start_ptr, float scaling, int groups,            \
                                                     int store_k) { pdl_enter();                                 \
        rope_qk_kv_write_impl<T>(q, k, v, kc, vc, positions, inv_freq, batch, tokens, heads, kv_heads, head_dim, \
                                 cap, start, start_ptr, scaling, groups, store_k);                               \
    }

QL_FOR_ACT(QL_FUSED)
