// attention_train.cu — causal grouped-query self-attention for training, flash-attention-2 style: the forward
// saves each query's log-sum-exp, the backward recomputes the probabilities tile by tile. No [T, T] matrix.
// (backend/cpu/TrainAttention is the reference.)
//
// Tensors: q, o, dO, dQ [B*T, H*D] of T; k, v, dK, dV [B*T, KH*D] of T; lse, delta F32 [B, H, T];
//          seg I32 [B*T] or null. Query head h reads kv head h / (H/KH).
// Visibility: query t sees key s when s <= t, (window <= 0 or t - s < window) and seg[b*T+s] == seg[b*T+t].
//
// Kernels (block = 256 threads = 8 warps, tiles of 32 rows; D a multiple of 4, at most 32 * DPL):
//   attn_train_fwd_<t>_d<DPL>   grid (ceil(T/32), H, B): a block owns 32 queries, a warp 4 of them; key tiles of
//                               32 in shared memory, lane j scores key j of the tile (float4 dot products), the
//                               online softmax keeps (max, sum) per query, lane l accumulates dims l + 32 i.
//   attn_bwd_delta_<t>          grid-stride over B*H*T warps: delta = dO . O per query (float32).
//   attn_bwd_dq_<t>_d<DPL>      grid (ceil(T/32), H, B): per query, over key tiles: p = exp(s*scale - lse),
//                               dp = dO . v, ds = p (dp - delta) scale, dQ += ds k.
//   attn_bwd_dkv_<t>_d<DPL>     grid (ceil(T/32), KH, B): a block owns 32 keys (a warp 4), loops over the group's
//                               query heads and the query tiles that can see them; lane j takes query j of the
//                               tile: dV += p dO, dK += ds q; GQA heads summed in registers (no scratch).
// Shared memory (dynamic, floats, rows padded to D + 4 so float4 row reads of a quarter-warp hit distinct banks):
//   fwd / dq / dkv: 4 * 32 * (D + 4) floats + 64 ints (67.6 KB at D = 128; the launcher raises the limit).
// Math: float32 throughout, expf / logf (IEEE, no fast math); sums run in other orders than the CPU's, so
//       results differ from it by float32 rounding only. A query with no visible key gets out 0, lse -inf.
#include "activations.cuh"

namespace {
constexpr int TILE = 32;      // queries per block (fwd, dq) and keys per tile; keys per block (dkv)
constexpr int WARPS = 8;
constexpr int RPW = TILE / WARPS;   // rows (queries or keys) per warp

__device__ __forceinline__ bool visible(int t, int s, int window, const int* segq, const int* segk, int qi, int kj,
                                        bool segs) {
    return s <= t && (window <= 0 || t - s < window) && (!segs || segq[qi] == segk[kj]);
}

// Loads rows [r0, r0 + TILE) of head `head` (D wide, row stride `width`) of batch row b into dst [TILE][dp] as
// float; rows at or beyond T are zero.
template <typename T>
__device__ __forceinline__ void load_tile(const T* __restrict__ src, float* dst, int b, int T_, int r0, int width,
                                          int head, int D, int dp) {
    for (int e = threadIdx.x; e < TILE * D; e += blockDim.x) {
        int r = e / D, d = e - r * D;
        int t = r0 + r;
        dst[r * dp + d] = t < T_ ? to_f32(src[((int64_t)b * T_ + t) * width + (int64_t)head * D + d]) : 0.f;
    }
}

__device__ __forceinline__ void load_segs(const int* __restrict__ seg, int* dst, int b, int T_, int r0) {
    if (threadIdx.x < TILE) {
        int t = r0 + threadIdx.x;
        dst[threadIdx.x] = seg != nullptr && t < T_ ? seg[(int64_t)b * T_ + t] : 0;
    }
}

__device__ __forceinline__ float dot4(const float* a, const float* b, int D) {
    float s = 0.f;
    for (int d = 0; d < D; d += 4) {
        float4 x = *reinterpret_cast<const float4*>(a + d);
        float4 y = *reinterpret_cast<const float4*>(b + d);
        s = fmaf(x.x, y.x, s); s = fmaf(x.y, y.y, s); s = fmaf(x.z, y.z, s); s = fmaf(x.w, y.w, s);
    }
    return s;
}
}  // namespace

template <typename T, int DPL>
__device__ __forceinline__ void attn_fwd_impl(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                              const int* __restrict__ seg, T* __restrict__ out, float* __restrict__ lse,
                                              int T_, int H, int KH, int D, float scale, int window) {
    extern __shared__ float smem[];
    const int dp = D + 4;
    float* Qs = smem;
    float* Ks = Qs + TILE * dp;
    float* Vs = Ks + TILE * dp;
    int* segq = reinterpret_cast<int*>(Vs + TILE * dp);
    int* segk = segq + TILE;
    const int q0 = blockIdx.x * TILE, h = blockIdx.y, b = blockIdx.z;
    const int kh = h / (H / KH);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int qw = H * D, kw = KH * D;
    const bool segs = seg != nullptr;
    load_tile(q, Qs, b, T_, q0, qw, h, D, dp);
    load_segs(seg, segq, b, T_, q0);

    float m[RPW], l[RPW], acc[RPW][DPL];
#pragma unroll
    for (int r = 0; r < RPW; r++) {
        m[r] = -INFINITY;
        l[r] = 0.f;
#pragma unroll
        for (int i = 0; i < DPL; i++) acc[r][i] = 0.f;
    }
    const int kStart = window > 0 ? max(0, q0 - window + 1) : 0;
    const int kEnd = min(T_, q0 + TILE);
    for (int k0 = kStart; k0 < kEnd; k0 += TILE) {
        __syncthreads();   // the previous tile is no longer read (and Qs/segq are written before the first)
        load_tile(k, Ks, b, T_, k0, kw, kh, D, dp);
        load_tile(v, Vs, b, T_, k0, kw, kh, D, dp);
        load_segs(seg, segk, b, T_, k0);
        __syncthreads();
        const int s = k0 + lane;
        float p[RPW];
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            int qi = warp * RPW + r, t = q0 + qi;
            bool vis = t < T_ && s < T_ && visible(t, s, window, segq, segk, qi, lane, segs);
            float sc = vis ? dot4(Qs + qi * dp, Ks + lane * dp, D) * scale : -INFINITY;
            float mt = warp_max(sc);
            float mn = fmaxf(m[r], mt);
            float pr = vis ? expf(sc - mn) : 0.f;
            float corr = m[r] == -INFINITY ? 0.f : expf(m[r] - mn);
            l[r] = l[r] * corr + warp_sum(pr);
            m[r] = mn;
#pragma unroll
            for (int i = 0; i < DPL; i++) acc[r][i] *= corr;
            p[r] = pr;
        }
        for (int j = 0; j < TILE; j++) {
            float vv[DPL];
#pragma unroll
            for (int i = 0; i < DPL; i++) {
                int d = lane + 32 * i;
                vv[i] = d < D ? Vs[j * dp + d] : 0.f;
            }
#pragma unroll
            for (int r = 0; r < RPW; r++) {
                float pj = __shfl_sync(0xffffffffu, p[r], j);
#pragma unroll
                for (int i = 0; i < DPL; i++) acc[r][i] = fmaf(pj, vv[i], acc[r][i]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < RPW; r++) {
        int t = q0 + warp * RPW + r;
        if (t >= T_) continue;
        float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
        T* o = out + ((int64_t)b * T_ + t) * qw + (int64_t)h * D;
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            int d = lane + 32 * i;
            if (d < D) o[d] = from_f32<T>(acc[r][i] * inv);
        }
        if (lane == 0) lse[((int64_t)b * H + h) * T_ + t] = l[r] > 0.f ? m[r] + logf(l[r]) : -INFINITY;
    }
}

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

template <typename T, int DPL>
__device__ __forceinline__ void attn_dq_impl(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                             const int* __restrict__ seg, const T* __restrict__ dout,
                                             const float* __restrict__ lse, const float* __restrict__ delta,
                                             T* __restrict__ dq, int T_, int H, int KH, int D, float scale, int window) {
    extern __shared__ float smem[];
    const int dp = D + 4;
    float* Qs = smem;
    float* Gs = Qs + TILE * dp;   // dO tile
    float* Ks = Gs + TILE * dp;
    float* Vs = Ks + TILE * dp;
    int* segq = reinterpret_cast<int*>(Vs + TILE * dp);
    int* segk = segq + TILE;
    const int q0 = blockIdx.x * TILE, h = blockIdx.y, b = blockIdx.z;
    const int kh = h / (H / KH);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int qw = H * D, kw = KH * D;
    const bool segs = seg != nullptr;
    load_tile(q, Qs, b, T_, q0, qw, h, D, dp);
    load_tile(dout, Gs, b, T_, q0, qw, h, D, dp);
    load_segs(seg, segq, b, T_, q0);
    float rl[RPW], rd[RPW], acc[RPW][DPL];
#pragma unroll
    for (int r = 0; r < RPW; r++) {
        int t = q0 + warp * RPW + r;
        int64_t li = ((int64_t)b * H + h) * T_ + t;
        rl[r] = t < T_ ? lse[li] : 0.f;
        rd[r] = t < T_ ? delta[li] : 0.f;
#pragma unroll
        for (int i = 0; i < DPL; i++) acc[r][i] = 0.f;
    }
    const int kStart = window > 0 ? max(0, q0 - window + 1) : 0;
    const int kEnd = min(T_, q0 + TILE);
    for (int k0 = kStart; k0 < kEnd; k0 += TILE) {
        __syncthreads();
        load_tile(k, Ks, b, T_, k0, kw, kh, D, dp);
        load_tile(v, Vs, b, T_, k0, kw, kh, D, dp);
        load_segs(seg, segk, b, T_, k0);
        __syncthreads();
        const int s = k0 + lane;
        float ds[RPW];
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            int qi = warp * RPW + r, t = q0 + qi;
            bool vis = t < T_ && s < T_ && visible(t, s, window, segq, segk, qi, lane, segs);
            float d = 0.f;
            if (vis) {
                float p = expf(dot4(Qs + qi * dp, Ks + lane * dp, D) * scale - rl[r]);
                float dpv = dot4(Gs + qi * dp, Vs + lane * dp, D);
                d = p * (dpv - rd[r]) * scale;
            }
            ds[r] = d;
        }
        for (int j = 0; j < TILE; j++) {
            float kv[DPL];
#pragma unroll
            for (int i = 0; i < DPL; i++) {
                int d = lane + 32 * i;
                kv[i] = d < D ? Ks[j * dp + d] : 0.f;
            }
#pragma unroll
            for (int r = 0; r < RPW; r++) {
                float dj = __shfl_sync(0xffffffffu, ds[r], j);
#pragma unroll
                for (int i = 0; i < DPL; i++) acc[r][i] = fmaf(dj, kv[i], acc[r][i]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < RPW; r++) {
        int t = q0 + warp * RPW + r;
        if (t >= T_) continue;
        T* o = dq + ((int64_t)b * T_ + t) * qw + (int64_t)h * D;
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            int d = lane + 32 * i;
            if (d < D) o[d] = from_f32<T>(acc[r][i]);
        }
    }
}

template <typename T, int DPL>
__device__ __forceinline__ void attn_dkv_impl(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                              const int* __restrict__ seg, const T* __restrict__ dout,
                                              const float* __restrict__ lse, const float* __restrict__ delta,
                                              T* __restrict__ dk, T* __restrict__ dv, int T_, int H, int KH, int D,
                                              float scale, int window) {
    extern __shared__ float smem[];
    const int dp = D + 4;
    float* Ks = smem;
    float* Vs = Ks + TILE * dp;
    float* Qs = Vs + TILE * dp;
    float* Gs = Qs + TILE * dp;
    int* segk = reinterpret_cast<int*>(Gs + TILE * dp);
    int* segq = segk + TILE;
    float* ls = reinterpret_cast<float*>(segq + TILE);   // lse of the query tile
    float* dl = ls + TILE;                               // delta of the query tile
    const int k0 = blockIdx.x * TILE, kh = blockIdx.y, b = blockIdx.z;
    const int group = H / KH;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int qw = H * D, kw = KH * D;
    const bool segs = seg != nullptr;
    load_tile(k, Ks, b, T_, k0, kw, kh, D, dp);
    load_tile(v, Vs, b, T_, k0, kw, kh, D, dp);
    load_segs(seg, segk, b, T_, k0);
    float ak[RPW][DPL], av[RPW][DPL];
#pragma unroll
    for (int r = 0; r < RPW; r++) {
#pragma unroll
        for (int i = 0; i < DPL; i++) { ak[r][i] = 0.f; av[r][i] = 0.f; }
    }
    // Queries that can see keys [k0, k0 + TILE): t in [k0, k0 + TILE - 1 + window - 1] (all t >= k0 without window).
    const int qStart = k0;
    const int qEnd = window > 0 ? min(T_, k0 + TILE - 1 + window) : T_;
    for (int g = 0; g < group; g++) {
        const int h = kh * group + g;
        for (int q0 = qStart; q0 < qEnd; q0 += TILE) {
            __syncthreads();
            load_tile(q, Qs, b, T_, q0, qw, h, D, dp);
            load_tile(dout, Gs, b, T_, q0, qw, h, D, dp);
            load_segs(seg, segq, b, T_, q0);
            if (threadIdx.x < TILE) {
                int t = q0 + threadIdx.x;
                int64_t li = ((int64_t)b * H + h) * T_ + t;
                ls[threadIdx.x] = t < T_ ? lse[li] : 0.f;
                dl[threadIdx.x] = t < T_ ? delta[li] : 0.f;
            }
            __syncthreads();
            const int t = q0 + lane;
            float p[RPW], ds[RPW];
#pragma unroll
            for (int r = 0; r < RPW; r++) {
                int kj = warp * RPW + r, s = k0 + kj;
                bool vis = t < T_ && s < T_ && visible(t, s, window, segq, segk, lane, kj, segs);
                float pr = 0.f, d = 0.f;
                if (vis) {
                    pr = expf(dot4(Qs + lane * dp, Ks + kj * dp, D) * scale - ls[lane]);
                    float dpv = dot4(Gs + lane * dp, Vs + kj * dp, D);
                    d = pr * (dpv - dl[lane]) * scale;
                }
                p[r] = pr;
                ds[r] = d;
            }
            for (int j = 0; j < TILE; j++) {
                float qv[DPL], gv[DPL];
#pragma unroll
                for (int i = 0; i < DPL; i++) {
                    int d = lane + 32 * i;
                    qv[i] = d < D ? Qs[j * dp + d] : 0.f;
                    gv[i] = d < D ? Gs[j * dp + d] : 0.f;
                }
#pragma unroll
                for (int r = 0; r < RPW; r++) {
                    float pj = __shfl_sync(0xffffffffu, p[r], j);
                    float dj = __shfl_sync(0xffffffffu, ds[r], j);
#pragma unroll
                    for (int i = 0; i < DPL; i++) {
                        ak[r][i] = fmaf(dj, qv[i], ak[r][i]);
                        av[r][i] = fmaf(pj, gv[i], av[r][i]);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < RPW; r++) {
        int s = k0 + warp * RPW + r;
        if (s >= T_) continue;
        int64_t o = ((int64_t)b * T_ + s) * kw + (int64_t)kh * D;
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            int d = lane + 32 * i;
            if (d < D) {
                dk[o + d] = from_f32<T>(ak[r][i]);
                dv[o + d] = from_f32<T>(av[r][i]);
            }
        }
    }
}

#define QL_ATTN_TRAIN_D(tn, T, dpl)                                                                              \
    extern "C" __global__ void __launch_bounds__(256) attn_train_fwd_##tn##_d##dpl(                              \
        const T* q, const T* k, const T* v, const int* seg, T* out, float* lse, int T_, int H, int KH, int D,   \
        float scale, int window) {                                                                              \
        attn_fwd_impl<T, dpl>(q, k, v, seg, out, lse, T_, H, KH, D, scale, window);                             \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(256) attn_bwd_dq_##tn##_d##dpl(                                 \
        const T* q, const T* k, const T* v, const int* seg, const T* dout, const float* lse, const float* delta, \
        T* dq, int T_, int H, int KH, int D, float scale, int window) {                                         \
        attn_dq_impl<T, dpl>(q, k, v, seg, dout, lse, delta, dq, T_, H, KH, D, scale, window);                  \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(256) attn_bwd_dkv_##tn##_d##dpl(                                \
        const T* q, const T* k, const T* v, const int* seg, const T* dout, const float* lse, const float* delta, \
        T* dk, T* dv, int T_, int H, int KH, int D, float scale, int window) {                                  \
        attn_dkv_impl<T, dpl>(q, k, v, seg, dout, lse, delta, dk, dv, T_, H, KH, D, scale, window);             \
    }

#define QL_ATTN_TRAIN(tn, T)                                                                                     \
    QL_ATTN_TRAIN_D(tn, T, 2)                                                                                   \
    QL_ATTN_TRAIN_D(tn, T, 4)                                                                                   \
    QL_ATTN_TRAIN_D(tn, T, 8)                                                                                   \
    extern "C" __global__ void attn_bwd_delta_##tn(const T* o, const T* dout, float* delta, int B, int T_, int H, \
                                                   int D) {                                                     \
        attn_delta_impl<T>(o, dout, delta, B, T_, H, D);                                                        \
    }

QL_FOR_ACT(QL_ATTN_TRAIN)
