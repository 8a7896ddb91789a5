// attention_bwd_ws.cuh — the Hopper dK/dV backward with warp specialization (flash-attention 3's structure) for causal
// attention without a window or segment ids at head dim 128. Included by attention_tc.cu's sm90a build after its tc::
// helpers; the kernels are attn_ws_dkv_<t>_d128 (dS recomputed by attn_wg_dq) and attn_ws_dkvs_<t>_d128 (each dS tile
// also stored for attn_wg_dqs).
//
// Block: 384 threads for 128 keys of one kv head. Warps 0-3 and 4-7 are two consumer warpgroups (keys 0-63 and 64-127
// of the block); warps 8-11 are the producer. The producer copies K and V once, then for every (query head of the
// group, 64-query tile) that can see the block's keys, in attn_wg_dkv's order (head-major, tiles ascending), the Q and
// dO tiles and their lse and delta into a STAGES-deep ring (cp.async), publishing each landed stage on its "full"
// mbarrier. Each consumer warpgroup runs attn_wg_dkv's per-tile work for its 64 keys on that stage (S^T = K Q^T,
// P^T, dV += P^T dO with dP^T = V dO^T, dS^T, dK += dS^T Q) and frees the stage on its "empty" mbarrier once its
// dK product, the last reader, has completed (at the top of its next tile).
// Why (against attn_wg_dkv: 64 keys a block, the same 4 warps loading and computing in turn with two __syncthreads
// per tile): Q and dO stream through L2 once per 128 keys instead of per 64, and no warp that computes waits for a
// copy or a block-wide barrier.
//
// Numerics: every tile pair is formed exactly as attn_wg_dkv forms it (same products, k order, roundings; lse * log2 e
// rounded as that kernel rounds it), and dK and dV sum the query tiles in the same order: dK, dV and the stored dS
// tiles are the same bits as attn_wg_dkv(s)'s.
#pragma once
#include "mbarrier.cuh"
#include "wgmma.cuh"

namespace bws {

constexpr int KEYS = 128;                                  // keys per block: two consumer warpgroups of 64
constexpr int QROWS = 64;                                  // queries per ring stage
constexpr int D = 128;                                     // head dim
using Tile = tc::WTile<D>;                                 // a 64-row tile, 128-byte swizzled (16 KB)
constexpr int STAGES = 3;
constexpr int CONSUMER_THREADS = 256;
constexpr int PRODUCER_THREADS = 128;
constexpr int THREADS = CONSUMER_THREADS + PRODUCER_THREADS;
constexpr int VEC_FLOATS = 2 * QROWS;                      // a stage's lse (64) then delta (64)
// Dynamic shared memory: alignment slack (tiles start 1024-byte aligned), K and V (two 64-row tiles each), the stages'
// Q and dO tiles, the stages' lse / delta, then 2 x STAGES mbarriers (full, empty). attention_tc's launcher
// (TrainAttentionWsBackward.SHARED_BYTES) uses the same sum.
constexpr int SMEM_BYTES = 1024 + 4 * Tile::BYTES + STAGES * (2 * Tile::BYTES + VEC_FLOATS * 4) + 2 * STAGES * 8;

// The producer copies rows [r0, r0 + NR) of head `head` of batch row b (row stride `width` elements) into NR / 64
// consecutive 64-row tiles at dst; rows at or past T_ are zero. 16 threads cover a row's 256 bytes and each
// instruction copies 8 whole rows, so a thread's chunk column and its rows' swizzle phase (r % 8) never change: one
// global and one shared address per thread plus compile-time offsets.
template <typename T, int NR>
__device__ __forceinline__ void load_rows(uint32_t dst, const T* __restrict__ src, int b, int T_, int r0, int width,
                                          int head, int pt) {
    const int r = pt >> 4, ch = pt & 15;
    const T* p = src + ((int64_t)b * T_ + r0 + r) * width + (int64_t)head * D + ch * 8;
    const uint32_t d = dst + Tile::offset(r, ch) - r * 128;   // + row rr's place: (rr / 64) tiles, (rr % 64) rows
    // Rolled: unrolled, the addresses are formed up front and the producer needs more registers than it has.
#pragma unroll 1
    for (int rr = r; rr < NR; rr += 8) {
        const bool ok = r0 + rr < T_;
        tc::cp_async16(d + (rr >> 6) * Tile::BYTES + (rr & 63) * 128, ok ? p : src, ok);
        p += (int64_t)8 * width;
    }
}

// 4 bytes global -> shared (cp.async.ca); zero-filled when !valid.
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, bool valid) {
    int bytes = valid ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}

// The block's shared memory, named: stage s holds one item's Q tile, dO tile, lse and delta.
struct Smem {
    uint32_t k, v, stages, vecs, bars;
    __device__ uint32_t q(int s) const { return stages + s * 2 * Tile::BYTES; }
    __device__ uint32_t g(int s) const { return q(s) + Tile::BYTES; }
    __device__ uint32_t vec(int s) const { return vecs + s * VEC_FLOATS * 4; }
    __device__ uint32_t full(int s) const { return bars + 8 * s; }
    __device__ uint32_t empty(int s) const { return bars + 8 * (STAGES + s); }
};

// The block's work: keys [k0, k0 + 128) of kv head kh, batch row b, against `items` (query head, query tile) pairs,
// head-major: item n is query head kh * group + n / nq, query tile q0 = k0 + (n % nq) * 64 (tiles before k0 see none
// of the block's keys).
struct Work {
    int b, kh, group, k0, nq, items;
    __device__ int head(int n) const { return kh * group + n / nq; }
    __device__ int q0(int n) const { return k0 + (n % nq) * QROWS; }
};

// Producer: item n goes to stage n % STAGES once both consumer warpgroups have freed that stage from item n - STAGES.
// Copies run one item ahead of the signals (item n + 1 is issued before item n is waited for). cp.async groups:
// [K, V, item 0], then [item n + 1] per item (empty at the end).
template <typename T>
__device__ __forceinline__ void produce(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                        const T* __restrict__ dout, const float* __restrict__ lse,
                                        const float* __restrict__ delta, Smem sm, Work w, int T_, int H, int KH,
                                        int pt) {
    const int qw = H * D, kw = KH * D;
    auto issue = [&](int n) {
        const int s = n % STAGES, h = w.head(n), q0 = w.q0(n);
        load_rows<T, QROWS>(sm.q(s), q, w.b, T_, q0, qw, h, pt);
        load_rows<T, QROWS>(sm.g(s), dout, w.b, T_, q0, qw, h, pt);
        // threads 0-63: lse of the tile's rows; 64-127: delta (zero past T_, as attn_wg_dkv's plain loads)
        const int t = q0 + (pt & (QROWS - 1));
        const bool ok = t < T_;
        const float* src = (pt < QROWS ? lse : delta) + ((int64_t)w.b * H + h) * T_ + (ok ? t : 0);
        cp_async4(sm.vec(s) + pt * 4, src, ok);
    };
    load_rows<T, KEYS>(sm.k, k, w.b, T_, w.k0, kw, w.kh, pt);
    load_rows<T, KEYS>(sm.v, v, w.b, T_, w.k0, kw, w.kh, pt);
    issue(0);
    tc::cp_async_commit();
    for (int n = 0; n < w.items; n++) {
        const int m = n + 1;
        if (m < w.items) {
            if (m >= STAGES) mbar::wait(sm.empty(m % STAGES), (uint32_t)((m / STAGES - 1) & 1));
            issue(m);
        }
        tc::cp_async_commit();
        tc::cp_async_wait<1>();   // item n (and K, V) landed for this thread
        wgmma::fence_smem_for_async();
        mbar::arrive(sm.full(n % STAGES));
    }
}

// x, as a value the compiler cannot see through (keeps what is formed from it inside the loop).
__device__ __forceinline__ uint32_t opaque(uint32_t x) {
    uint32_t y;
    asm volatile("mov.b32 %0, %1;\n" : "=r"(y) : "r"(x));
    return y;
}

// tc::store_ds_tile from the A fragments a[c] = acc_to_a(dS^T, c) the dK product used (the same bits).
template <typename T>
__device__ __forceinline__ void store_frags(T* __restrict__ tile, const uint32_t (&a)[4][4], int warp, int lane) {
#pragma unroll
    for (int c = 0; c < 4; c++) tc::store_ds_frags<T>(tile, a[c], c, warp, lane);
}

constexpr int NB = QROWS / 8;   // n-blocks (8 queries each) of a thread's S^T rows
constexpr int DB = D / 8;       // n-blocks of dK / dV
constexpr int KC = D / 16;      // k-steps of S^T and dP^T

// A consumer warpgroup: its 64 keys against every item, attn_wg_dkv's tile work (see dkv_impl in attention_tc.cu).
template <typename T, bool STORE_DS>
__device__ __forceinline__ void consume(Smem sm, Work w, T* __restrict__ dk, T* __restrict__ dv, T* __restrict__ ds,
                                        int T_, int H, int KH, int ldkv, float scale, int warp, int lane) {
    extern __shared__ __align__(128) unsigned char smem[];
    const int wg = warp >> 2, w4 = warp & 3, g = lane >> 2, tq = lane & 3;
    const int kw0 = w.k0 + wg * 64;                       // this warpgroup's first key
    const uint32_t kb0 = sm.k + wg * Tile::BYTES, vb0 = sm.v + wg * Tile::BYTES;
    const int sr0 = kw0 + w4 * 16 + g, sr1 = sr0 + 8;     // this thread's two key rows
    const float c = scale * tc::LOG2E;
    const int nt = (T_ + QROWS - 1) / QROWS;

    float ak[DB][4], av[DB][4];
#pragma unroll
    for (int j = 0; j < DB; j++) {
        ak[j][0] = ak[j][1] = ak[j][2] = ak[j][3] = 0.f;
        av[j][0] = av[j][1] = av[j][2] = av[j][3] = 0.f;
    }
    int pending = -1;   // the item whose stage the in-flight dK product still reads
    uint32_t dsa[QROWS / 16][4];   // its dS^T as A fragments (held until that product completes), stored then
    T* dst = nullptr;
    for (int n = 0; n < w.items; n++) {
        const int s = n % STAGES, q0 = w.q0(n);
        wgmma::wait<0>();   // unconditional: ptxas must see every wgmma end before the accumulators are reused
        if (pending >= 0) {
            if (lane == 0) mbar::arrive(sm.empty(pending % STAGES));
            if constexpr (STORE_DS) store_frags<T>(dst, dsa, w4, lane);
        }
        pending = -1;
        // Waited for even when skipped, so an arrival never runs ahead of the stage's fill (phases stay in step).
        mbar::wait(sm.full(s), (uint32_t)((n / STAGES) & 1));
        const int kind = tc::tile_kind(q0, kw0, T_, 0, nullptr, 0, 0);
        if (kind == 0) {   // every query of the tile before every key of this warpgroup
            if (lane == 0) mbar::arrive(sm.empty(s));
            continue;
        }
        const uint32_t qb = sm.q(s), gb = sm.g(s);
        // K's and V's descriptors are loop-invariant; formed again per item (a few integer ops) instead of being
        // hoisted into 32 registers the accumulators need
        const uint32_t kb = opaque(kb0), vb = opaque(vb0);
        const float* vec = reinterpret_cast<const float*>(smem + (sm.vec(s) - tc::smem_addr(smem)));   // lse, delta
        // S^T = K Q^T: this warp's 16 key rows x 64 queries.
        float st[NB][4];
#pragma unroll
        for (int j = 0; j < NB; j++) st[j][0] = st[j][1] = st[j][2] = st[j][3] = 0.f;
        wgmma::fence();
#pragma unroll
        for (int kc = 0; kc < KC; kc++) wgmma::mma_ss_n64<T>(st, Tile::kmajor(kb, kc), Tile::kmajor(qb, kc), kc > 0);
        wgmma::commit();
        wgmma::wait<0>();
        wgmma::pin(st);
        // P^T = exp(S^T scale - lse[query]), exactly 0 where masked, kept only rounded to T (as attn_wg_dkv).
#pragma unroll
        for (int j = 0; j < NB; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int col = 8 * j + 2 * tq + (e & 1);
                float p = exp2f(fmaf(st[j][e], c, -(vec[col] * tc::LOG2E)));
                if (kind == 2) {
                    const int sk = e < 2 ? sr0 : sr1, t = q0 + col;
                    if (!(t < T_ && sk < T_ && sk <= t)) p = 0.f;
                }
                st[j][e] = p;
            }
        }
        uint32_t pa[QROWS / 16][4];
#pragma unroll
        for (int kk = 0; kk < QROWS / 16; kk++) tc::acc_to_a<T, NB>(st, kk, pa[kk]);
        // dV += P^T dO and dP^T = V dO^T in one group; then dS^T = P^T (dP^T - delta[query]) in place.
        float dpt[NB][4];
#pragma unroll
        for (int j = 0; j < NB; j++) dpt[j][0] = dpt[j][1] = dpt[j][2] = dpt[j][3] = 0.f;
        wgmma::fence();
#pragma unroll
        for (int kk = 0; kk < QROWS / 16; kk++) wgmma::mma_rs<T, D, 1>(av, pa[kk], Tile::mnmajor(gb, kk));
#pragma unroll
        for (int kc = 0; kc < KC; kc++) wgmma::mma_ss_n64<T>(dpt, Tile::kmajor(vb, kc), Tile::kmajor(gb, kc), kc > 0);
        wgmma::commit();
        wgmma::wait<0>();
        wgmma::pin(dpt);
#pragma unroll
        for (int j = 0; j < NB; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int col = 8 * j + 2 * tq + (e & 1);
                const float2 pp = tc::unpack2<T>(pa[j >> 1][2 * (j & 1) + (e >> 1)]);
                dpt[j][e] = ((e & 1) ? pp.y : pp.x) * (dpt[j][e] - vec[QROWS + col]);
            }
        }
        // dK += dS^T Q: issued, completed at the top of the next item (which then frees this stage and stores the tile).
#pragma unroll
        for (int kk = 0; kk < QROWS / 16; kk++) tc::acc_to_a<T, NB>(dpt, kk, dsa[kk]);
        wgmma::fence();
#pragma unroll
        for (int kk = 0; kk < QROWS / 16; kk++) wgmma::mma_rs<T, D, 1>(ak, dsa[kk], Tile::mnmajor(qb, kk));
        wgmma::commit();
        if constexpr (STORE_DS) dst = ds + tc::ds_tile_offset(w.b, w.head(n), H, nt, q0 / QROWS, kw0 / 64);
        pending = n;
    }
    wgmma::wait<0>();
    wgmma::pin(av);
    wgmma::pin(ak);
    if constexpr (STORE_DS) {
        if (pending >= 0) store_frags<T>(dst, dsa, w4, lane);
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int sk = r == 0 ? sr0 : sr1;
        if (sk >= T_) continue;
        const int64_t off = ((int64_t)w.b * T_ + sk) * ldkv + (int64_t)w.kh * D;   // rows of dK and dV: stride ldkv
#pragma unroll
        for (int j = 0; j < DB; j++) {
            *reinterpret_cast<uint32_t*>(dk + off + 8 * j + 2 * tq) =
                    tc::pack2<T>(ak[j][2 * r] * scale, ak[j][2 * r + 1] * scale);
            *reinterpret_cast<uint32_t*>(dv + off + 8 * j + 2 * tq) = tc::pack2<T>(av[j][2 * r], av[j][2 * r + 1]);
        }
    }
}

// grid (kv heads x batch, ceil(T / 128)): blockIdx.y = 0 is the key block every query tile sees (heaviest first).
// The producer warpgroup gives registers to the consumers (setmaxnreg: 40 + 2 x 232 = the 3 x 168 launched with).
template <typename T, bool STORE_DS>
__device__ __forceinline__ void dkv_impl(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                         const T* __restrict__ dout, const float* __restrict__ lse,
                                         const float* __restrict__ delta, T* __restrict__ dk, T* __restrict__ dv,
                                         T* __restrict__ ds, int T_, int H, int KH, int ldkv, float scale) {
    extern __shared__ __align__(128) unsigned char smem[];
    Smem sm;
    sm.k = (tc::smem_addr(smem) + 1023) & ~1023u;
    sm.v = sm.k + 2 * Tile::BYTES;
    sm.stages = sm.v + 2 * Tile::BYTES;
    sm.vecs = sm.stages + STAGES * 2 * Tile::BYTES;
    sm.bars = sm.vecs + STAGES * VEC_FLOATS * 4;
    Work w;
    w.kh = blockIdx.x % KH;
    w.b = blockIdx.x / KH;
    w.group = H / KH;
    w.k0 = blockIdx.y * KEYS;
    w.nq = (T_ - w.k0 + QROWS - 1) / QROWS;
    w.items = w.group * w.nq;
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) {
            mbar::init(sm.full(s), PRODUCER_THREADS);
            mbar::init(sm.empty(s), CONSUMER_THREADS / 32);   // one arrival per consumer warp
        }
        mbar::fence_init();
    }
    __syncthreads();
    if (threadIdx.x >= CONSUMER_THREADS) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
        produce<T>(q, k, v, dout, lse, delta, sm, w, T_, H, KH, threadIdx.x - CONSUMER_THREADS);
    } else {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
        consume<T, STORE_DS>(sm, w, dk, dv, ds, T_, H, KH, ldkv, scale, threadIdx.x >> 5, threadIdx.x & 31);
    }
}

}  // namespace bws
