// nf4_gemv6.cuh — the "v6" decode GEMV of bitsandbytes 4-bit weights (NF4 / FP4, optionally double-quantized):
// y [M, N] = x [M, K] W^T (+ bias), M <= 16 rows of x, compute T = bf16 / f16, K % 32 == 0, blocksize >= 32.
// Included by nf4_gemv6.cu (the q4v6_* entry points, exact numerics) and native/bench/nf4_gemv_bench.cu.
//
// Why (native/NOTES-nf4-gemv.md, "v5 rows ... Measured"): v5's row sweep in address order brought a no-decode skeleton
// to 82-95 % of a streaming read, but its f32 FMA arithmetic (~6.75 issue slots per value) made it no faster than v2.
// v6 keeps v5's memory order and puts the products on the tensor cores, as v2 does:
//   - persistent grid (blocks/SM x SMs). A work item is one 16-row tile over all of K (16 consecutive rows = one
//     contiguous 16 x K/2-byte region). Tiles are taken grid-stride in address order (iteration i, block b: tile
//     i G + b), so the whole grid reads one compact window at any time;
//   - inside a tile the W warps split K's 128-wide chunks as v2 does (warp w: chunks w, w + W, ...; every warp takes
//     J = ceil(C / W) steps per tile, the steps past its last chunk are empty, so all warps reach a tile's end at the
//     same step); thread (g, t) holds 16 bytes of rows g and g + 8 per chunk: the mma A fragments of v2's k order;
//   - a register ring keeps the next D chunks' loads (+ absmax) in flight ACROSS tile boundaries: the next tile's
//     loads are issued while the current one is computed;
//   - at a tile's end every warp writes its f32 fragments to a shared ring slot (D + 1 slots), one barrier; the tile's
//     reducer warp (tile count % W) adds the W fragments in warp order (deterministic), adds the bias, rounds once and
//     stores, at the end of its D-step group (one copy of that code, out of the unrolled ring).
//     Slot safety: tile ends are >= 1 step apart, so tile ends i and i + D never share a D-step group; a reducer reads
//     slot i % (D + 1) before it reaches the next group's barriers, and the slot is rewritten only after the barrier of
//     tile i + D. With D <= W, the <= D tile ends of a group have distinct reducer warps.
//   - x is the mma B operand (M <= 8: one n8 tile, NT = 1; M <= 16: two, NT = 2). It is staged once per block in
//     shared memory in fragment order when it fits (unit xu = ((c * 4 + j4) * M + m) * 4 + t holds
//     x[m][128 c + 32 t + 8 j4 .. + 8), zeros past K; a quarter warp reads 128 distinct bytes: conflict-free), else
//     read from global memory through L1 as v2 does. Lanes whose x row is >= M skip their x loads.
//
// Numerics (DEC):
//   DEC_EXACT: the contract of nf4_gemv.cu (v2's decode code): absmax(block) = F32 absmax, or nested
//              fl(fl(nested_code[q] * nested_absmax[block / nested_bs]) + offset);
//              weight = round(compute, round(state, fl(code16[q] * absmax))) per value (state rounding when DR);
//   DEC_BNB:   bitsandbytes' batch-1 inference numerics (nf4_gemv4.cuh): weight = round_T(round_T(code) * round_T(absmax)),
//              decoded as v4 does: one LDS of the (code_T[hi], code_T[lo]) pair from a per-bank replicated pair table
//              (address = one prmt) and one HFMA2 by the (absmax_T, absmax_T) pair: the result is an mma A register;
//   DEC_NONE:  timing only: the packed words fed to the mma as if decoded (the skeleton with x and mma);
//   DEC_LOADS: timing only: loads, ring and tile reductions, no x, no mma (the memory organisation's cost).
// Then y[m, o] = round_y(round_T(sum_k x w + round_T(bias[o]))): exact products, f32 sums (mma f32 accumulators,
// warps added in warp order).
#pragma once
#include "q4_common.cuh"

namespace nf4v6 {

constexpr int CHUNK_K = 128;
constexpr int DEC_EXACT = 0;
constexpr int DEC_BNB = 1;
constexpr int DEC_NONE = 2;
constexpr int DEC_LOADS = 3;

constexpr int TAB_BYTES = 65536;          // bnb pair table: 256 rows of 256 bytes, words in [0, 128), x units in [128, 256)
constexpr int X_MAX_BNB = 32 * 1024;      // x staged in the pair table's gaps (2048 units)
constexpr int X_MAX_EXACT = 48 * 1024;    // x staged in its own region (exact / none / loads layouts)

// Bytes of x in fragment order: C chunks x 16 units of 16 bytes x M rows.
__host__ __device__ inline int x_bytes(int K, int M) { return ((K + CHUNK_K - 1) / CHUNK_K) * 256 * M; }
// Whether x is staged in shared memory (the host passes the result as the kernel's xs argument).
__host__ __device__ inline bool x_fits(int dec, int K, int M) {
    return (long long)((K + CHUNK_K - 1) / CHUNK_K) * 256 * M <= (dec == DEC_BNB ? X_MAX_BNB : X_MAX_EXACT);
}
// Dynamic shared memory of a launch: [pair table with x in its gaps | x or nothing] [fragment ring] [code16] [ncode].
__host__ __device__ inline int base_bytes(int dec, int K, int M, int xs) {
    return dec == DEC_BNB ? TAB_BYTES : (xs ? x_bytes(K, M) : 0);
}
__host__ __device__ constexpr int red_bytes(int W, int NT, int D) { return (D + 1) * W * NT * 32 * 16; }
__host__ __device__ inline int smem_bytes(int dec, int W, int NT, int D, int K, int M, int xs) {
    return base_bytes(dec, K, M, xs) + red_bytes(W, NT, D) + 64 + 1024;
}

__device__ __forceinline__ void block_sync() { asm volatile("barrier.sync 0;" ::: "memory"); }

// Shared-memory byte offset of x unit xu: in the pair table's gaps (bnb) or contiguous.
template <int DEC>
__device__ __forceinline__ uint32_t x_off(int xu) {
    if (DEC == DEC_BNB) return (uint32_t)(xu >> 3) * 256u + 128u + (uint32_t)(xu & 7) * 16u;
    return (uint32_t)xu * 16u;
}

template <bool F16C>
__device__ __forceinline__ uint32_t hmul2(uint32_t a, uint32_t b) {
    uint32_t r;  // round_T(a * b) per half, one rounding (fma with -0 keeps an exact zero product's sign)
    if (F16C) {
        asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    } else {
        asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(0x80008000u));
    }
    return r;
}

// ---- v2's weight statistics, load and decode (nf4_gemv.cu, namespace nf4v2; the bench includes it first).
using Weight = nf4v2::Weight;

// The streaming load, prmt and the exact table decode are v2's (native/nf4_gemv.cu, which the bench includes first).
__device__ __forceinline__ uint4 ld_stream(const void* p) { return nf4v2::ld_stream_u4<0>(p); }
using nf4v2::prmt;
using nf4v2::decode_word_tab;

// One chunk's loads of a thread: 16 packed bytes (32 values, zero past N or K) of rows g and g + 8 of the tile and the
// absmax word of each: the F32 absmax bits (plain) or the 8-bit absmax code (nested). The group's nested absmax is
// read when the chunk is used (one float per nested_bs blocks: an L1 hit), which keeps a slot at 10 registers (v2's
// 12-register slot put the D = 4 ring at the 128-register cap).
struct Slot {
    uint4 w[2];
    uint32_t s[2];
};

__device__ __forceinline__ Slot load_slot(const Weight& w, int64_t row0, int N, int K, int kb, bool valid) {
    Slot L;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int64_t r = row0 + 8 * h;
        L.w[h] = make_uint4(0, 0, 0, 0);
        L.s[h] = 0;
        if (valid && kb < K && r < N) {
            const int64_t e = r * K + kb;
            L.w[h] = ld_stream(w.packed + (e >> 1));
            const int64_t block = e >> w.log2_blocksize;
            L.s[h] = w.nested ? (uint32_t)__ldg(reinterpret_cast<const uint8_t*>(w.absmax) + block)
                              : __float_as_uint(__ldg(reinterpret_cast<const float*>(w.absmax) + block));
        }
    }
    return L;
}

// The F32 absmax of row r's piece at k = kb, whose absmax word is s: as nf4_gemv.cu (fl(fl(ncode[q] * nabs) + offset)
// when nested). Pieces past N or K were not loaded (zero words, x zero or row never stored): 0, nothing read.
__device__ __forceinline__ float piece_absmax(const Weight& w, const float* ncode, uint32_t s, int64_t r, int N, int K,
                                              int kb) {
    if (!w.nested) return __uint_as_float(s);
    if (r >= N || kb >= K) return 0.0f;
    const int64_t block = (r * K + kb) >> w.log2_blocksize;
    const int64_t nb = w.nested_shift >= 0 ? (block >> w.nested_shift) : block / w.nested_bs;
    return __fadd_rn(__fmul_rn(ncode[s], __ldg(w.nested_absmax + nb)), w.offset);
}

// Decode + mma of chunk c of the tile whose rows g, g + 8 are in L. acc[nt]: rows (g, g + 8) x x rows (8 nt + 2 t, + 1).
template <bool F16C, bool DR, int NT, int DEC>
__device__ __forceinline__ void compute_chunk(const Slot& L, const Weight& w, const uint8_t* smem, const float* tab,
                                              const float* ncode, const uint16_t* __restrict__ x, int M, int N, int K,
                                              int xs, int64_t row0, int c, int g, int t, uint32_t lane4, float (&acc)[NT][4]) {
    if (DEC == DEC_LOADS) {  // timing only: keep the loaded bits alive
        uint32_t f = 0;
#pragma unroll
        for (int h = 0; h < 2; h++)
            f ^= L.w[h].x ^ L.w[h].y ^ L.w[h].z ^ L.w[h].w ^ L.s[h];
        acc[0][0] = __uint_as_float(__float_as_uint(acc[0][0]) ^ f);
        return;
    }
    const int kb = c * CHUNK_K + 32 * t;
    const float a0 = piece_absmax(w, ncode, L.s[0], row0, N, K, kb);
    const float a1 = piece_absmax(w, ncode, L.s[1], row0 + 8, N, K, kb);
    uint32_t am0 = 0, am1 = 0;
    if (DEC == DEC_BNB) {
        am0 = pack_pair<F16C, false>(a0, a0);
        am1 = pack_pair<F16C, false>(a1, a1);
    }
    const uint32_t w0[4] = {L.w[0].x, L.w[0].y, L.w[0].z, L.w[0].w};
    const uint32_t w1[4] = {L.w[1].x, L.w[1].y, L.w[1].z, L.w[1].w};
#pragma unroll
    for (int word = 0; word < 4; word++) {
        // B fragments of the two mma steps of this word: x[8 nt + g][kb + 8 word .. + 8) (4 words; zero for rows >= M)
        uint4 xv[NT];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            const int m = 8 * nt + g;
            xv[nt] = make_uint4(0, 0, 0, 0);
            if (m < M) {
                if (xs) {
                    xv[nt] = *reinterpret_cast<const uint4*>(smem + x_off<DEC>(((c * 4 + word) * M + m) * 4 + t));
                } else if (kb < K) {
                    xv[nt] = __ldg(reinterpret_cast<const uint4*>(x + (int64_t)m * K + kb + 8 * word));
                }
            }
        }
        if (DEC == DEC_BNB) {
#pragma unroll
            for (int jj = 0; jj < 2; jj++) {
                // bytes 2 jj (k slots 2t, 2t+1) and 2 jj + 1 (slots 2t+8, 2t+9) of rows g and g + 8; address of byte b
                // for this lane: b * 256 + lane * 4 (prmt: byte b into bits 8..15, lane4 into 0..7)
                const uint32_t sel0 = 0x5504u | ((2u * jj) << 4), sel1 = 0x5504u | ((2u * jj + 1u) << 4);
                const uint32_t r0 = hmul2<F16C>(*reinterpret_cast<const uint32_t*>(smem + prmt(w0[word], lane4, sel0)), am0);
                const uint32_t r1 = hmul2<F16C>(*reinterpret_cast<const uint32_t*>(smem + prmt(w1[word], lane4, sel0)), am1);
                const uint32_t r2 = hmul2<F16C>(*reinterpret_cast<const uint32_t*>(smem + prmt(w0[word], lane4, sel1)), am0);
                const uint32_t r3 = hmul2<F16C>(*reinterpret_cast<const uint32_t*>(smem + prmt(w1[word], lane4, sel1)), am1);
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    mma16816<F16C>(acc[nt], r0, r1, r2, r3, jj ? xv[nt].z : xv[nt].x, jj ? xv[nt].w : xv[nt].y);
                }
            }
        } else {
            uint32_t r0[4], r1[4];
            if (DEC == DEC_EXACT) {
                decode_word_tab<F16C, DR>(w0[word], tab, a0, r0);
                decode_word_tab<F16C, DR>(w1[word], tab, a1, r1);
            } else {  // DEC_NONE: the words as if decoded (absmax folded in so its loads stay live)
                const uint32_t f0 = w0[word] ^ __float_as_uint(a0), f1 = w1[word] ^ __float_as_uint(a1);
#pragma unroll
                for (int b = 0; b < 4; b++) {
                    r0[b] = (f0 >> b) & 0x3F7F3F7Fu;
                    r1[b] = (f1 >> b) & 0x3F7F3F7Fu;
                }
            }
            // bytes 2 half, 2 half + 1 of the word = mma step 2 word + half; x words 2 half, 2 half + 1 of the unit
#pragma unroll
            for (int half = 0; half < 2; half++) {
                const int b = 2 * half;
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    mma16816<F16C>(acc[nt], r0[b], r1[b], r0[b + 1], r1[b + 1], half ? xv[nt].z : xv[nt].x,
                                   half ? xv[nt].w : xv[nt].y);
                }
            }
        }
    }
}

// The end of a tile, by its reducer warp: the W warps' fragments of ring slot `slot` added in warp order, + bias, one
// rounding to the compute dtype, stored in y's dtype.
template <bool F16C, int NT, int W>
__device__ __forceinline__ void finish_tile(const float4* red, int slot, int tile, int M, int N,
                                            const void* __restrict__ bias, int bias_dtype, void* __restrict__ y,
                                            int y_dtype, int lane) {
    constexpr int cdt = F16C ? DT_F16 : DT_BF16;
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 1
        for (int ww = 0; ww < W; ww++) {
            const float4 f = red[((slot * W + ww) * NT + nt) * 32 + lane];
            sum.x += f.x; sum.y += f.y; sum.z += f.z; sum.w += f.w;
        }
        const float v[4] = {sum.x, sum.y, sum.z, sum.w};
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const int64_t o = (int64_t)tile * 16 + g + 8 * (q >> 1);
            const int m = 8 * nt + 2 * t + (q & 1);
            if (o < N && m < M) {
                const float b = bias ? round_to(load_as_f32(bias, o, bias_dtype), cdt) : 0.0f;
                store_from_f32(y, (int64_t)m * N + o, y_dtype, round_to(__fadd_rn(v[q], b), cdt));
            }
        }
    }
}

// The kernel body. Launch: any grid (persistent: blocks/SM x SMs), W * 32 threads, dynamic shared memory
// smem_bytes(DEC, W, NT, D, K, M, xs), xs = x_fits(DEC, K, M). M <= 8 NT.
template <bool F16C, bool DR, int NT, int W, int D, int DEC>
__device__ __forceinline__ void gemv6_body(const Weight& w, const float* __restrict__ nested_code,
                                           const float* __restrict__ code16, const uint16_t* __restrict__ x, int M,
                                           int N, int K, const void* __restrict__ bias, int bias_dtype,
                                           void* __restrict__ y, int y_dtype, int xs) {
    static_assert(D >= 1 && D <= W, "one pending tile per warp and D-step group needs D <= W");
    extern __shared__ __align__(16) uint8_t smem[];
    const int base = base_bytes(DEC, K, M, xs);
    float4* red = reinterpret_cast<float4*>(smem + base);
    float* tab = reinterpret_cast<float*>(smem + base + red_bytes(W, NT, D));
    float* ncode = tab + 16;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const uint32_t lane4 = (uint32_t)lane * 4u;
    const int C = (K + CHUNK_K - 1) / CHUNK_K;
    const int J = (C + W - 1) / W;                             // steps per tile, every warp
    const int cw = warp < C ? (C - warp + W - 1) / W : 0;      // this warp's real chunks per tile (J or J - 1 or 0)
    const int TT = (N + 15) >> 4;
    const int G = gridDim.x, b = blockIdx.x;
    const int ntiles = b < TT ? (TT - b + G - 1) / G : 0;
    const int S = ntiles * J;                                  // steps of every warp of the block (block-uniform)

    // the ring's first D chunks go out before anything else. Load cursor: tile lt (global), step lj.
    int lt = b, lj = 0;
    Slot buf[D];
#pragma unroll
    for (int d = 0; d < D; d++) {
        buf[d] = load_slot(w, (int64_t)lt * 16 + g, N, K, (warp + lj * W) * CHUNK_K + 32 * t,
                                         lt < TT && lj < cw);
        if (++lj == J) { lj = 0; lt += G; }
    }

    // tables and x while those loads fly
    if (DEC == DEC_BNB) {
        // pair table: word of byte bb for lane l at bb * 256 + 4 l = (round_T(code[bb >> 4]) low, round_T(code[bb & 15]) high)
        for (int i = threadIdx.x; i < 256 * 32; i += W * 32) {
            const int bb = i >> 5, l = i & 31;
            *reinterpret_cast<uint32_t*>(smem + bb * 256 + l * 4) =
                pack_pair<F16C, false>(__ldg(code16 + (bb >> 4)), __ldg(code16 + (bb & 15)));
        }
    }
    if (DEC != DEC_LOADS) {
        if (threadIdx.x < 16) tab[threadIdx.x] = __ldg(code16 + threadIdx.x);
        if (w.nested) {
            for (int i = threadIdx.x; i < 256; i += W * 32) ncode[i] = __ldg(nested_code + i);
        }
        if (xs) {
            const int units = C * 16 * M;
            for (int xu = threadIdx.x; xu < units; xu += W * 32) {
                const int tt = xu & 3;
                int r = xu >> 2;
                const int m = r % M;
                r /= M;
                const int j4 = r & 3, c = r >> 2;
                const int k = c * CHUNK_K + 32 * tt + 8 * j4;
                uint4 v = make_uint4(0, 0, 0, 0);
                if (k < K) v = __ldg(reinterpret_cast<const uint4*>(x + (int64_t)m * K + k));
                *reinterpret_cast<uint4*>(smem + x_off<DEC>(xu)) = v;
            }
        }
    }
    __syncthreads();

    float acc[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;

    int ci = 0, cj = 0;  // compute cursor: the block's tile count (tile b + ci G) and step
    int pend = -1;       // the tile count this warp reduces at the end of the group (or -1)
    for (int s0 = 0; s0 < S; s0 += D) {
#pragma unroll
        for (int d = 0; d < D; d++) {
            if (s0 + d < S) {  // block-uniform
                const Slot ahead = load_slot(w, (int64_t)lt * 16 + g, N, K,
                                                           (warp + lj * W) * CHUNK_K + 32 * t, lt < TT && lj < cw);
                if (++lj == J) { lj = 0; lt += G; }
                if (cj < cw) {  // warp-uniform
                    compute_chunk<F16C, DR, NT, DEC>(buf[d], w, smem, tab, ncode, x, M, N, K, xs,
                                                     (int64_t)(b + ci * G) * 16 + g, warp + cj * W, g, t, lane4, acc);
                }
                buf[d] = ahead;
                if (++cj == J) {  // the tile's end: same step in every warp (block-uniform)
                    const int slot = ci % (D + 1);
#pragma unroll
                    for (int nt = 0; nt < NT; nt++) {
                        red[((slot * W + warp) * NT + nt) * 32 + lane] = make_float4(acc[nt][0], acc[nt][1], acc[nt][2], acc[nt][3]);
                        acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
                    }
                    block_sync();
                    if (ci % W == warp) pend = ci;
                    cj = 0;
                    ci++;
                }
            }
        }
        if (pend >= 0) {  // warp-uniform
            finish_tile<F16C, NT, W>(red, pend % (D + 1), b + pend * G, M, N, bias, bias_dtype, y, y_dtype, lane);
            pend = -1;
        }
    }
}

// DRB: also compile the double-rounding path (state dtype != compute dtype; exact numerics only).
template <bool F16C, int NT, int W, int BPS, int D, int DEC, bool DRB>
__global__ void __launch_bounds__(W * 32, BPS)
gemv6_kernel(const uint8_t* __restrict__ packed, const void* __restrict__ absmax,
             const float* __restrict__ nested_absmax, const float* __restrict__ nested_code, float offset,
             int log2_blocksize, int nested_bs, int nested_shift, int nested, const float* __restrict__ code16,
             const uint16_t* __restrict__ x, int M, int N, int K, const void* __restrict__ bias, int bias_dtype,
             void* __restrict__ y, int y_dtype, int double_round, int xs) {
    const Weight w{packed, absmax, nested_absmax, offset, log2_blocksize, nested_bs, nested_shift, nested};
    if (DRB && DEC == DEC_EXACT && double_round) {
        gemv6_body<F16C, true, NT, W, D, DEC>(w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype, xs);
    } else {
        gemv6_body<F16C, false, NT, W, D, DEC>(w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype, xs);
    }
}

}  // namespace nf4v6
