// attention_tc.cu — training attention (forward with saved log-sum-exp, and backward) on bf16/f16 tensor cores,
// flash-attention-2 style. Same function, layouts and visibility as attention_train.cu (the float32 CUDA-core
// kernels, which stay for F32 activations and other head dims); backend/cpu/TrainAttention is the reference.
//
// Tensors: q, o, dO, dQ [B*T, H*D] of T; k, v, dK, dV [B*T, KH*D] of T; lse, delta F32 [B, H, T];
//          seg I32 [B*T] or null. Query head h reads kv head h / (H/KH). T (element type) is bf16 or f16.
// Visibility: query t sees key s when s <= t, (window <= 0 or t - s < window) and seg[b*T+s] == seg[b*T+t].
// Requirements (the launcher checks them, else it uses attention_train.cu): D = 64 or 128, every tensor 16-byte
//   aligned (rows are copied in 16-byte chunks), scale > 0 (the running max is kept as max(score) * scale).
//
// Kernels (128 threads = 4 warps; tiles of BM = 64 queries and BN = 64 keys; warp w owns 16 rows of its tile):
//   attn_tc_fwd_<t>_d<D>    grid (ceil(T/64), H, B), the heaviest causal query tile first. Q tile and double-
//                           buffered K/V tiles in shared memory (cp.async); Q fragments are held in registers.
//                           Per key tile: S = Q K^T (mma.m16n8k16, f32 accumulate), online softmax in registers
//                           (exp2 of scores pre-scaled by scale * log2 e), P rounded to T and used as the A
//                           operand of O += P V. Writes O (T) and lse = ln(sum exp(s * scale)) (f32, natural log).
//   attn_tc_delta_<t>       delta = dO . O (f32): D / 8 lanes per (row, head) with 16-byte loads (attention_delta.cuh).
//   attn_tc_dq_<t>_d<D>     grid (ceil(T/64), H, B): a block owns a query tile, loops over key tiles (K/V double
//                           buffered): S = Q K^T, dP = dO V^T, P = exp(S scale - lse), dS = P (dP - delta),
//                           dQ += dS K; dQ * scale is written. No atomics: deterministic.
//   attn_tc_dkv_<t>_d<D>    grid (ceil(T/64), KH, B): a block owns a key tile of one kv head and loops over the
//                           group's query heads and the query tiles that can see it (Q/dO/lse/delta double
//                           buffered), all in the transposed form: S^T = K Q^T, dP^T = V dO^T, P^T, dS^T,
//                           dV += P^T dO, dK += dS^T Q; GQA heads summed in registers; dK * scale is written.
//   attn_wg_dkvs_<t>_d128 / attn_wg_dqs_<t>_d128 (sm90a build, causal without a window): the dK/dV kernel that also
//                           stores each dS tile (rounded to T as its dK product uses it), and a dQ kernel that only
//                           multiplies the stored tiles by K: 5 matmuls per tile pair instead of 7, for a scratch of
//                           B * H * nt (nt + 1) / 2 tiles of 8 KB (nt = ceil(T / 64)).
// Tiles: a (query tile, key tile) pair is skipped when no pair in it is visible (causal, window, and with segment
//   ids when the tiles' id ranges do not overlap), computed without masks when every pair is visible (and both
//   tiles lie inside T), and masked element by element otherwise. Masked scores are -inf (forward) or P = 0
//   (backward, a select, so an lse of -inf can never make a NaN).
// Shared memory (dynamic, rows padded to D + 8 elements: the 8 row addresses of an ldmatrix hit 8 distinct
//   16-byte bank groups): fwd (64 + 4*64) rows, dq (2*64 + 4*64) rows, dkv (2*64 + 4*64) rows + 4*64 floats;
//   at D = 128: 87040, 104448, 105472 bytes (two blocks per SM on an H100/H200).
// Numerics: every product is exact in the f32 accumulator; sums run in other orders than the CPU's. P (forward:
//   [0, 1]) and dS (backward) are rounded to T (bf16: 2^-9 relative) before their second matmul, as in
//   flash-attention 2, and the backward forms dS from P rounded to T in both kernels (the same dS in each); the
//   row sums l use the unrounded f32 P. exp2f of (score * scale * log2 e - max) differs from expf(score * scale -
//   max) by a few f32 ulps. Expected error against the f32 CPU reference on the same
//   bf16 inputs: ~3e-3 relative (out, dQ/dK/dV: dominated by the output rounding to bf16 and the bf16 P / dS);
//   lse ~1e-6 absolute plus the f32 rounding of the scores.
// Hopper (the sm90a build, native/Makefile's SM90A list): the same three kernels also come as attn_wg_*, with every
//   matmul a warpgroup MMA (wgmma.cuh: one warpgroup = the block's 4 warps, 64 rows; operands from shared memory
//   through descriptors, so no ldmatrix) on tiles stored as 8x8 core matrices (WTile); tiles, visibility, k order
//   inside each product, roundings and outputs as above. Every kernel of the sm90a build starts with pdl_enter()
//   (it may be launched as a programmatic dependent, native/pdl.cuh).
#include "attention_delta.cuh"
#include "pdl.cuh"
#include "wgmma.cuh"
#include "mma_sync.cuh"
#include <limits.h>

namespace tc {
constexpr int BM = 64;        // query rows per tile
constexpr int BN = 64;        // key rows per tile
constexpr int THREADS = 128;  // 4 warps x 16 rows
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

// PTX wrappers: native/mma_sync.cuh
using mmas::smem_addr;
using mmas::cp_async16;
using mmas::cp_async_commit;
using mmas::cp_async_wait;
using mmas::ldsm_x4;
using mmas::ldsm_x4_t;
using mmas::mma;
using mmas::pack2;

// The two values of a packed pair as floats (x: the low half).
template <typename T> __device__ __forceinline__ float2 unpack2(uint32_t u);
template <> __device__ __forceinline__ float2 unpack2<__nv_bfloat16>(uint32_t u) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&u));
}
template <> __device__ __forceinline__ float2 unpack2<__half>(uint32_t u) {
    return __half22float2(*reinterpret_cast<__half2*>(&u));
}

// v rounded (nearest even) to T, as a float.
template <typename T> __device__ __forceinline__ float round_to(float v);
template <> __device__ __forceinline__ float round_to<__nv_bfloat16>(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
template <> __device__ __forceinline__ float round_to<__half>(float v) { return __half2float(__float2half_rn(v)); }

// A fragments (16 rows x 16 k) of the k-chunk kk from a 16 x (8 * NB) f32 accumulator tile (the n-blocks 2kk and
// 2kk+1): how P (or dS) computed by one matmul becomes the left operand of the next without shared memory.
template <typename T, int NB>
__device__ __forceinline__ void acc_to_a(const float (&s)[NB][4], int kk, uint32_t (&a)[4]) {
    a[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
    a[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
    a[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    a[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
}

// Online softmax of one score tile (NB n-blocks of 8 keys per thread; r = 0: row g, elements 0-1; r = 1: row g + 8,
// elements 2-3; the quad of 4 threads shares a row): s becomes P = exp2(s c - max) (unrounded f32), the running max
// m (log2 units) and this thread's partial row sums l move on, and corr[r] is the factor O's row r must be scaled
// by (rescale_rows) before this tile's P V is added.
template <int NB>
__device__ __forceinline__ void online_softmax(float (&s)[NB][4], float (&m)[2], float (&l)[2], float (&corr)[2],
                                               float c) {
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < NB; j++) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mn = fmaxf(m[r], mx * c);
        const float base = mn == -INFINITY ? 0.f : mn;   // no visible key yet: keep everything 0, no NaN
        corr[r] = exp2f(m[r] - base);
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < NB; j++) {
            const float p0 = exp2f(fmaf(s[j][2 * r], c, -base)), p1 = exp2f(fmaf(s[j][2 * r + 1], c, -base));
            s[j][2 * r] = p0;
            s[j][2 * r + 1] = p1;
            sum += p0 + p1;
        }
        l[r] = l[r] * corr[r] + sum;   // this thread's columns only; the quad is summed at the end
        m[r] = mn;
    }
}

template <int DB>
__device__ __forceinline__ void rescale_rows(float (&o)[DB][4], const float (&corr)[2]) {
#pragma unroll
    for (int j = 0; j < DB; j++) {
        o[j][0] *= corr[0];
        o[j][1] *= corr[0];
        o[j][2] *= corr[1];
        o[j][3] *= corr[1];
    }
}

// The forward's output for this thread's two query rows tr0, tr1 (those inside T): O / l rounded to T into out
// (row stride H * D, head h) and lse = ln(sum exp(s * scale)) (f32, [B, H, T]), from the running max m and the
// partial row sums l (summed over the quad here).
template <typename T, int D>
__device__ __forceinline__ void store_rows(const float (&o)[D / 8][4], const float (&m)[2], const float (&l)[2],
                                           int tr0, int tr1, int tq, int b, int h, int T_, int H,
                                           T* __restrict__ out, float* __restrict__ lse) {
    const int qw = H * D;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float lt = l[r];
        lt += __shfl_xor_sync(0xffffffffu, lt, 1);
        lt += __shfl_xor_sync(0xffffffffu, lt, 2);
        const int t = r == 0 ? tr0 : tr1;
        if (t >= T_) continue;
        const float inv = lt > 0.f ? 1.f / lt : 0.f;
        T* orow = out + ((int64_t)b * T_ + t) * qw + (int64_t)h * D;
#pragma unroll
        for (int j = 0; j < D / 8; j++) {
            *reinterpret_cast<uint32_t*>(orow + 8 * j + 2 * tq) = pack2<T>(o[j][2 * r] * inv, o[j][2 * r + 1] * inv);
        }
        if (tq == 0) lse[((int64_t)b * H + h) * T_ + t] = lt > 0.f ? m[r] * LN2 + logf(lt) : -INFINITY;
    }
}

// ---- stored dS (Hopper backward, causal without a window): the dK/dV kernel writes each dS tile it forms, and the dQ
// kernel reads them instead of recomputing S, P, dP and dS (5 matmuls per tile pair in all instead of 7). ----

// Element offset of the dS tile (query tile qi, key tile ki <= qi) of query head h, batch row b, in the scratch: the
// lower triangle of each (b, h) in row order, nt = ceil(T / 64) tiles a side, 64 x 64 values (8 KB) per tile.
__device__ __forceinline__ int64_t ds_tile_offset(int b, int h, int H, int nt, int qi, int ki) {
    return (((int64_t)b * H + h) * ((int64_t)nt * (nt + 1) / 2) + (int64_t)qi * (qi + 1) / 2 + ki) * (BM * BN);
}

// The 8x8 b16 matrix held by the warp (lane l: row l / 4, columns 2 (l % 4) and + 1) transposed, in the same layout.
__device__ __forceinline__ uint32_t transpose8x8(uint32_t a) {
    uint32_t d;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(d) : "r"(a));
    return d;
}

// Writes a dS tile from the dK/dV kernel's dS^T accumulator (this warp: key rows 16 warp .. + 15, 64 query columns),
// rounded to T exactly as its dK product rounds it, in the dQ kernel's A-fragment order: 16 bytes per (query row
// group c, key chunk w, lane) at uint4 (c * 4 + w) * 32 + lane, so warp c of the dQ kernel reads its A operand for
// key chunk w with one coalesced 16-byte load per lane. dS's A fragment a' (query rows 16c.., keys 16w..) is dS^T's
// a (key rows 16w.., query columns 16c..) with each 8x8 block transposed and the two off-diagonal blocks swapped.
// store_ds_frags stores query row group c from its A fragments a = acc_to_a(dS^T, c).
template <typename T>
__device__ __forceinline__ void store_ds_frags(T* __restrict__ tile, const uint32_t (&a)[4], int c, int warp, int lane) {
    uint4* out = reinterpret_cast<uint4*>(tile) + warp * 32 + lane + c * 4 * 32;
    __stcg(out, make_uint4(transpose8x8(a[0]), transpose8x8(a[2]), transpose8x8(a[1]), transpose8x8(a[3])));
}
template <typename T>
__device__ __forceinline__ void store_ds_tile(T* __restrict__ tile, const float (&dst)[8][4], int warp, int lane) {
#pragma unroll
    for (int c = 0; c < 4; c++) {
        uint32_t a[4];
        acc_to_a<T, 8>(dst, c, a);
        store_ds_frags<T>(tile, a, c, warp, lane);
    }
}

// ---- shared-memory tiles: rows of D elements at a stride of D + 8 ----
template <int D>
struct Tile {
    static constexpr int STRIDE = D + 8;                       // elements
    static constexpr int ROW_BYTES = STRIDE * 2;
    static constexpr int BYTES = 64 * ROW_BYTES;               // a 64-row tile
    // Address of the A fragment x4 (rows r0..r0+15, cols c0..c0+15): matrices (rows 0-7|8-15) x (cols 0-7|8-15)
    // in the order a0 a1 a2 a3.
    __device__ static uint32_t a_addr(uint32_t base, int r0, int c0, int lane) {
        int r = r0 + (lane & 7) + ((lane >> 3) & 1) * 8, c = c0 + (lane >> 4) * 8;
        return base + r * ROW_BYTES + c * 2;
    }
    // B fragments of two n-blocks from rows = n (keys), cols = k (dims), no transpose: matrices
    // (n 0-7, k 0-7) = b0 of n-block 0, (n 0-7, k 8-15) = b1 of n-block 0, then the same for n 8-15.
    __device__ static uint32_t b_addr(uint32_t base, int n0, int k0, int lane) {
        int r = n0 + (lane & 7) + (lane >> 4) * 8, c = k0 + ((lane >> 3) & 1) * 8;
        return base + r * ROW_BYTES + c * 2;
    }
    // B fragments of two n-blocks from rows = k, cols = n (transposed load): matrices (k 0-7, n 0-7) = b0,
    // (k 8-15, n 0-7) = b1 of n-block 0, then the same for n 8-15 (the A-fragment address pattern).
    __device__ static uint32_t bt_addr(uint32_t base, int k0, int n0, int lane) { return a_addr(base, k0, n0, lane); }
};

// ---- Hopper tiles (wgmma): 64 rows x D in 128-byte-swizzled column blocks of 64 values (wgmma.cuh): 16-byte chunk
// ch of row r at (ch / 8) * 8192 + r * 128 + ((ch % 8) ^ (r % 8)) * 16; the tile starts 1024-byte aligned. One tile
// serves as a K-major operand when its rows are the M or N dimension (Q, dO, K, V as the left factor, or the keys of
// S = Q K^T) and as an MN-major one when its rows are the k dimension (V in P V, K in dS K, dO in P^T dO, Q in dS^T Q).
template <int D>
struct WTile {
    static constexpr int BYTES = 64 * D * 2;
    static constexpr int BLOCK = 64 * 128;   // bytes of one 64-value column block
    __device__ static uint32_t offset(int r, int ch) {
        return (ch >> 3) * BLOCK + r * 128 + (((ch & 7) ^ (r & 7)) << 4);
    }
    // k-step s (head-dim values 16s..16s+15) of the tile as a K-major operand
    __device__ static uint64_t kmajor(uint32_t tile, int s) {
        return wgmma::desc_sw128(tile + (s >> 2) * BLOCK + (s & 3) * 32, 16, 1024);
    }
    // k-step s (rows 16s..16s+15: two 8-row groups) of the tile as an MN-major operand
    __device__ static uint64_t mnmajor(uint32_t tile, int s) { return wgmma::desc_sw128(tile + s * 2048, BLOCK, 1024); }
    // ldmatrix x4 address of the A fragment (rows r0..r0+15, head-dim values c0..c0+15), as Tile::a_addr
    __device__ static uint32_t a_addr(uint32_t tile, int r0, int c0, int lane) {
        return tile + offset(r0 + (lane & 7) + ((lane >> 3) & 1) * 8, (c0 >> 3) + (lane >> 4));
    }
};

// The shared-memory base of the tiles: WTile's swizzle needs 1024-byte alignment (the launcher's sizes leave room).
template <bool WG>
__device__ __forceinline__ uint32_t tiles_base(const void* smem) {
    const uint32_t a = smem_addr(smem);
    return WG ? (a + 1023) & ~1023u : a;
}

// Copies rows [r0, r0 + 64) of head `head` (D wide) of batch row b (row stride `width` elements) into the tile at
// dst (padded rows, or WTile's swizzled blocks when WG); rows at or past T_ are zero. Asynchronous: the caller
// commits and waits. Consecutive threads take consecutive 16-byte chunks of a row (whole 128-byte lines; with WG
// the 8 chunks of a 128-byte row land in 8 different bank groups).
template <typename T, int D, bool WG>
__device__ __forceinline__ void load_tile_async(uint32_t dst, const T* __restrict__ src, int b, int T_, int r0,
                                                int width, int head) {
    constexpr int CH = D / 8;   // 16-byte chunks per row
    static_assert(64 * CH % THREADS == 0, "whole chunks per thread");
#pragma unroll
    for (int i = 0; i < 64 * CH / THREADS; i++) {
        const int c = threadIdx.x + i * THREADS, r = c / CH, ch = c % CH;
        const int t = r0 + r;
        const bool ok = t < T_;
        const T* p = ok ? src + ((int64_t)b * T_ + t) * width + (int64_t)head * D + ch * 8 : src;
        cp_async16(dst + (WG ? WTile<D>::offset(r, ch) : r * Tile<D>::ROW_BYTES + ch * 16), p, ok);
    }
}

// After cp_async_wait: makes this thread's landed tiles visible to wgmma (async proxy); the caller's barrier follows.
template <bool WG>
__device__ __forceinline__ void tiles_landed() {
    if constexpr (WG) wgmma::fence_smem_for_async();
}

// acc [the warp's 16 rows x 64] += A B^T with A and B 64-row padded tiles (Tile) and k = D (mma.sync): the dK/dV
// kernel's S^T = K Q^T and dP^T = V dO^T. Not unrolled over k: unrolled, ptxas hoists every B load of the tile and
// spills at D = 128.
template <typename T, int D>
__device__ __forceinline__ void add_tile_times_tile_t(float (&acc)[8][4], uint32_t a_tile, uint32_t b_tile, int warp,
                                                      int lane) {
#pragma unroll 1
    for (int kc = 0; kc < D / 16; kc++) {
        uint32_t af[4];
        ldsm_x4(Tile<D>::a_addr(a_tile, warp * 16, kc * 16, lane), af);
#pragma unroll
        for (int j2 = 0; j2 < 4; j2++) {
            uint32_t bf[4];
            ldsm_x4(Tile<D>::b_addr(b_tile, j2 * 16, kc * 16, lane), bf);
            mma<T>(acc[2 * j2], af, bf[0], bf[1]);
            mma<T>(acc[2 * j2 + 1], af, bf[2], bf[3]);
        }
    }
}

// acc [64 x D] += A B, the second product of each kernel (P V, dS K, dS^T Q): A [64 x 64] is the f32 accumulator
// tile a rounded to T (used as A fragments straight from registers), B the 64-row tile at `tile` with its rows as the
// k dimension (transposed ldmatrix; MN-major for wgmma). wgmma: issued and committed, not waited for.
template <typename T, int D, bool WG>
__device__ __forceinline__ void add_acc_times_tile(float (&acc)[D / 8][4], const float (&a)[8][4], uint32_t tile,
                                                   int lane) {
    if constexpr (WG) {
        uint32_t af[4][4];
#pragma unroll
        for (int kk = 0; kk < 4; kk++) acc_to_a<T, 8>(a, kk, af[kk]);
        wgmma::fence();
#pragma unroll
        for (int kk = 0; kk < 4; kk++) wgmma::mma_rs<T, D, 1>(acc, af[kk], WTile<D>::mnmajor(tile, kk));
        wgmma::commit();
    } else {
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            uint32_t af[4];
            acc_to_a<T, 8>(a, kk, af);
#pragma unroll
            for (int n2 = 0; n2 < D / 16; n2++) {
                uint32_t bf[4];
                ldsm_x4_t(Tile<D>::bt_addr(tile, kk * 16, n2 * 16, lane), bf);
                mma<T>(acc[2 * n2], af, bf[0], bf[1]);
                mma<T>(acc[2 * n2 + 1], af, bf[2], bf[3]);
            }
        }
    }
}

// Minimum (is_max false) or maximum over the warp, in every lane.
__device__ __forceinline__ int warp_extreme_i(int v, bool is_max) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        int w = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? max(v, w) : min(v, w);
    }
    return v;
}

// Smallest and largest segment id of rows [r0, r1) of batch row b (r0 < r1), the same in every lane of the warp.
__device__ __forceinline__ void seg_range(const int* __restrict__ segb, int r0, int r1, int& lo, int& hi) {
    int lane = threadIdx.x & 31, a = INT_MAX, z = INT_MIN;
    for (int i = r0 + lane; i < r1; i += 32) {
        int s = segb[i];
        a = min(a, s);
        z = max(z, s);
    }
    lo = warp_extreme_i(a, false);
    hi = warp_extreme_i(z, true);
}

// What a (query tile at q0, key tile at k0) pair needs: 0 nothing visible, 1 all visible (no mask), 2 a mask.
// segb: the segment ids of batch row b, or null; [sqlo, sqhi]: the query tile's id range. Uniform over the block.
__device__ __forceinline__ int tile_kind(int q0, int k0, int T_, int window, const int* __restrict__ segb, int sqlo,
                                         int sqhi) {
    int q1 = min(q0 + BM, T_), k1 = min(k0 + BN, T_);   // exclusive ends inside T
    if (k0 > q1 - 1) return 0;                                 // every key after every query
    if (window > 0 && q0 - (k1 - 1) >= window) return 0;       // every key too far back
    bool full = k1 - 1 <= q0 && (window <= 0 || (q1 - 1) - k0 < window) && k0 + BN <= T_ && q0 + BM <= T_;
    if (segb != nullptr) {
        int lo, hi;
        seg_range(segb, k0, k1, lo, hi);
        if (hi < sqlo || lo > sqhi) return 0;                  // disjoint id ranges: no pair shares a segment
        full = full && sqlo == sqhi && lo == hi && lo == sqlo;
    }
    return full ? 1 : 2;
}

__device__ __forceinline__ bool visible(int t, int s, int T_, int window, const int* __restrict__ segb, int segt) {
    return t < T_ && s < T_ && s <= t && (window <= 0 || t - s < window) && (segb == nullptr || segb[s] == segt);
}

}  // namespace tc

using namespace tc;

// tile_rank_grid: every kernel below runs on grid (heads x batch, tiles): blockIdx.x = b * heads + h (kv heads for
// dK/dV), blockIdx.y = the tile's rank by work, heaviest first (the last query tile sees every key; key tile 0 is
// seen by every query). The block scheduler issues blocks x-fastest, so all heads' heaviest tiles go out before
// any lighter one: longest-work-first. With the tile in x (the earlier grid) each head's tiles went out heavy to
// light and the last head's heaviest tiles started near the end; at B 1, T 2,048, 32 heads, a list-scheduling model
// of 264 block slots puts that grid's tail at +30% of the ideal, this one at +2%.

// ------------------------------------------------------------------------------------------------------ forward
template <typename T, int D, bool WG>
__device__ __forceinline__ void fwd_impl(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                         const int* __restrict__ seg, T* __restrict__ out, float* __restrict__ lse,
                                         int T_, int H, int KH, float scale, int window) {
    constexpr int NB = BN / 8;    // score n-blocks per warp row block
    constexpr int KC = D / 16;    // k-chunks of the head dim
    constexpr int DB = D / 8;     // output n-blocks
    constexpr int TB = WG ? WTile<D>::BYTES : Tile<D>::BYTES;   // bytes of one 64-row tile
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t sQ = tiles_base<WG>(smem);
    const uint32_t sK = sQ + TB;             // two buffers
    const uint32_t sV = sK + 2 * TB;         // two buffers

    const int q0 = (gridDim.y - 1 - blockIdx.y) * BM, h = blockIdx.x % H, b = blockIdx.x / H;   // see tile_rank_grid
    const int kh = h / (H / KH);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
    const int qw = H * D, kw = KH * D;
    const int* segb = seg != nullptr ? seg + (int64_t)b * T_ : nullptr;
    const int q1 = min(q0 + BM, T_);
    int sqlo = 0, sqhi = 0;
    if (segb != nullptr) seg_range(segb, q0, q1, sqlo, sqhi);
    // This thread's two query rows (g and g + 8 of the warp's 16) and their segment ids.
    const int tr0 = q0 + warp * 16 + g, tr1 = tr0 + 8;
    const int sg0 = segb != nullptr && tr0 < T_ ? segb[tr0] : 0, sg1 = segb != nullptr && tr1 < T_ ? segb[tr1] : 0;
    const float c = scale * LOG2E;

    int kBegin = window > 0 ? max(0, q0 - window + 1) : 0;
    kBegin = kBegin / BN * BN;
    const int kEnd = q1;
    auto next_tile = [&](int k0, int& kind) {
        for (; k0 < kEnd; k0 += BN) {
            kind = tile_kind(q0, k0, T_, window, segb, sqlo, sqhi);
            if (kind != 0) return k0;
        }
        kind = 0;
        return k0;
    };

    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};   // running max (log2 units) and partial row sums
    float o[DB][4];
#pragma unroll
    for (int j = 0; j < DB; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;

    int kind;
    int kt = next_tile(kBegin, kind);
    if (kt < kEnd) {
        load_tile_async<T, D, WG>(sQ, q, b, T_, q0, qw, h);
        load_tile_async<T, D, WG>(sK, k, b, T_, kt, kw, kh);
        load_tile_async<T, D, WG>(sV, v, b, T_, kt, kw, kh);
        cp_async_commit();
        uint32_t qf[KC][4];
        int buf = 0;
        bool first = true;
        while (kt < kEnd) {
            int nkind;
            const int nt = next_tile(kt + BN, nkind);
            if (nt < kEnd) {   // prefetch the next visible tile into the other buffer
                load_tile_async<T, D, WG>(sK + (buf ^ 1) * TB, k, b, T_, nt, kw, kh);
                load_tile_async<T, D, WG>(sV + (buf ^ 1) * TB, v, b, T_, nt, kw, kh);
            }
            cp_async_commit();
            cp_async_wait<1>();   // everything but the prefetch has landed
            tiles_landed<WG>();
            __syncthreads();
            if (first) {   // Q's A fragments stay in registers (wgmma: the register-A form)
#pragma unroll
                for (int kc = 0; kc < KC; kc++) {
                    ldsm_x4(WG ? WTile<D>::a_addr(sQ, warp * 16, kc * 16, lane)
                               : Tile<D>::a_addr(sQ, warp * 16, kc * 16, lane), qf[kc]);
                }
                first = false;
            }
            const uint32_t kb = sK + buf * TB, vb = sV + buf * TB;
            // S = Q K^T: 16 rows x 64 keys per warp.
            float s[NB][4];
#pragma unroll
            for (int j = 0; j < NB; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
            if constexpr (WG) {
                wgmma::fence();
#pragma unroll
                for (int kc = 0; kc < KC; kc++) wgmma::mma_rs<T, BN, 0>(s, qf[kc], WTile<D>::kmajor(kb, kc));
                wgmma::commit();
                wgmma::wait<0>();
                wgmma::pin(s);
            } else {
#pragma unroll
                for (int kc = 0; kc < KC; kc++) {
#pragma unroll
                    for (int j2 = 0; j2 < NB / 2; j2++) {
                        uint32_t bf[4];
                        ldsm_x4(Tile<D>::b_addr(kb, j2 * 16, kc * 16, lane), bf);
                        mma<T>(s[2 * j2], qf[kc], bf[0], bf[1]);
                        mma<T>(s[2 * j2 + 1], qf[kc], bf[2], bf[3]);
                    }
                }
            }
            if (kind == 2) {
#pragma unroll
                for (int j = 0; j < NB; j++) {
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        int t = e < 2 ? tr0 : tr1, sk = kt + 8 * j + 2 * tq + (e & 1);
                        if (!visible(t, sk, T_, window, segb, e < 2 ? sg0 : sg1)) s[j][e] = -INFINITY;
                    }
                }
            }
            float corr[2];
            online_softmax<NB>(s, m, l, corr, c);
            rescale_rows<DB>(o, corr);
            // O += P V: P (rounded to T) straight from the score registers.
            add_acc_times_tile<T, D, WG>(o, s, vb, lane);
            if constexpr (WG) {
                wgmma::wait<0>();
                wgmma::pin(o);
            }
            __syncthreads();   // this buffer is refilled by the prefetch of the next iteration
            kt = nt;
            kind = nkind;
            buf ^= 1;
        }
        cp_async_wait<0>();
    }
    store_rows<T, D>(o, m, l, tr0, tr1, tq, b, h, T_, H, out, lse);
}

// ------------------------------------------------------------------------------------------------------ dQ
template <typename T, int D, bool WG>
__device__ __forceinline__ void dq_impl(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                        const int* __restrict__ seg, const T* __restrict__ dout,
                                        const float* __restrict__ lse, const float* __restrict__ delta,
                                        T* __restrict__ dq, int T_, int H, int KH, float scale, int window) {
    constexpr int NB = BN / 8, KC = D / 16, DB = D / 8;
    constexpr int TB = WG ? WTile<D>::BYTES : Tile<D>::BYTES;
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t sQ = tiles_base<WG>(smem);
    const uint32_t sG = sQ + TB;             // dO tile
    const uint32_t sK = sG + TB;             // two buffers
    const uint32_t sV = sK + 2 * TB;         // two buffers

    const int q0 = (gridDim.y - 1 - blockIdx.y) * BM, h = blockIdx.x % H, b = blockIdx.x / H;   // see tile_rank_grid
    const int kh = h / (H / KH);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
    const int qw = H * D, kw = KH * D;
    const int* segb = seg != nullptr ? seg + (int64_t)b * T_ : nullptr;
    const int q1 = min(q0 + BM, T_);
    int sqlo = 0, sqhi = 0;
    if (segb != nullptr) seg_range(segb, q0, q1, sqlo, sqhi);
    const int tr0 = q0 + warp * 16 + g, tr1 = tr0 + 8;
    const int sg[2] = {segb != nullptr && tr0 < T_ ? segb[tr0] : 0, segb != nullptr && tr1 < T_ ? segb[tr1] : 0};
    const float c = scale * LOG2E;
    float rl[2], rd[2];   // lse * log2 e and delta of the two rows
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int t = r == 0 ? tr0 : tr1;
        int64_t li = ((int64_t)b * H + h) * T_ + t;
        rl[r] = t < T_ ? lse[li] * LOG2E : 0.f;
        rd[r] = t < T_ ? delta[li] : 0.f;
    }

    int kBegin = window > 0 ? max(0, q0 - window + 1) : 0;
    kBegin = kBegin / BN * BN;
    const int kEnd = q1;
    auto next_tile = [&](int k0, int& kind) {
        for (; k0 < kEnd; k0 += BN) {
            kind = tile_kind(q0, k0, T_, window, segb, sqlo, sqhi);
            if (kind != 0) return k0;
        }
        kind = 0;
        return k0;
    };

    float acc[DB][4];
#pragma unroll
    for (int j = 0; j < DB; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;

    int kind;
    int kt = next_tile(kBegin, kind);
    if (kt < kEnd) {
        load_tile_async<T, D, WG>(sQ, q, b, T_, q0, qw, h);
        load_tile_async<T, D, WG>(sG, dout, b, T_, q0, qw, h);
        load_tile_async<T, D, WG>(sK, k, b, T_, kt, kw, kh);
        load_tile_async<T, D, WG>(sV, v, b, T_, kt, kw, kh);
        cp_async_commit();
        int buf = 0;
        // mma.sync: the next tile's loads go out at the top of an iteration. wgmma: once this tile's S and dP are
        // done, which also completes the previous tile's dQ product (still reading the other buffers); that product
        // is issued without a wait, so it runs while the next iteration waits for its tiles and issues S and dP.
        auto prefetch = [&](int nt) {
            if (nt < kEnd) {
                load_tile_async<T, D, WG>(sK + (buf ^ 1) * TB, k, b, T_, nt, kw, kh);
                load_tile_async<T, D, WG>(sV + (buf ^ 1) * TB, v, b, T_, nt, kw, kh);
            }
            cp_async_commit();
        };
        while (kt < kEnd) {
            int nkind;
            const int nt = next_tile(kt + BN, nkind);
            if constexpr (!WG) prefetch(nt);
            cp_async_wait<WG ? 0 : 1>();
            tiles_landed<WG>();
            __syncthreads();
            const uint32_t kb = sK + buf * TB, vb = sV + buf * TB;
            // S = Q K^T and dP = dO V^T, 16 query rows x 64 keys per warp.
            float s[NB][4], dp[NB][4];
#pragma unroll
            for (int j = 0; j < NB; j++) {
                s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
                dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.f;
            }
            if constexpr (WG) {
                wgmma::fence();
#pragma unroll
                for (int kc = 0; kc < KC; kc++) {
                    wgmma::mma_ss_n64<T>(s, WTile<D>::kmajor(sQ, kc), WTile<D>::kmajor(kb, kc), kc > 0);
                }
#pragma unroll
                for (int kc = 0; kc < KC; kc++) {
                    wgmma::mma_ss_n64<T>(dp, WTile<D>::kmajor(sG, kc), WTile<D>::kmajor(vb, kc), kc > 0);
                }
                wgmma::commit();
                wgmma::wait<0>();
                wgmma::pin(s);
                wgmma::pin(dp);
                __syncthreads();   // every warp is past its wait: the other buffers are free
                prefetch(nt);
            } else {
#pragma unroll
                for (int kc = 0; kc < KC; kc++) {
                    uint32_t qa[4], ga[4];
                    ldsm_x4(Tile<D>::a_addr(sQ, warp * 16, kc * 16, lane), qa);
                    ldsm_x4(Tile<D>::a_addr(sG, warp * 16, kc * 16, lane), ga);
#pragma unroll
                    for (int j2 = 0; j2 < NB / 2; j2++) {
                        uint32_t bf[4];
                        ldsm_x4(Tile<D>::b_addr(kb, j2 * 16, kc * 16, lane), bf);
                        mma<T>(s[2 * j2], qa, bf[0], bf[1]);
                        mma<T>(s[2 * j2 + 1], qa, bf[2], bf[3]);
                        ldsm_x4(Tile<D>::b_addr(vb, j2 * 16, kc * 16, lane), bf);
                        mma<T>(dp[2 * j2], ga, bf[0], bf[1]);
                        mma<T>(dp[2 * j2 + 1], ga, bf[2], bf[3]);
                    }
                }
            }
            // dS = P (dP - delta), P = exp(S scale - lse) rounded to T as the dK/dV kernel rounds it (so dS here is
            // the dS^T it forms, and the stored-dS dQ kernel gives these bits); masked pairs give exactly 0.
#pragma unroll
            for (int j = 0; j < NB; j++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int r = e >> 1;
                    float p = round_to<T>(exp2f(fmaf(s[j][e], c, -rl[r])));
                    if (kind == 2) {
                        int t = r == 0 ? tr0 : tr1, sk = kt + 8 * j + 2 * tq + (e & 1);
                        if (!visible(t, sk, T_, window, segb, sg[r])) p = 0.f;
                    }
                    s[j][e] = p * (dp[j][e] - rd[r]);
                }
            }
            // dQ += dS K: K rows are the k dimension here. wgmma: completed by the next tile's wait (or after the loop).
            add_acc_times_tile<T, D, WG>(acc, s, kb, lane);
            if constexpr (!WG) __syncthreads();   // this buffer is refilled by the next iteration's prefetch
            kt = nt;
            kind = nkind;
            buf ^= 1;
        }
        cp_async_wait<0>();
        if constexpr (WG) {
            wgmma::wait<0>();
            wgmma::pin(acc);
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int t = r == 0 ? tr0 : tr1;
        if (t >= T_) continue;
        T* row = dq + ((int64_t)b * T_ + t) * qw + (int64_t)h * D;
#pragma unroll
        for (int j = 0; j < DB; j++) {
            *reinterpret_cast<uint32_t*>(row + 8 * j + 2 * tq) =
                    pack2<T>(acc[j][2 * r] * scale, acc[j][2 * r + 1] * scale);
        }
    }
}

// ------------------------------------------------------------------------------------------- dQ from stored dS
// dQ = scale sum_k dS K per query tile (grid as dq_impl) with the dS tiles the dK/dV kernel stored (causal, no
// window): one matmul per tile pair. Visits the tiles dkv_impl visits (tile_kind), so no tile is read that was not
// written; masked pairs are exact zeros in dS. The kernel streams the dS tiles (8 KB per tile pair, ~140 MB per
// Llama-7B layer) and is bound by how many of their bytes are in flight: each thread copies its own four 16-byte
// A-operand pieces of a tile into a ring of DQS_STAGES tiles in shared memory by cp.async, three tiles ahead, and
// reads them back (no block barrier needed for them: every thread reads only what it copied). K tiles
// (L2-resident) double-buffered one tile ahead. cp.async groups, in this order:
//   prologue: dS_0, dS_1, K_0, dS_2      tile j: wait until all but the newest group landed (K_j, dS_j, dS_j+1),
//                                                then issue K_j+1, dS_j+3
// so dS_j+3 has two tiles' time to land before tile j+2's wait needs it. Measured (H200, B 1, T 2,048, 32 x 128
// heads, ncu, same call): 63-65 us, against 77 with only the next tile's pieces in registers and 68-70 with thread
// 0's bulk copies (cp.async.bulk on per-stage mbarriers, four tiles ahead); bench/RESULTS.md, session 17.
template <typename T, int D>
__device__ __forceinline__ void dqs_impl(const T* __restrict__ k, const int* __restrict__ seg,
                                         const T* __restrict__ ds, T* __restrict__ dq, int ldq, int T_, int H, int KH,
                                         float scale) {
    constexpr int DQS_STAGES = 4;                 // TrainAttentionKernels.DQS_STAGES sizes the shared memory for it
    constexpr int DQS_TILE_BYTES = BM * BN * 2;   // one dS tile of 16-bit values
    constexpr int DB = D / 8;
    constexpr int TB = WTile<D>::BYTES;
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t sK = tiles_base<true>(smem);   // two K buffers, then DQS_STAGES dS tiles
    const uint32_t sD = sK + 2 * TB;
    const int q0 = (gridDim.y - 1 - blockIdx.y) * BM, h = blockIdx.x % H, b = blockIdx.x / H;   // see tile_rank_grid
    const int kh = h / (H / KH);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
    const int kw = KH * D;
    const int* segb = seg != nullptr ? seg + (int64_t)b * T_ : nullptr;
    const int q1 = min(q0 + BM, T_);
    int sqlo = 0, sqhi = 0;
    if (segb != nullptr) seg_range(segb, q0, q1, sqlo, sqhi);
    const int nt = (T_ + BM - 1) / BM;
    // this lane's piece 0 of key tile 0 of the query tile; piece kk at + kk * 32, tile ki at + ki * 512 (uint4), and
    // at own + kk * 512 bytes in a staged tile (the A fragment order store_ds_tile wrote)
    const uint4* dsq = reinterpret_cast<const uint4*>(ds + ds_tile_offset(b, h, H, nt, q0 / BM, 0)) + warp * 4 * 32 + lane;
    const uint32_t own = (uint32_t)(warp * 4 * 32 + lane) * 16;
    auto next_tile = [&](int k0) {
        for (; k0 < q1; k0 += BN) {
            if (tile_kind(q0, k0, T_, 0, segb, sqlo, sqhi) != 0) return k0;
        }
        return q1;
    };
    // this thread's pieces of tile k0's dS into stage st (nothing past the last tile); one cp.async group
    auto stage_ds = [&](int k0, int st) {
        if (k0 < q1) {
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
                cp_async16(sD + st * DQS_TILE_BYTES + own + kk * 512, dsq + (k0 / BN) * (BM * BN / 8) + kk * 32, true);
        }
        cp_async_commit();
    };
    float acc[DB][4];
#pragma unroll
    for (int j = 0; j < DB; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    int t0 = next_tile(0);
    if (t0 < q1) {
        int t1 = next_tile(t0 + BN), t2 = next_tile(t1 + BN);
        stage_ds(t0, 0);
        stage_ds(t1, 1);
        load_tile_async<T, D, true>(sK, k, b, T_, t0, kw, kh);
        cp_async_commit();
        stage_ds(t2, 2);
        for (int j = 0; t0 < q1; j++) {
            const int t3 = next_tile(t2 + BN);
            cp_async_wait<1>();   // all but the newest group (dS of tile j + 2): K_j, dS_j and dS_j+1 landed
            tiles_landed<true>();
            __syncthreads();      // K_j landed for every thread; every warp is past product j - 1 (its K buffer is free)
            if (t1 < q1) load_tile_async<T, D, true>(sK + ((j + 1) & 1) * TB, k, b, T_, t1, kw, kh);
            cp_async_commit();
            stage_ds(t3, (j + 3) % DQS_STAGES);   // the stage of tile j - 1: this thread read it before product j - 1
            uint32_t af[4][4];
            const uint32_t st = sD + (j % DQS_STAGES) * DQS_TILE_BYTES + own;
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                             : "=r"(af[kk][0]), "=r"(af[kk][1]), "=r"(af[kk][2]), "=r"(af[kk][3])
                             : "r"(st + kk * 512));
            }
            wgmma::fence();
#pragma unroll
            for (int kk = 0; kk < 4; kk++) wgmma::mma_rs<T, D, 1>(acc, af[kk], WTile<D>::mnmajor(sK + (j & 1) * TB, kk));
            wgmma::commit();
            wgmma::wait<0>();
            wgmma::pin(acc);
            t0 = t1;
            t1 = t2;
            t2 = t3;
        }
        cp_async_wait<0>();
    }
    const int tr0 = q0 + warp * 16 + g;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int t = tr0 + 8 * r;
        if (t >= T_) continue;
        T* row = dq + ((int64_t)b * T_ + t) * ldq + (int64_t)h * D;   // rows of dQ: stride ldq
#pragma unroll
        for (int j = 0; j < DB; j++) {
            *reinterpret_cast<uint32_t*>(row + 8 * j + 2 * tq) =
                    pack2<T>(acc[j][2 * r] * scale, acc[j][2 * r + 1] * scale);
        }
    }
}

// ------------------------------------------------------------------------------------------------------ dK, dV
// STORE_DS (wgmma kernels, window <= 0): also writes every dS tile it forms to ds (store_ds_tile) for dqs_impl.
template <typename T, int D, bool WG, bool STORE_DS = false>
__device__ __forceinline__ void dkv_impl(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                         const int* __restrict__ seg, const T* __restrict__ dout,
                                         const float* __restrict__ lse, const float* __restrict__ delta,
                                         T* __restrict__ dk, T* __restrict__ dv, int T_, int H, int KH, float scale,
                                         int window, T* __restrict__ ds = nullptr) {
    constexpr int NB = BM / 8, KC = D / 16, DB = D / 8;
    constexpr int TB = WG ? WTile<D>::BYTES : Tile<D>::BYTES;
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t sK = tiles_base<WG>(smem);
    const uint32_t sV = sK + TB;
    const uint32_t sQ = sV + TB;             // two buffers
    const uint32_t sG = sQ + 2 * TB;         // two buffers (dO)
    // [2][BM] lse * log2 e of the query tile, then [2][BM] delta
    float* ls = reinterpret_cast<float*>(smem + (sK - smem_addr(smem)) + 6 * TB);
    float* dl = ls + 2 * BM;                                          // [2][BM] delta of the query tile

    const int k0 = blockIdx.y * BN, kh = blockIdx.x % KH, b = blockIdx.x / KH;   // see tile_rank_grid
    const int group = H / KH;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
    const int qw = H * D, kw = KH * D;
    const int* segb = seg != nullptr ? seg + (int64_t)b * T_ : nullptr;
    const int k1 = min(k0 + BN, T_);
    // This thread's two key rows (g and g + 8 of the warp's 16) and their segment ids.
    const int sr0 = k0 + warp * 16 + g, sr1 = sr0 + 8;
    const int sg[2] = {segb != nullptr && sr0 < T_ ? segb[sr0] : 0, segb != nullptr && sr1 < T_ ? segb[sr1] : 0};
    const float c = scale * LOG2E;

    // Query tiles that can see keys [k0, k1): t in [k0, k1 - 1 + window - 1] (every t >= k0 without a window).
    const int qBegin = k0 / BM * BM;
    const int qEnd = window > 0 ? min(T_, k1 - 1 + window) : T_;
    const int nq = (qEnd - qBegin + BM - 1) / BM;
    const int items = group * nq;   // (query head of the group, query tile) pairs, head-major
    // tile_kind takes the query tile's id range; it depends on the query tile only, not on the head.
    auto kind_of = [&](int it) {
        int q0 = qBegin + (it % nq) * BM;
        int lo = 0, hi = 0;
        if (segb != nullptr) seg_range(segb, q0, min(q0 + BM, T_), lo, hi);
        return tile_kind(q0, k0, T_, window, segb, lo, hi);
    };
    auto next_item = [&](int it, int& kind) {
        for (; it < items; it++) {
            kind = kind_of(it);
            if (kind != 0) return it;
        }
        kind = 0;
        return it;
    };
    auto load_item = [&](int it, int buf) {
        const int h = kh * group + it / nq, q0 = qBegin + (it % nq) * BM;
        load_tile_async<T, D, WG>(sQ + buf * TB, q, b, T_, q0, qw, h);
        load_tile_async<T, D, WG>(sG + buf * TB, dout, b, T_, q0, qw, h);
        if (threadIdx.x < BM) {   // plain loads; the barrier after the wait publishes them with the tiles
            int t = q0 + threadIdx.x;
            int64_t li = ((int64_t)b * H + h) * T_ + t;
            ls[buf * BM + threadIdx.x] = t < T_ ? lse[li] * LOG2E : 0.f;
            dl[buf * BM + threadIdx.x] = t < T_ ? delta[li] : 0.f;
        }
    };

    float ak[DB][4], av[DB][4];
#pragma unroll
    for (int j = 0; j < DB; j++) {
        ak[j][0] = ak[j][1] = ak[j][2] = ak[j][3] = 0.f;
        av[j][0] = av[j][1] = av[j][2] = av[j][3] = 0.f;
    }

    int kind;
    int it = k0 < T_ ? next_item(0, kind) : items;
    if (it < items) {
        load_tile_async<T, D, WG>(sK, k, b, T_, k0, kw, kh);
        load_tile_async<T, D, WG>(sV, v, b, T_, k0, kw, kh);
        load_item(it, 0);
        cp_async_commit();
        int buf = 0;
        // As in dq_impl: with wgmma the next item's loads go out once S^T is done; dK is issued without a wait and
        // completes at the top of the next item (holding its A fragments across the next S^T spills at D = 128).
        auto prefetch = [&](int nit) {
            if (nit < items) load_item(nit, buf ^ 1);
            cp_async_commit();
        };
        while (it < items) {
            int nkind;
            const int nit = next_item(it + 1, nkind);
            if constexpr (!WG) prefetch(nit);
            if constexpr (WG) wgmma::wait<0>();
            cp_async_wait<WG ? 0 : 1>();
            tiles_landed<WG>();
            __syncthreads();
            const int q0 = qBegin + (it % nq) * BM;
            const uint32_t qb = sQ + buf * TB, gb = sG + buf * TB;
            const float* lsb = ls + buf * BM;
            const float* dlb = dl + buf * BM;
            // S^T = K Q^T: 16 key rows x 64 queries per warp.
            float st[NB][4];
#pragma unroll
            for (int j = 0; j < NB; j++) st[j][0] = st[j][1] = st[j][2] = st[j][3] = 0.f;
            if constexpr (WG) {
                wgmma::fence();
#pragma unroll
                for (int kc = 0; kc < KC; kc++) {
                    wgmma::mma_ss_n64<T>(st, WTile<D>::kmajor(sK, kc), WTile<D>::kmajor(qb, kc), kc > 0);
                }
                wgmma::commit();
                wgmma::wait<0>();
                wgmma::pin(st);
                __syncthreads();   // every warp is past its wait: the other buffers are free
                prefetch(nit);
            } else {
                add_tile_times_tile_t<T, D>(st, sK, qb, warp, lane);
            }
            // P^T = exp(S^T scale - lse[query]), exactly 0 where masked; kept only rounded to T (packed A
            // fragments), which is what both its uses read: the dV product and dS^T below. (Keeping it in f32
            // as well needs the 32 registers that make D = 128 spill.)
#pragma unroll
            for (int j = 0; j < NB; j++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int r = e >> 1, col = 8 * j + 2 * tq + (e & 1);
                    float p = exp2f(fmaf(st[j][e], c, -lsb[col]));
                    if (kind == 2) {
                        int s = r == 0 ? sr0 : sr1, t = q0 + col;
                        // visible(t, s) with the segment test written from the key's side
                        bool vis = t < T_ && s < T_ && s <= t && (window <= 0 || t - s < window) &&
                                   (segb == nullptr || segb[t] == sg[r]);
                        if (!vis) p = 0.f;
                    }
                    st[j][e] = p;
                }
            }
            uint32_t pa[BM / 16][4];
#pragma unroll
            for (int kk = 0; kk < BM / 16; kk++) acc_to_a<T, NB>(st, kk, pa[kk]);
            // dV += P^T dO: queries are the k dimension (transposed loads of dO; MN-major for wgmma). Then
            // dP^T = V dO^T, and dS^T = P^T (dP^T - delta[query]) in place.
            float dpt[NB][4];
#pragma unroll
            for (int j = 0; j < NB; j++) dpt[j][0] = dpt[j][1] = dpt[j][2] = dpt[j][3] = 0.f;
            if constexpr (WG) {   // both products in one group: dV's runs while dP^T's is issued
                wgmma::fence();
#pragma unroll
                for (int kk = 0; kk < BM / 16; kk++) wgmma::mma_rs<T, D, 1>(av, pa[kk], WTile<D>::mnmajor(gb, kk));
#pragma unroll
                for (int kc = 0; kc < KC; kc++) {
                    wgmma::mma_ss_n64<T>(dpt, WTile<D>::kmajor(sV, kc), WTile<D>::kmajor(gb, kc), kc > 0);
                }
                wgmma::commit();
                wgmma::wait<0>();
                wgmma::pin(dpt);
            } else {
#pragma unroll
                for (int kk = 0; kk < BM / 16; kk++) {
#pragma unroll
                    for (int n2 = 0; n2 < DB / 2; n2++) {
                        uint32_t bf[4];
                        ldsm_x4_t(Tile<D>::bt_addr(gb, kk * 16, n2 * 16, lane), bf);
                        mma<T>(av[2 * n2], pa[kk], bf[0], bf[1]);
                        mma<T>(av[2 * n2 + 1], pa[kk], bf[2], bf[3]);
                    }
                }
                add_tile_times_tile_t<T, D>(dpt, sV, gb, warp, lane);
            }
#pragma unroll
            for (int j = 0; j < NB; j++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int col = 8 * j + 2 * tq + (e & 1);
                    // element (j, e) of the accumulator tile sits in pa[j / 2][2 (j % 2) + e / 2], half e % 2
                    const float2 pp = unpack2<T>(pa[j >> 1][2 * (j & 1) + (e >> 1)]);
                    dpt[j][e] = ((e & 1) ? pp.y : pp.x) * (dpt[j][e] - dlb[col]);
                }
            }
            if constexpr (STORE_DS) {
                const int nt = (T_ + BM - 1) / BM;
                store_ds_tile<T>(ds + ds_tile_offset(b, kh * group + it / nq, H, nt, q0 / BM, k0 / BN), dpt, warp, lane);
            }
            // dK += dS^T Q (Q's rows are the k dimension); dK is scaled once at the end. wgmma: completed by the next
            // item's wait (or after the loop).
            add_acc_times_tile<T, D, WG>(ak, dpt, qb, lane);
            if constexpr (!WG) __syncthreads();   // this buffer is refilled by the next iteration's prefetch
            it = nit;
            kind = nkind;
            buf ^= 1;
        }
        cp_async_wait<0>();
        if constexpr (WG) {
            wgmma::wait<0>();
            wgmma::pin(av);
            wgmma::pin(ak);
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int s = r == 0 ? sr0 : sr1;
        if (s >= T_) continue;
        const int64_t off = ((int64_t)b * T_ + s) * kw + (int64_t)kh * D;
#pragma unroll
        for (int j = 0; j < DB; j++) {
            *reinterpret_cast<uint32_t*>(dk + off + 8 * j + 2 * tq) =
                    pack2<T>(ak[j][2 * r] * scale, ak[j][2 * r + 1] * scale);
            *reinterpret_cast<uint32_t*>(dv + off + 8 * j + 2 * tq) = pack2<T>(av[j][2 * r], av[j][2 * r + 1]);
        }
    }
}

// Two blocks of 4 warps per SM: registers (at most 255 a thread) and shared memory (<= 105 KB a block) allow it.
// prefix attn_tc (mma.sync, every build) or attn_wg (wgmma, the sm90a build only); WG selects the matmuls.
#define QL_ATTN_KERNELS(prefix, WG, tn, T, d)                                                                          \
    extern "C" __global__ void __launch_bounds__(128, 2) prefix##_fwd_##tn##_d##d(                                     \
        const T* q, const T* k, const T* v, const int* seg, T* out, float* lse, int T_, int H, int KH, float scale,    \
        int window) {                                                                                                  \
        pdl_enter();                                                                                                   \
        fwd_impl<T, d, WG>(q, k, v, seg, out, lse, T_, H, KH, scale, window);                                          \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(128, 2) prefix##_dq_##tn##_d##d(                                      \
        const T* q, const T* k, const T* v, const int* seg, const T* dout, const float* lse, const float* delta,       \
        T* dq, int T_, int H, int KH, float scale, int window) {                                                       \
        pdl_enter();                                                                                                   \
        dq_impl<T, d, WG>(q, k, v, seg, dout, lse, delta, dq, T_, H, KH, scale, window);                               \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(128, 2) prefix##_dkv_##tn##_d##d(                                     \
        const T* q, const T* k, const T* v, const int* seg, const T* dout, const float* lse, const float* delta,       \
        T* dk, T* dv, int T_, int H, int KH, float scale, int window) {                                                \
        pdl_enter();                                                                                                   \
        dkv_impl<T, d, WG>(q, k, v, seg, dout, lse, delta, dk, dv, T_, H, KH, scale, window);                          \
    }

#define QL_ATTN_TC(tn, T)                                                                                              \
    QL_ATTN_KERNELS(attn_tc, false, tn, T, 64)                                                                         \
    QL_ATTN_KERNELS(attn_tc, false, tn, T, 128)                                                                        \
    extern "C" __global__ void attn_tc_delta_##tn(const T* o, const T* dout, float* delta, int B, int T_, int H,       \
                                                  int D) {                                                             \
        pdl_enter();                                                                                                   \
        if (attn_delta_vec_applies<T>(o, dout, D)) attn_delta_vec_impl<T>(o, dout, delta, B, T_, H, D);                         \
        else attn_delta_impl<T>(o, dout, delta, B, T_, H, D);                                                          \
    }

QL_ATTN_TC(bf16, __nv_bfloat16)
QL_ATTN_TC(f16, __half)

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// The stored-dS backward (causal, no window): attn_wg_dkvs_* writes the dS tiles, then attn_wg_dqs_* forms dQ from
// them (3 blocks per SM).
#define QL_ATTN_STORED_DS(tn, T, d)                                                                                    \
    extern "C" __global__ void __launch_bounds__(128, 2) attn_wg_dkvs_##tn##_d##d(                                     \
        const T* q, const T* k, const T* v, const int* seg, const T* dout, const float* lse, const float* delta,       \
        T* dk, T* dv, T* ds, int T_, int H, int KH, float scale) {                                                     \
        pdl_enter();                                                                                                   \
        dkv_impl<T, d, true, true>(q, k, v, seg, dout, lse, delta, dk, dv, T_, H, KH, scale, 0, ds);                   \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(128, 3) attn_wg_dqs_##tn##_d##d(                                      \
        const T* k, const int* seg, const T* ds, T* dq, int ldq, int T_, int H, int KH, float scale) {                 \
        pdl_enter();                                                                                                   \
        dqs_impl<T, d>(k, seg, ds, dq, ldq, T_, H, KH, scale);                                                         \
    }

QL_ATTN_KERNELS(attn_wg, true, bf16, __nv_bfloat16, 64)
QL_ATTN_KERNELS(attn_wg, true, bf16, __nv_bfloat16, 128)
QL_ATTN_KERNELS(attn_wg, true, f16, __half, 64)
QL_ATTN_KERNELS(attn_wg, true, f16, __half, 128)
QL_ATTN_STORED_DS(bf16, __nv_bfloat16, 128)
QL_ATTN_STORED_DS(f16, __half, 128)

// The warp-specialized forward (attention_fwd_ws.cuh: causal without a window or segment ids, head dim 128; one
// block of 384 threads per SM: a producer warpgroup and two consumer warpgroups).
#include "attention_fwd_ws.cuh"
#define QL_ATTN_FWD_WS(tn, T)                                                                                          \
    extern "C" __global__ void __launch_bounds__(fws::THREADS, 1) attn_ws_fwd_##tn##_d128(                           \
        const T* q, const T* k, const T* v, T* out, float* lse, int T_, int H, int KH, float scale) {                  \
        pdl_enter();                                                                                                   \
        fws::fwd_impl<T>(q, k, v, out, lse, T_, H, KH, scale);                                                         \
    }
QL_ATTN_FWD_WS(bf16, __nv_bfloat16)
QL_ATTN_FWD_WS(f16, __half)

// The warp-specialized dK/dV backward (attention_bwd_ws.cuh: the same cases; 128 keys a block of 384 threads): _dkv
// pairs with attn_wg_dq (dS recomputed), _dkvs stores the dS tiles for attn_wg_dqs. Same bits as attn_wg_dkv(s).
#include "attention_bwd_ws.cuh"
#define QL_ATTN_BWD_WS(tn, T)                                                                                          \
    extern "C" __global__ void __launch_bounds__(bws::THREADS, 1) attn_ws_dkv_##tn##_d128(                           \
        const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta, T* dk, T* dv,         \
        int T_, int H, int KH, int ldkv, float scale) {                                                                \
        pdl_enter();                                                                                                   \
        bws::dkv_impl<T, false>(q, k, v, dout, lse, delta, dk, dv, nullptr, T_, H, KH, ldkv, scale);                   \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(bws::THREADS, 1) attn_ws_dkvs_##tn##_d128(                          \
        const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta, T* dk, T* dv,         \
        T* ds, int T_, int H, int KH, int ldkv, float scale) {                                                         \
        pdl_enter();                                                                                                   \
        bws::dkv_impl<T, true>(q, k, v, dout, lse, delta, dk, dv, ds, T_, H, KH, ldkv, scale);                         \
    }
QL_ATTN_BWD_WS(bf16, __nv_bfloat16)
QL_ATTN_BWD_WS(f16, __half)
#endif
