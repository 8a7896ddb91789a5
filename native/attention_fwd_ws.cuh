// attention_fwd_ws.cuh — the Hopper training-attention forward with warp specialization (flash-attention 3's
// structure) for causal attention without a window or segment ids at head dim 128. Included by attention_tc.cu's
// sm90a build after its tc:: helpers; the kernels are attn_ws_fwd_<t>_d128 there.
//
// Block: 384 threads. Warps 0-3 and 4-7 are two consumer warpgroups (query rows 0-63 and 64-127 of the block's
// 128-query tile); warps 8-11 are the producer. The producer copies Q once, then each 128-key tile of K and V into a
// two-stage ring (cp.async, 16 bytes a lane) and publishes every landed tile on a "full" mbarrier. A consumer
// warpgroup waits for it, runs S = Q K^T (wgmma m64n128, Q and K from shared memory), the online softmax in
// registers and O += P V (P from registers), and frees the stage on its "empty" mbarrier once its matmul is done.
// Why (against attn_wg_fwd: 64-query tiles, the same 4 warps loading and computing in turn, a __syncthreads per 64
// keys): K and V stream through L2 once per 128 queries instead of per 64 (~270 MB instead of ~540 MB per Llama-7B
// layer at 2,048 tokens), the copies never stall the warps that compute, and the score product is twice as wide.
// Measured (H200, B 1, T 2,048, 32 heads): 0.110-0.113 ms against attn_wg_fwd's 0.143; two of flash-attention 3's
// further steps were slower here and were removed (native/NOTES-attention.md, session 14): a tile's softmax
// overlapping the previous tile's P V (registers moved to the consumers with setmaxnreg) 0.126, and the two consumer
// warpgroups taking turns at the tensor cores 0.148.
//
// Numerics as attn_wg_fwd (f32 accumulation, exp2 of scores pre-scaled by scale * log2 e, P rounded to T for P V,
// row sums of the unrounded P), except that the running max moves once per 128 keys instead of 64, so O and lse
// agree with attn_wg_fwd's to rounding, not bit for bit.
#pragma once
#include "mbarrier.cuh"
#include "wgmma.cuh"

namespace fws {

constexpr int ROWS = 128;                                  // queries per block, keys per stage
constexpr int D = 128;                                     // head dim
constexpr int TILE_BYTES = ROWS * D * 2;                   // one 128-row tile of 16-bit values: 32 KB
constexpr int COL_BLOCK = ROWS * 128;                      // bytes of one 64-value column block of a tile
constexpr int STAGES = 2;
constexpr int CONSUMER_THREADS = 256;                      // two warpgroups
constexpr int PRODUCER_THREADS = 128;                     // a warpgroup: 16 copies a lane per tile
constexpr int THREADS = CONSUMER_THREADS + PRODUCER_THREADS;
// Dynamic shared memory: alignment slack (the swizzled tiles start 1024-byte aligned), Q, the K and V rings, then
// eight mbarriers (full K, full V, empty K, empty V; two stages each). attention_tc's launcher uses the same sum.
constexpr int SMEM_BYTES = 1024 + (1 + 2 * STAGES) * TILE_BYTES + 8 * 8;

// 16-byte chunk ch (0..15) of row r in a 128-row tile: two column blocks of 64 values, 128-byte rows with the
// chunk index XORed by r % 8 (the 128-byte swizzle wgmma's descriptors name, as WTile's).
__device__ __forceinline__ uint32_t offset(int r, int ch) {
    return (ch >> 3) * COL_BLOCK + r * 128 + (((ch & 7) ^ (r & 7)) << 4);
}
// k-step s (head-dim values 16s..16s+15) as a K-major operand: the 64 rows of Q at `rows` (the A operand), or a whole
// K tile (the B operand of S = Q K^T, N = 128 keys: 16 groups of 8 rows at 1024 bytes).
__device__ __forceinline__ uint64_t kmajor(uint32_t rows, int s) {
    return wgmma::desc_sw128(rows + (s >> 2) * COL_BLOCK + (s & 3) * 32, 16, 1024);
}
// k-step s (keys 16s..16s+15) of a V tile as the MN-major B operand of O += P V (N = the 128 head-dim values).
__device__ __forceinline__ uint64_t mnmajor(uint32_t tile, int s) {
    return wgmma::desc_sw128(tile + s * 2048, COL_BLOCK, 1024);
}

// The producer warpgroup copies rows [r0, r0 + 128) of head `head` of batch row b (row stride `width` elements) into
// the tile at dst; rows at or past T_ are zero. 16 threads cover a row's 256 bytes (each instruction copies 8 whole
// rows), so a thread's chunk column and its row's swizzle phase (r % 8) stay the same as it steps 8 rows at a time:
// one global and one shared address per thread, advanced by constant strides (few registers for the producer).
template <typename T>
__device__ __forceinline__ void load_tile(uint32_t dst, const T* __restrict__ src, int b, int T_, int r0, int width,
                                          int head, int pt) {
    constexpr int STEP = PRODUCER_THREADS / 16;   // rows per instruction
    const int r = pt >> 4, ch = pt & 15;
    const T* p = src + ((int64_t)b * T_ + r0 + r) * width + (int64_t)head * D + ch * 8;
    const uint32_t d = dst + offset(r, ch);
#pragma unroll 4
    for (int i = 0; i < ROWS / STEP; i++) {
        const bool ok = r0 + r + STEP * i < T_;
        tc::cp_async16(d + STEP * i * 128, ok ? p + (int64_t)STEP * i * width : src, ok);
    }
}

// The block's barriers, named by tile: tile j's stage (j % 2) of the K ring is full at full_k(j) and free again at
// empty_k(j); likewise V.
struct Barriers {
    uint32_t base;
    __device__ uint32_t full_k(int tile) const { return base + 8 * (tile & 1); }
    __device__ uint32_t full_v(int tile) const { return base + 16 + 8 * (tile & 1); }
    __device__ uint32_t empty_k(int tile) const { return base + 32 + 8 * (tile & 1); }
    __device__ uint32_t empty_v(int tile) const { return base + 48 + 8 * (tile & 1); }
};

// Producer: tile j goes to stage j % 2 once the consumers have freed that stage from tile j - 2. Copies run one
// tile ahead of the signals: tile j + 1's K (V) is issued before tile j's K (V) is waited for, so two tiles are in
// flight while the consumers work. Each landed tile is published after this lane's cp.async.wait_group and the
// proxy fence (wgmma reads through the async proxy); a tile's K is published before its V, so S = Q K^T can start
// while V is still in flight. cp.async groups: [Q, K 0], [V 0], then [K j+1], [V j+1] per tile (empty at the end).
template <typename T>
__device__ __forceinline__ void produce(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                        uint32_t sQ, uint32_t sK, uint32_t sV, Barriers bar, int b, int h, int kh,
                                        int q0, int ntiles, int T_, int H, int KH, int pt) {
    const int qw = H * D, kw = KH * D;
    load_tile<T>(sQ, q, b, T_, q0, qw, h, pt);
    load_tile<T>(sK, k, b, T_, 0, kw, kh, pt);
    tc::cp_async_commit();
    load_tile<T>(sV, v, b, T_, 0, kw, kh, pt);
    tc::cp_async_commit();
    for (int j = 0; j < ntiles; j++) {
        const int n = j + 1, ns = n & 1;
        const uint32_t freed = (uint32_t)(((n >> 1) - 1) & 1);   // parity of the consumers' release of tile j - 1
        if (n < ntiles) {
            if (n >= 2) mbar::wait(bar.empty_k(n), freed);
            load_tile<T>(sK + ns * TILE_BYTES, k, b, T_, n * ROWS, kw, kh, pt);
        }
        tc::cp_async_commit();
        tc::cp_async_wait<2>();   // in flight now: V j, K j+1
        wgmma::fence_smem_for_async();
        mbar::arrive(bar.full_k(j));
        if (n < ntiles) {
            if (n >= 2) mbar::wait(bar.empty_v(n), freed);
            load_tile<T>(sV + ns * TILE_BYTES, v, b, T_, n * ROWS, kw, kh, pt);
        }
        tc::cp_async_commit();
        tc::cp_async_wait<2>();   // in flight now: K j+1, V j+1
        wgmma::fence_smem_for_async();
        mbar::arrive(bar.full_v(j));
    }
}

constexpr int NB = ROWS / 8;   // score n-blocks (8 keys each) of a thread's row pair
constexpr int DB = D / 8;      // output n-blocks
constexpr int KS = ROWS / 16;  // k-steps of P V

// s = Q K^T for this warpgroup's 64 rows and the 128 keys of the K tile at kb: issued and committed, not waited for.
template <typename T>
__device__ __forceinline__ void issue_scores(float (&s)[NB][4], uint32_t qa, uint32_t kb) {
    wgmma::fence();
#pragma unroll
    for (int kc = 0; kc < D / 16; kc++) wgmma::mma_ss_n128<T>(s, kmajor(qa, kc), kmajor(kb, kc), kc > 0);
    wgmma::commit();
}

// o += P V with P's A fragments pf and the V tile at vb: issued and committed, not waited for.
template <typename T>
__device__ __forceinline__ void issue_pv(float (&o)[DB][4], const uint32_t (&pf)[KS][4], uint32_t vb) {
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < KS; kk++) wgmma::mma_rs<T, D, 1>(o, pf[kk], mnmajor(vb, kk));
    wgmma::commit();
}

// The diagonal tile (keys k0 .. k0 + 127, k0 = the block's q0): key s is visible to query t when s <= t.
__device__ __forceinline__ void mask_diagonal(float (&s)[NB][4], int k0, int tr0, int tr1, int tq) {
#pragma unroll
    for (int jj = 0; jj < NB; jj++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            if (k0 + 8 * jj + 2 * tq + (e & 1) > (e < 2 ? tr0 : tr1)) s[jj][e] = -INFINITY;
        }
    }
}

// P rounded to T as the A fragments of P V.
template <typename T>
__device__ __forceinline__ void pack_p(const float (&s)[NB][4], uint32_t (&pf)[KS][4]) {
#pragma unroll
    for (int kk = 0; kk < KS; kk++) tc::acc_to_a<T, NB>(s, kk, pf[kk]);
}

// A consumer warpgroup's 64 query rows against every visible key tile: each product is waited for before the
// softmax (or the next tile) that needs it; the other warpgroup's work fills the gaps.
template <typename T>
__device__ __forceinline__ void consume(uint32_t sQ, uint32_t sK, uint32_t sV, Barriers bar, T* __restrict__ out,
                                        float* __restrict__ lse, int b, int h, int q0, int ntiles, int T_, int H,
                                        float scale, int warp, int lane) {
    const int wg = warp >> 2, g = lane >> 2, tq = lane & 3;
    const int tr0 = q0 + wg * 64 + (warp & 3) * 16 + g, tr1 = tr0 + 8;   // this thread's two query rows
    const uint32_t qa = sQ + wg * 64 * 128;   // this warpgroup's 64 rows of Q (8 KB into each column block)
    const float c = scale * tc::LOG2E;
    auto kb = [&](int j) { return sK + (j & 1) * TILE_BYTES; };
    auto vb = [&](int j) { return sV + (j & 1) * TILE_BYTES; };
    auto full = [](int j) { return (uint32_t)((j >> 1) & 1); };   // parity of tile j's "full" phase
    const int last = ntiles - 1;

    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};   // running max (log2 units) and partial row sums
    float o[DB][4];
#pragma unroll
    for (int j = 0; j < DB; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    float s[NB][4], corr[2];
    uint32_t pf[KS][4];

    for (int j = 0; j < ntiles; j++) {
        mbar::wait(bar.full_k(j), full(j));
        issue_scores<T>(s, qa, kb(j));
        wgmma::wait<0>();
        wgmma::pin(s);
        if (lane == 0) mbar::arrive(bar.empty_k(j));
        if (j == last) mask_diagonal(s, q0, tr0, tr1, tq);
        tc::online_softmax<NB>(s, m, l, corr, c);
        tc::rescale_rows<DB>(o, corr);
        pack_p<T>(s, pf);
        mbar::wait(bar.full_v(j), full(j));
        issue_pv<T>(o, pf, vb(j));
        wgmma::wait<0>();
        wgmma::pin(o);
        if (lane == 0) mbar::arrive(bar.empty_v(j));
    }

    tc::store_rows<T, D>(o, m, l, tr0, tr1, tq, b, h, T_, H, out, lse);
}

// grid (heads x batch, ceil(T / 128)) with the heaviest query tile first (attention_tc.cu, tile_rank_grid).
template <typename T>
__device__ __forceinline__ void fwd_impl(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                         T* __restrict__ out, float* __restrict__ lse, int T_, int H, int KH,
                                         float scale) {
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t sQ = (tc::smem_addr(smem) + 1023) & ~1023u;
    const uint32_t sK = sQ + TILE_BYTES, sV = sK + STAGES * TILE_BYTES;
    const Barriers bar{sV + STAGES * TILE_BYTES};
    const int q0 = (gridDim.y - 1 - blockIdx.y) * ROWS, h = blockIdx.x % H, b = blockIdx.x / H;
    const int ntiles = q0 / ROWS + 1;   // key tiles 0 .. the diagonal one
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) {
            mbar::init(bar.full_k(s), PRODUCER_THREADS);
            mbar::init(bar.full_v(s), PRODUCER_THREADS);
            mbar::init(bar.empty_k(s), CONSUMER_THREADS / 32);   // one arrival per consumer warp
            mbar::init(bar.empty_v(s), CONSUMER_THREADS / 32);
        }
        mbar::fence_init();
    }
    __syncthreads();
    if (threadIdx.x >= CONSUMER_THREADS) {
        produce<T>(q, k, v, sQ, sK, sV, bar, b, h, h / (H / KH), q0, ntiles, T_, H, KH, threadIdx.x - CONSUMER_THREADS);
    } else {
        consume<T>(sQ, sK, sV, bar, out, lse, b, h, q0, ntiles, T_, H, scale, warp, lane);
    }
}

}  // namespace fws
