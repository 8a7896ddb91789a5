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
//
// Speedups over the first version (same math: each score is the same float32 dot in the same d order, the same
// online softmax and LSE; the launcher and kernel names are unchanged). Predictions for the H200 Llama-7B step
// (T 2048, D 128, 32 heads; fwd 4.4 ms/call, backward 12 ms/call, shared-memory-instruction bound):
//   (1) register blocking of the score tile: a lane loads its own K row float4 once per 4 dims and reuses it for
//       the warp's 4 queries (fwd), K and V rows for both dots of 4 queries (dq), Q and dO rows for 4 keys (dkv):
//       shared loads per 16 FMAs go from 8 to 5 (fwd, and each of the two dots of dq and dkv). The score phase is
//       about half of each kernel's shared traffic: predicted 1.25-1.35x on fwd, dq and dkv.
//   (2) vectorized row reads in the P.V / dS.K / dS.Q phase when D == 32 * DPL (64, 128, 256): a lane owns VW
//       consecutive dims (VW = 2 or 4) and reads them with one float2/float4 instead of VW scalar loads; other
//       head dims keep the lane + 32 i layout. Predicted 1.1-1.15x on top of (1).
//   (3) vectorized global tile loads (float4 for f32, 4 x bf16 in 8 bytes) when the tensor base is aligned, with
//       one 16-byte shared store instead of 4 (fallback: the scalar loop): the loads are ~10% of a tile's time,
//       predicted 1.05x.
//   (4) reverse query-tile order in fwd and dq (block 0 takes the last, heaviest causal tile) so the light tiles
//       fill the tail of the grid: predicted 1.03-1.08x at 2048 blocks over 132 SMs. dkv's heaviest tiles (key
//       tile 0 sees every query) already come first.
//   (5) no work for fully masked tiles: causal and window ranges were already skipped by the loop bounds; now a
//       warp whose rows see no key (query) of the tile skips its scores and accumulation, and with segments the
//       block checks the tile's segment ids before loading K/V (Q/dO) and skips the tile when no pair is visible.
//       No gain on a single unpacked sequence; with packed sequences the off-diagonal segment tiles cost ~0.
//   Combined prediction for the measured step: fwd ~4.4 -> ~3.0 ms, backward ~12 -> ~8.5 ms (about -230 ms/step).
#include "attention_delta.cuh"

namespace {
constexpr int TILE = 32;      // queries per block (fwd, dq) and keys per tile; keys per block (dkv)
constexpr int WARPS = 8;
constexpr int RPW = TILE / WARPS;   // rows (queries or keys) per warp

__device__ __forceinline__ bool visible(int t, int s, int window, const int* segq, const int* segk, int qi, int kj,
                                        bool segs) {
    return s <= t && (window <= 0 || t - s < window) && (!segs || segq[qi] == segk[kj]);
}

__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 load4(const __nv_bfloat16* p) {
    uint2 u = *reinterpret_cast<const uint2*>(p);
    __nv_bfloat162 a = *reinterpret_cast<__nv_bfloat162*>(&u.x), c = *reinterpret_cast<__nv_bfloat162*>(&u.y);
    return make_float4(to_f32(a.x), to_f32(a.y), to_f32(c.x), to_f32(c.y));
}

// Loads rows [r0, r0 + TILE) of head `head` (D wide, row stride `width`) of batch row b into dst [TILE][dp] as
// float; rows at or beyond T are zero. D, width and dp are multiples of 4, so when src is aligned to 4 elements
// every 4-dim group is one aligned vector load and one 16-byte shared store.
template <typename T>
__device__ __forceinline__ void load_tile(const T* __restrict__ src, float* dst, int b, int T_, int r0, int width,
                                          int head, int D, int dp) {
    if ((reinterpret_cast<uintptr_t>(src) & (4 * sizeof(T) - 1)) == 0) {
        const int D4 = D >> 2;
        for (int e = threadIdx.x; e < TILE * D4; e += blockDim.x) {
            int r = e / D4, d = (e - r * D4) << 2;
            int t = r0 + r;
            float4 x = t < T_ ? load4(src + ((int64_t)b * T_ + t) * width + (int64_t)head * D + d)
                              : make_float4(0.f, 0.f, 0.f, 0.f);
            *reinterpret_cast<float4*>(dst + r * dp + d) = x;
        }
        return;
    }
    for (int e = threadIdx.x; e < TILE * D; e += blockDim.x) {
        int r = e / D, d = e - r * D;
        int t = r0 + r;
        dst[r * dp + d] = t < T_ ? to_f32(src[((int64_t)b * T_ + t) * width + (int64_t)head * D + d]) : 0.f;
    }
}

// Dims a lane owns in the accumulation phase. FULL (D == 32 * DPL): VW consecutive dims per group, so a row is
// read with one float2/float4 per group; otherwise lane + 32 i (dims >= D are padding and never written).
template <int DPL, bool FULL>
__device__ __forceinline__ int lane_dim(int lane, int i) {
    constexpr int VW = DPL < 4 ? DPL : 4;
    return FULL ? VW * lane + 32 * VW * (i / VW) + i % VW : lane + 32 * i;
}

template <int DPL, bool FULL>
__device__ __forceinline__ void load_row(const float* row, int lane, int D, float (&v)[DPL]) {
    if constexpr (FULL) {
        constexpr int VW = DPL < 4 ? DPL : 4;
#pragma unroll
        for (int c = 0; c < DPL / VW; c++) {
            const float* p = row + VW * lane + 32 * VW * c;
            if constexpr (VW == 4) {
                float4 x = *reinterpret_cast<const float4*>(p);
                v[4 * c] = x.x; v[4 * c + 1] = x.y; v[4 * c + 2] = x.z; v[4 * c + 3] = x.w;
            } else {
                float2 x = *reinterpret_cast<const float2*>(p);
                v[2 * c] = x.x; v[2 * c + 1] = x.y;
            }
        }
    } else {
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            int d = lane + 32 * i;
            v[i] = d < D ? row[d] : 0.f;
        }
    }
}

__device__ __forceinline__ void load_segs(const int* __restrict__ seg, int* dst, int b, int T_, int r0) {
    if (threadIdx.x < TILE) {
        int t = r0 + threadIdx.x;
        dst[threadIdx.x] = seg != nullptr && t < T_ ? seg[(int64_t)b * T_ + t] : 0;
    }
}

// True (in every thread) when some query of [q0, q0 + TILE) sees some key of [k0, k0 + TILE); segq / segk are in
// shared memory and must be written before the call (it starts with a barrier). A block-wide barrier.
__device__ __forceinline__ bool tile_any_visible(int q0, int k0, int T_, int window, const int* segq,
                                                 const int* segk) {
    __syncthreads();
    bool any = false;
    for (int e = threadIdx.x; e < TILE * TILE; e += blockDim.x) {
        int qi = e / TILE, kj = e - qi * TILE, t = q0 + qi, s = k0 + kj;
        any |= t < T_ && s < T_ && visible(t, s, window, segq, segk, qi, kj, true);
    }
    return __syncthreads_or(any) != 0;
}

// acc[r] += a[r] . b over D dims (float4 steps, d ascending as in a plain dot): b is this lane's row, read once
// per 4 dims and reused for the RPW rows a + r * dp (broadcast reads within the warp).
__device__ __forceinline__ void dots4(const float* a, int dp, const float* b, int D, float (&acc)[RPW]) {
    for (int d = 0; d < D; d += 4) {
        float4 y = *reinterpret_cast<const float4*>(b + d);
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            float4 x = *reinterpret_cast<const float4*>(a + r * dp + d);
            acc[r] = fmaf(x.x, y.x, acc[r]); acc[r] = fmaf(x.y, y.y, acc[r]);
            acc[r] = fmaf(x.z, y.z, acc[r]); acc[r] = fmaf(x.w, y.w, acc[r]);
        }
    }
}

}  // namespace

template <typename T, int DPL, bool FULL>
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
    // Reverse order: the last query tiles see the most keys (causal), so they start first and the short tiles
    // fill the tail of the grid.
    const int q0 = (gridDim.x - 1 - blockIdx.x) * TILE, h = blockIdx.y, b = blockIdx.z;
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
        load_segs(seg, segk, b, T_, k0);
        if (segs && !tile_any_visible(q0, k0, T_, window, segq, segk)) continue;   // other segments only
        load_tile(k, Ks, b, T_, k0, kw, kh, D, dp);
        load_tile(v, Vs, b, T_, k0, kw, kh, D, dp);
        __syncthreads();
        const int s = k0 + lane;
        unsigned vis = 0;   // bit r: query row r of the warp sees key s
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            int qi = warp * RPW + r, t = q0 + qi;
            if (t < T_ && s < T_ && visible(t, s, window, segq, segk, qi, lane, segs)) vis |= 1u << r;
        }
        // A warp whose queries see no key of the tile would add nothing (p = 0, correction 1): skip it.
        if (!__any_sync(0xffffffffu, vis != 0)) continue;
        float sc[RPW];
#pragma unroll
        for (int r = 0; r < RPW; r++) sc[r] = 0.f;
        dots4(Qs + warp * RPW * dp, dp, Ks + lane * dp, D, sc);
        float p[RPW];
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            float sr = (vis >> r & 1u) ? sc[r] * scale : -INFINITY;
            float mt = warp_max(sr);
            float mn = fmaxf(m[r], mt);
            float pr = (vis >> r & 1u) ? expf(sr - mn) : 0.f;
            float corr = m[r] == -INFINITY ? 0.f : expf(m[r] - mn);
            l[r] = l[r] * corr + warp_sum(pr);
            m[r] = mn;
#pragma unroll
            for (int i = 0; i < DPL; i++) acc[r][i] *= corr;
            p[r] = pr;
        }
        for (int j = 0; j < TILE; j++) {
            float vv[DPL];
            load_row<DPL, FULL>(Vs + j * dp, lane, D, vv);
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
            int d = lane_dim<DPL, FULL>(lane, i);
            if (d < D) o[d] = from_f32<T>(acc[r][i] * inv);
        }
        if (lane == 0) lse[((int64_t)b * H + h) * T_ + t] = l[r] > 0.f ? m[r] + logf(l[r]) : -INFINITY;
    }
}

template <typename T, int DPL, bool FULL>
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
    const int q0 = (gridDim.x - 1 - blockIdx.x) * TILE, h = blockIdx.y, b = blockIdx.z;   // heaviest tiles first
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
        load_segs(seg, segk, b, T_, k0);
        if (segs && !tile_any_visible(q0, k0, T_, window, segq, segk)) continue;
        load_tile(k, Ks, b, T_, k0, kw, kh, D, dp);
        load_tile(v, Vs, b, T_, k0, kw, kh, D, dp);
        __syncthreads();
        const int s = k0 + lane;
        unsigned vis = 0;   // bit r: query row r of the warp sees key s
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            int qi = warp * RPW + r, t = q0 + qi;
            if (t < T_ && s < T_ && visible(t, s, window, segq, segk, qi, lane, segs)) vis |= 1u << r;
        }
        if (!__any_sync(0xffffffffu, vis != 0)) continue;   // every ds of this warp is 0
        float sc[RPW], dpv[RPW];
#pragma unroll
        for (int r = 0; r < RPW; r++) { sc[r] = 0.f; dpv[r] = 0.f; }
        dots4(Qs + warp * RPW * dp, dp, Ks + lane * dp, D, sc);
        dots4(Gs + warp * RPW * dp, dp, Vs + lane * dp, D, dpv);
        float ds[RPW];
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            float d = 0.f;
            if (vis >> r & 1u) {
                float p = expf(sc[r] * scale - rl[r]);
                d = p * (dpv[r] - rd[r]) * scale;
            }
            ds[r] = d;
        }
        for (int j = 0; j < TILE; j++) {
            float kv[DPL];
            load_row<DPL, FULL>(Ks + j * dp, lane, D, kv);
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
            int d = lane_dim<DPL, FULL>(lane, i);
            if (d < D) o[d] = from_f32<T>(acc[r][i]);
        }
    }
}

template <typename T, int DPL, bool FULL>
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
    const int k0 = blockIdx.x * TILE, kh = blockIdx.y, b = blockIdx.z;   // key tile 0 (the heaviest) first
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
            load_segs(seg, segq, b, T_, q0);
            if (segs && !tile_any_visible(q0, k0, T_, window, segq, segk)) continue;
            load_tile(q, Qs, b, T_, q0, qw, h, D, dp);
            load_tile(dout, Gs, b, T_, q0, qw, h, D, dp);
            if (threadIdx.x < TILE) {
                int t = q0 + threadIdx.x;
                int64_t li = ((int64_t)b * H + h) * T_ + t;
                ls[threadIdx.x] = t < T_ ? lse[li] : 0.f;
                dl[threadIdx.x] = t < T_ ? delta[li] : 0.f;
            }
            __syncthreads();
            const int t = q0 + lane;
            unsigned vis = 0;   // bit r: query t sees key row r of the warp
#pragma unroll
            for (int r = 0; r < RPW; r++) {
                int kj = warp * RPW + r, s = k0 + kj;
                if (t < T_ && s < T_ && visible(t, s, window, segq, segk, lane, kj, segs)) vis |= 1u << r;
            }
            if (!__any_sync(0xffffffffu, vis != 0)) continue;   // every p and ds of this warp is 0
            // Lane `lane` holds query t: its Q and dO rows are read once per 4 dims for the warp's 4 keys.
            float sc[RPW], dpv[RPW];
#pragma unroll
            for (int r = 0; r < RPW; r++) { sc[r] = 0.f; dpv[r] = 0.f; }
            dots4(Ks + warp * RPW * dp, dp, Qs + lane * dp, D, sc);
            dots4(Vs + warp * RPW * dp, dp, Gs + lane * dp, D, dpv);
            float p[RPW], ds[RPW];
#pragma unroll
            for (int r = 0; r < RPW; r++) {
                float pr = 0.f, d = 0.f;
                if (vis >> r & 1u) {
                    pr = expf(sc[r] * scale - ls[lane]);
                    d = pr * (dpv[r] - dl[lane]) * scale;
                }
                p[r] = pr;
                ds[r] = d;
            }
            for (int j = 0; j < TILE; j++) {
                float qv[DPL], gv[DPL];
                load_row<DPL, FULL>(Qs + j * dp, lane, D, qv);
                load_row<DPL, FULL>(Gs + j * dp, lane, D, gv);
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
            int d = lane_dim<DPL, FULL>(lane, i);
            if (d < D) {
                dk[o + d] = from_f32<T>(ak[r][i]);
                dv[o + d] = from_f32<T>(av[r][i]);
            }
        }
    }
}

// dkv register bounds (ptxas -v, sm_90a, CUDA 13.0): d2 75 / d4 88 registers, no spills, with the plain bound
// (forcing 3 blocks per SM spills; the first version ran d4 at 80 registers = 3 blocks of 256 with 8 B of spills,
// now d4 fits 2 blocks: if the H200 profile shows dkv_d4 latency-bound, try __launch_bounds__(256, 3) for it);
// d8 needs 200 registers to not spill, and its 133 KB of shared memory allows
// one block per SM anyway, so it says so.
#define DKV_BOUNDS __launch_bounds__(256)
#define DKV_BOUNDS_D8 __launch_bounds__(256, 1)

#define QL_ATTN_TRAIN_D(tn, T, dpl, kvlb)                                                                              \
    extern "C" __global__ void __launch_bounds__(256) attn_train_fwd_##tn##_d##dpl(                                    \
        const T* q, const T* k, const T* v, const int* seg, T* out, float* lse, int T_, int H, int KH, int D,          \
        float scale, int window) {                                                                                     \
        if (D == 32 * dpl) attn_fwd_impl<T, dpl, true>(q, k, v, seg, out, lse, T_, H, KH, D, scale, window);           \
        else attn_fwd_impl<T, dpl, false>(q, k, v, seg, out, lse, T_, H, KH, D, scale, window);                        \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(256) attn_bwd_dq_##tn##_d##dpl(                                       \
        const T* q, const T* k, const T* v, const int* seg, const T* dout, const float* lse, const float* delta,       \
        T* dq, int T_, int H, int KH, int D, float scale, int window) {                                                \
        if (D == 32 * dpl) attn_dq_impl<T, dpl, true>(q, k, v, seg, dout, lse, delta, dq, T_, H, KH, D, scale, window); \
        else attn_dq_impl<T, dpl, false>(q, k, v, seg, dout, lse, delta, dq, T_, H, KH, D, scale, window);             \
    }                                                                                                                  \
    extern "C" __global__ void kvlb attn_bwd_dkv_##tn##_d##dpl(                                                        \
        const T* q, const T* k, const T* v, const int* seg, const T* dout, const float* lse, const float* delta,       \
        T* dk, T* dv, int T_, int H, int KH, int D, float scale, int window) {                                         \
        if (D == 32 * dpl)                                                                                             \
            attn_dkv_impl<T, dpl, true>(q, k, v, seg, dout, lse, delta, dk, dv, T_, H, KH, D, scale, window);          \
        else attn_dkv_impl<T, dpl, false>(q, k, v, seg, dout, lse, delta, dk, dv, T_, H, KH, D, scale, window);        \
    }

#define QL_ATTN_TRAIN(tn, T)                                                                                           \
    QL_ATTN_TRAIN_D(tn, T, 2, DKV_BOUNDS)                                                                              \
    QL_ATTN_TRAIN_D(tn, T, 4, DKV_BOUNDS)                                                                              \
    QL_ATTN_TRAIN_D(tn, T, 8, DKV_BOUNDS_D8)                                                                           \
    extern "C" __global__ void attn_bwd_delta_##tn(const T* o, const T* dout, float* delta, int B, int T_, int H,      \
                                                   int D) {                                                            \
        attn_delta_impl<T>(o, dout, delta, B, T_, H, D);                                                               \
    }

QL_FOR_ACT(QL_ATTN_TRAIN)
