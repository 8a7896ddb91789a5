// nf4_gemv4.cuh — the "v4" decode GEMV of bitsandbytes 4-bit weights (NF4 / FP4, optionally double-quantized) with
// bitsandbytes' own batch-1 inference numerics: y [M, N] = x [M, K] W^T (+ bias), M <= 16, compute T = bf16 / f16,
// K % 32 == 0. Included by nf4_gemv4.cu (entry points) and native/bench/nf4_gemv_bench.cu (template variants).
//
// Numerics ("bnb inference", those of bitsandbytes' kgemm_4bit_inference_naive for the weight):
//   absmax_T(block) = round_T(F32 absmax[block]), or with double quantization
//                     round_T(fl(fl(nested_code[q[block]] * nested_absmax[block / nested_bs]) + offset));
//   weight          = round_T(round_T(code[q]) * absmax_T)   (one rounding of the exact product: a bf16x2 / f16x2
//                     multiply of the rounded code pair by the broadcast absmax pair);
//   y[m, o]         = round_y(round_T(sum_k x[m, k] * weight[o, k] + round_T(bias[o]))): products exact in f32,
//                     summed in f32 (mma f32 accumulators; the summation order is fixed for a device, see below).
// The CPU twin is dev.qlora4j.quant.Nf4InferenceMatmul. The exact contract (round(fl(code * absmax)) per value) stays
// with the v2 kernels of nf4_gemv.cu.
//
// Decode: a whole packed byte (2 values, high nibble = first k) is ONE shared-memory lookup of the pair
// (round_T(code[hi]), round_T(code[lo])) and ONE HMUL2 by (absmax_T, absmax_T): the result is an mma A register.
// The pair table is replicated per bank: the word of byte b for lane l lives at byte address b * 256 + l * 4, so a
// warp's 32 lookups hit 32 distinct banks for any bytes (conflict-free), and the address is ONE prmt of the packed
// word with lane * 4 (byte b lands in bits 8..15). Bytes 128..255 of every 256-byte table row hold the x slice
// (16-byte units), so table + x take 64 KiB together.
//
// Organisation (why: native/NOTES-nf4-gemv.md): the work is a list of units (split s, warp-tile): a warp-tile is
// 16 * TL output rows, a split is `cps` 128-wide chunks of K; units are ordered split-major. A persistent grid of B
// blocks takes contiguous unit ranges (balanced to within one unit); the W warps of a block all work on the same unit,
// each on a contiguous sub-range of its chunks, and add their mma fragments in warp order through shared memory at the
// unit's end (one barrier per unit; the reduction and the output are done by one warp, rotating). Every warp keeps a
// register ring of D chunks of loads in flight across unit boundaries (16 bytes of rows g and g + 8 of each of its TL
// tiles per chunk, ld.global.nc.L1::no_allocate, plus absmax), so the memory system never waits for a barrier.
// With S > 1 splits, a unit's fragment sum goes to a float32 scratch slot [s][row][m] and the last of a tile's S
// units to arrive (a per-tile counter) adds the S slots in split order: deterministic, no float atomics.
// x: the split's slice x[0..M)[k0 .. k0 + cps * 128) is staged in shared memory in mma-fragment order (one barrier
// when the block's split changes), so a quarter warp reads 128 contiguous bytes.
#pragma once
#include "q4_common.cuh"

namespace nf4v4 {

constexpr int CHUNK_K = 128;
constexpr int DEC_PAIR = 0;   // the pair-table decode (the real kernel)
constexpr int DEC_NONE = 1;   // timing only: the packed words fed to the mma as if decoded (the skeleton's cost)
constexpr int DEC_LOADS = 2;  // timing only: loads and unit bookkeeping, no x, no mma (the organisation's cost)

constexpr int TAB_BYTES = 65536;      // 256 rows of 256 bytes: pair table in [0, 128), x units in [128, 256)
constexpr int X_UNITS_MAX = 2048;     // 16-byte x units (32 KiB): cps * 16 * M <= 2048, i.e. cps * M <= 128

// Dynamic shared memory of a block: table + x, the fragment ring (D + 1 units), the 256 nested codes.
__host__ __device__ constexpr int red_floats(int W, int TL, int NT, int D) { return (D + 1) * W * TL * NT * 32 * 4; }
__host__ __device__ constexpr int smem_bytes(int W, int TL, int NT, int D) {
    return TAB_BYTES + 4 * red_floats(W, TL, NT, D) + 1024;
}

struct Args {
    const uint8_t* packed;        // [(N*K)/2]
    const void* absmax;           // F32 [blocks], or U8 [blocks] when nested
    const float* nested_absmax;   // F32 [ceil(blocks / nested_bs)] (nested only)
    const float* nested_code;     // F32 [256] (nested only)
    float offset;                 // nested only
    int log2_blocksize, nested_bs, nested_shift, nested;
    const float* code16;          // F32 [16]
    const uint16_t* x;            // [M, K] in T
    int M, N, K;
    const void* bias;             // [N] (any float dtype) or null
    int bias_dtype;
    void* y;                      // [M, N]
    int y_dtype;
    int S, cps;                   // splits of K, 128-wide chunks per split
    float* scratch;               // F32 [S][N][16] (S > 1)
    int* counters;                // int [ceil(N / (16 TL))], zero before the launch; left zero after it
};

// A block barrier that warps may reach from different places of the unrolled loop (a warp's unit ends fall on
// different ring slots than another's): the non-.aligned form (sm_70+), same memory ordering as __syncthreads.
__device__ __forceinline__ void block_sync() { asm volatile("barrier.sync 0;" ::: "memory"); }

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
    uint32_t r;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
    return r;
}

__device__ __forceinline__ uint4 ld_stream(const void* p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}

__device__ __forceinline__ uint32_t lds32(const uint8_t* smem, uint32_t off) {
    return *reinterpret_cast<const uint32_t*>(smem + off);
}

// round_T(a * b) of two T pairs, one rounding (fma with -0: an exact zero product keeps its sign, as a multiply).
template <bool F16C>
__device__ __forceinline__ uint32_t hmul2(uint32_t a, uint32_t b) {
    uint32_t r;
    if (F16C) {
        asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    } else {
        asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(0x80008000u));
    }
    return r;
}

// One chunk's loads of a thread: rows g and g + 8 of each of the warp's TL tiles, 16 bytes (32 values) each, and the
// absmax word of each: the F32 absmax bits (plain) or the 8-bit absmax code (nested; the group's nested absmax is
// read when the chunk is used: one float per nested_bs * blocksize values, an L1 hit).
template <int TL>
struct Slot {
    uint4 w[TL][2];
    uint32_t s[TL][2];
};

// The block's place in the unit list. Units u = s * TT + tile; a warp's steps within a unit: its contiguous chunk
// sub-range, at least one step (an empty step when it has no chunk) so that every warp meets every unit's barrier.
struct Cursor {
    int u;        // unit (S * TT < 2^31: the host checks)
    int j;        // step within the unit
    int n;        // steps of this warp in the unit (>= 1)
    int nreal;    // chunks of this warp in the unit (n or 0)
    int c0;       // first chunk (global index) of this warp in the unit
    int s, tile;
};

__device__ __forceinline__ void cursor_set(Cursor& c, int u, int TT, int C, int cps, int W, int warp) {
    c.u = u;
    c.j = 0;
    c.s = (int)((uint32_t)u / (uint32_t)TT);  // 32-bit: a 64-bit division costs ~20 registers while the ring is live
    c.tile = u - c.s * TT;
    const int cb = c.s * cps, ce = min(C, cb + cps), nch = ce - cb;
    const int wb = cb + nch * warp / W, we = cb + nch * (warp + 1) / W;
    c.c0 = wb;
    c.nreal = we - wb;
    c.n = max(1, c.nreal);
}

__device__ __forceinline__ void cursor_next(Cursor& c, int TT, int C, int cps, int W, int warp) {
    if (++c.j == c.n) cursor_set(c, c.u + 1, TT, C, cps, W, warp);
}

template <int TL>
__device__ __forceinline__ Slot<TL> load_slot(const Args& a, const Cursor& c, int uend, int g, int t) {
    Slot<TL> L;
    const bool valid = c.u < uend && c.j < c.nreal;
    const int kb = (c.c0 + c.j) * CHUNK_K + 32 * t;
#pragma unroll
    for (int ti = 0; ti < TL; ti++) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int64_t r = (int64_t)c.tile * (16 * TL) + 16 * ti + 8 * h + g;
            L.w[ti][h] = make_uint4(0, 0, 0, 0);
            L.s[ti][h] = 0;
            if (valid && kb < a.K && r < a.N) {
                const int64_t e = r * a.K + kb;
                L.w[ti][h] = ld_stream(a.packed + (e >> 1));
                const int64_t block = e >> a.log2_blocksize;
                L.s[ti][h] = a.nested ? (uint32_t)__ldg(reinterpret_cast<const uint8_t*>(a.absmax) + block)
                                      : __float_as_uint(__ldg(reinterpret_cast<const float*>(a.absmax) + block));
            }
        }
    }
    return L;
}

// The absmax (F32) of row piece (ti, h) of the chunk whose slot is L, at flattened index e = r * K + kb.
__device__ __forceinline__ float slot_absmax(const Args& a, const float* ncode, uint32_t s, int64_t e) {
    if (!a.nested) return __uint_as_float(s);
    const int64_t block = e >> a.log2_blocksize;
    const int64_t nb = a.nested_shift >= 0 ? (block >> a.nested_shift) : block / a.nested_bs;
    return __fadd_rn(__fmul_rn(ncode[s], __ldg(a.nested_absmax + nb)), a.offset);
}

// Shared-memory byte offset of x unit xu: rows of 256 bytes, units in bytes 128..255.
__device__ __forceinline__ uint32_t x_unit_off(int xu) {
    return (uint32_t)(xu >> 3) * 256u + 128u + (uint32_t)(xu & 7) * 16u;
}

// Stage x[0..M)[k0 .. k0 + nch * 128) in fragment order: unit xu = ((cl * 4 + j4) * M + m) * 4 + t holds
// x[m][k0 + 128 cl + 32 t + 8 j4 .. + 8) (zeros past K), i.e. words 4 j4 .. 4 j4 + 3 of thread (g = m, t)'s B
// fragment of local chunk cl.
__device__ __forceinline__ void stage_x(const Args& a, uint8_t* smem, int s, int C, int nthreads) {
    const int k0 = s * a.cps * CHUNK_K;
    const int nch = min(C, (s + 1) * a.cps) - s * a.cps;
    const int units = nch * 16 * a.M;
    for (int xu = threadIdx.x; xu < units; xu += nthreads) {
        const int t = xu & 3;
        int r = xu >> 2;
        const int m = r % a.M;
        r /= a.M;
        const int j4 = r & 3, cl = r >> 2;
        const int k = k0 + cl * CHUNK_K + 32 * t + 8 * j4;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (k < a.K) v = __ldg(reinterpret_cast<const uint4*>(a.x + (int64_t)m * a.K + k));
        *reinterpret_cast<uint4*>(smem + x_unit_off(xu)) = v;
    }
}

// Decode + mma of one chunk. acc[ti][nt]: fragment of rows (tile rows 16 ti + g, + 8) x (x rows 8 nt + 2 t, + 1).
template <bool F16C, int NT, int TL, int DEC>
__device__ __forceinline__ void compute_chunk(const Slot<TL>& L, const Args& a, const uint8_t* smem, const float* ncode,
                                              int tile, int c, int cl, int g, int t, uint32_t lane4,
                                              float (&acc)[TL][NT][4]) {
    if (DEC == DEC_LOADS) {  // timing only: keep the loaded bits alive, nothing else
        uint32_t f = 0;
#pragma unroll
        for (int ti = 0; ti < TL; ti++)
#pragma unroll
            for (int h = 0; h < 2; h++)
                f ^= L.w[ti][h].x ^ L.w[ti][h].y ^ L.w[ti][h].z ^ L.w[ti][h].w ^ L.s[ti][h];
        acc[0][0][0] = __uint_as_float(__float_as_uint(acc[0][0][0]) ^ f);
        return;
    }
    uint32_t am[TL][2];  // (absmax_T, absmax_T) of rows g and g + 8 of each tile
#pragma unroll
    for (int ti = 0; ti < TL; ti++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            // pieces past N or K were not loaded (zero words): their absmax must not be read either
            const int64_t r = (int64_t)tile * (16 * TL) + 16 * ti + 8 * h + g;
            const int kb = c * CHUNK_K + 32 * t;
            const float s = r < a.N && kb < a.K ? slot_absmax(a, ncode, L.s[ti][h], r * a.K + kb) : 0.0f;
            am[ti][h] = pack_pair<F16C, false>(s, s);
        }
#pragma unroll
    for (int j4 = 0; j4 < 4; j4++) {
        // B fragments of mma 2 j4 and 2 j4 + 1: x[8 nt + g][k0 + 128 cl + 32 t + 8 j4 .. + 8) (4 words; zero for
        // rows >= M: those lanes skip the load)
        uint4 xv[NT];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            const int m = 8 * nt + g;
            xv[nt] = make_uint4(0, 0, 0, 0);
            if (m < a.M) xv[nt] = *reinterpret_cast<const uint4*>(smem + x_unit_off(((cl * 4 + j4) * a.M + m) * 4 + t));
        }
#pragma unroll
        for (int ti = 0; ti < TL; ti++) {
            const uint32_t w0 = j4 == 0 ? L.w[ti][0].x : j4 == 1 ? L.w[ti][0].y : j4 == 2 ? L.w[ti][0].z : L.w[ti][0].w;
            const uint32_t w1 = j4 == 0 ? L.w[ti][1].x : j4 == 1 ? L.w[ti][1].y : j4 == 2 ? L.w[ti][1].z : L.w[ti][1].w;
#pragma unroll
            for (int jj = 0; jj < 2; jj++) {
                // mma j = 2 j4 + jj: bytes 2j (k slots 2t, 2t+1) and 2j + 1 (slots 2t+8, 2t+9) of rows g and g + 8,
                // i.e. bytes 2 jj and 2 jj + 1 of word j4; physical k = k0 + 128 cl + 32 t + 4 j + {0,1} / {2,3}:
                // x words 2 jj, 2 jj + 1 of xv.
                uint32_t r0, r1, r2, r3;
                if (DEC == DEC_PAIR) {
                    const uint32_t sel0 = 0x5504u | ((2 * jj) << 4), sel1 = 0x5504u | ((2 * jj + 1) << 4);
                    r0 = hmul2<F16C>(lds32(smem, prmt(w0, lane4, sel0)), am[ti][0]);
                    r1 = hmul2<F16C>(lds32(smem, prmt(w1, lane4, sel0)), am[ti][1]);
                    r2 = hmul2<F16C>(lds32(smem, prmt(w0, lane4, sel1)), am[ti][0]);
                    r3 = hmul2<F16C>(lds32(smem, prmt(w1, lane4, sel1)), am[ti][1]);
                } else {  // DEC_NONE: the packed words as if decoded (absmax folded in so its loads stay live)
                    r0 = w0 ^ am[ti][0];
                    r1 = w1 ^ am[ti][1];
                    r2 = w0 >> (4 * jj + 1);
                    r3 = w1 >> (4 * jj + 1);
                }
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const uint32_t b0 = jj ? xv[nt].z : xv[nt].x, b1 = jj ? xv[nt].w : xv[nt].y;
                    mma16816<F16C>(acc[ti][nt], r0, r1, r2, r3, b0, b1);
                }
            }
        }
    }
}

// The end of unit u (split s, warp-tile tile), by its reducer warp (u % W) after the unit's barrier: the W warps'
// fragments (fragment ring slot u % (D + 1)) added in warp order; the output, or a scratch slot + the tile counter.
template <bool F16C, int NT, int TL, int W, int D>
__device__ __forceinline__ void finish_unit(const Args& a, int u, int s, int tile, const float4* red, int lane) {
    const int g = lane >> 2, t = lane & 3;
    constexpr int cdt = F16C ? DT_F16 : DT_BF16;
    const int rb = u % (D + 1);
    const int64_t row0 = (int64_t)tile * (16 * TL) + g;
#pragma unroll
    for (int ti = 0; ti < TL; ti++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 1
            for (int w = 0; w < W; w++) {  // warp order: deterministic (not unrolled: few registers live)
                const float4 f = red[((rb * W + w) * TL * NT + ti * NT + nt) * 32 + lane];
                sum.x += f.x; sum.y += f.y; sum.z += f.z; sum.w += f.w;
            }
            const float v[4] = {sum.x, sum.y, sum.z, sum.w};
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const int64_t o = row0 + 16 * ti + 8 * (q >> 1);
                const int m = 8 * nt + 2 * t + (q & 1);
                if (o < a.N && m < a.M) {
                    if (a.S == 1) {
                        const float b = a.bias ? round_to(load_as_f32(a.bias, o, a.bias_dtype), cdt) : 0.0f;
                        store_from_f32(a.y, (int64_t)m * a.N + o, a.y_dtype, round_to(__fadd_rn(v[q], b), cdt));
                    } else {
                        __stcg(a.scratch + ((int64_t)s * a.N + o) * 16 + m, v[q]);
                    }
                }
            }
        }
    if (a.S == 1) return;
    // the last of the tile's S units to arrive adds the S partials in split order
    __threadfence();
    __syncwarp();
    int last = 0;
    if (lane == 0) last = atomicAdd(a.counters + tile, 1) == a.S - 1;
    if (__shfl_sync(0xFFFFFFFFu, last, 0) == 0) return;
    __threadfence();
#pragma unroll
    for (int ti = 0; ti < TL; ti++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const int64_t o = row0 + 16 * ti + 8 * (q >> 1);
                const int m = 8 * nt + 2 * t + (q & 1);
                if (o < a.N && m < a.M) {
                    float sum = 0.0f;
#pragma unroll 1
                    for (int sp = 0; sp < a.S; sp++) sum += __ldcg(a.scratch + ((int64_t)sp * a.N + o) * 16 + m);
                    const float b = a.bias ? round_to(load_as_f32(a.bias, o, a.bias_dtype), cdt) : 0.0f;
                    store_from_f32(a.y, (int64_t)m * a.N + o, a.y_dtype, round_to(__fadd_rn(sum, b), cdt));
                }
            }
    if (lane == 0) a.counters[tile] = 0;  // ready for the next launch
}

// The kernel body. Launch: any grid B >= 1 (persistent: SMs x blocks/SM, at most S * TT), W * 32 threads,
// dynamic shared memory smem_bytes(W, TL, NT, D).
template <bool F16C, int NT, int TL, int W, int D, int DEC>
__device__ __forceinline__ void gemv4_body(const Args& a) {
    extern __shared__ __align__(16) uint8_t smem[];
    float4* red = reinterpret_cast<float4*>(smem + TAB_BYTES);
    float* ncode = reinterpret_cast<float*>(smem + TAB_BYTES + 4 * red_floats(W, TL, NT, D));
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const uint32_t lane4 = (uint32_t)lane * 4u;
    const int C = (a.K + CHUNK_K - 1) / CHUNK_K;
    const int TT = (a.N + 16 * TL - 1) / (16 * TL);
    const int64_t U = (int64_t)a.S * TT;
    const int ubeg = (int)(U * blockIdx.x / gridDim.x), uend = (int)(U * (blockIdx.x + 1) / gridDim.x);

    // the ring's first D chunks go out before anything else
    Cursor lc, cc;
    cursor_set(lc, ubeg, TT, C, a.cps, W, warp);
    cc = lc;
    Slot<TL> buf[D];
#pragma unroll
    for (int d = 0; d < D; d++) {
        buf[d] = load_slot<TL>(a, lc, uend, g, t);
        if (lc.u < uend) cursor_next(lc, TT, C, a.cps, W, warp);
    }

    // pair table: word of byte b for lane l at b * 256 + 4 l = (round_T(code[b >> 4]) low, round_T(code[b & 15]) high)
    if (DEC != DEC_LOADS) {
        for (int i = threadIdx.x; i < 256 * 32; i += W * 32) {
            const int b = i >> 5, l = i & 31;
            const uint32_t word = pack_pair<F16C, false>(__ldg(a.code16 + (b >> 4)), __ldg(a.code16 + (b & 15)));
            *reinterpret_cast<uint32_t*>(smem + b * 256 + l * 4) = word;
        }
        if (a.nested) {
            for (int i = threadIdx.x; i < 256; i += W * 32) ncode[i] = __ldg(a.nested_code + i);
        }
    }
    int xs = -1;  // the split whose x slice is staged
    if (DEC != DEC_LOADS && ubeg < uend) {
        xs = cc.s;
        stage_x(a, smem, xs, C, W * 32);
    }
    __syncthreads();

    float acc[TL][NT][4];
#pragma unroll
    for (int ti = 0; ti < TL; ti++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++) acc[ti][nt][0] = acc[ti][nt][1] = acc[ti][nt][2] = acc[ti][nt][3] = 0.0f;

    // Unit ends: each warp writes its fragment to ring slot u % (D + 1) and meets the unit's barrier where its own
    // last step of the unit falls; the reducer warp (u % W) does the rest at the end of the D-step group (one copy
    // of that code instead of D). At most one unit per group is a warp's to finish (D <= W consecutive units), and a
    // slot is rewritten only after D more unit barriers, by which time its reducer has finished it.
    static_assert(D <= W, "one pending unit per warp and group needs D <= W");
    int pend = -1;
    while (cc.u < uend) {
#pragma unroll
        for (int d = 0; d < D; d++) {
            if (cc.u < uend) {  // block-uniform per unit
                const Slot<TL> ahead = load_slot<TL>(a, lc, uend, g, t);
                if (lc.u < uend) cursor_next(lc, TT, C, a.cps, W, warp);
                if (cc.j < cc.nreal) {  // warp-uniform
                    compute_chunk<F16C, NT, TL, DEC>(buf[d], a, smem, ncode, cc.tile, cc.c0 + cc.j,
                                                     cc.c0 + cc.j - cc.s * a.cps, g, t, lane4, acc);
                }
                buf[d] = ahead;
                if (cc.j + 1 == cc.n) {  // this warp's last step of unit cc.u: the unit's end (every warp meets it)
                    const int rb = cc.u % (D + 1);
#pragma unroll
                    for (int ti = 0; ti < TL; ti++)
#pragma unroll
                        for (int nt = 0; nt < NT; nt++) {
                            red[((rb * W + warp) * TL * NT + ti * NT + nt) * 32 + lane] =
                                make_float4(acc[ti][nt][0], acc[ti][nt][1], acc[ti][nt][2], acc[ti][nt][3]);
                            acc[ti][nt][0] = acc[ti][nt][1] = acc[ti][nt][2] = acc[ti][nt][3] = 0.0f;
                        }
                    block_sync();
                    if (cc.u % W == warp) pend = cc.u;
                    cursor_next(cc, TT, C, a.cps, W, warp);
                    if (DEC != DEC_LOADS && cc.u < uend && cc.s != xs) {  // block-uniform: the next split's x slice
                        xs = cc.s;
                        stage_x(a, smem, xs, C, W * 32);
                        block_sync();
                    }
                } else {
                    cursor_next(cc, TT, C, a.cps, W, warp);
                }
            }
        }
        if (pend >= 0) {  // warp-uniform
            const int ps = (int)((uint32_t)pend / (uint32_t)TT);
            finish_unit<F16C, NT, TL, W, D>(a, pend, ps, pend - ps * TT, red, lane);
            pend = -1;
        }
    }
}

template <bool F16C, int NT, int TL, int W, int BPS, int D, int DEC>
__global__ void __launch_bounds__(W * 32, BPS)
gemv4_kernel(const uint8_t* __restrict__ packed, const void* __restrict__ absmax,
             const float* __restrict__ nested_absmax, const float* __restrict__ nested_code, float offset,
             int log2_blocksize, int nested_bs, int nested_shift, int nested, const float* __restrict__ code16,
             const uint16_t* __restrict__ x, int M, int N, int K, const void* __restrict__ bias, int bias_dtype,
             void* __restrict__ y, int y_dtype, int S, int cps, float* __restrict__ scratch, int* __restrict__ counters) {
    const Args a{packed, absmax, nested_absmax, nested_code, offset, log2_blocksize, nested_bs, nested_shift, nested,
                 code16, x, M, N, K, bias, bias_dtype, y, y_dtype, S, cps, scratch, counters};
    gemv4_body<F16C, NT, TL, W, D, DEC>(a);
}

// The launch geometry (host and Java: Nf4GemvKernels mirrors it). blocks0 = SMs x resident blocks per SM.
// cps: as few splits as the x slice allows (cps * M <= 128), then more until the block count gets >= upb units each
// (balance: a block's work is a whole number of units), but never fewer chunks per unit than warps (when K allows).
struct Geometry { int S, cps, grid; };
__host__ __device__ inline Geometry geometry(int M, int N, int K, int TL, int W, int blocks0, int upb) {
    const int C = (K + CHUNK_K - 1) / CHUNK_K;
    const int TT = (N + 16 * TL - 1) / (16 * TL);
    const int cps_x = 128 / M;
    const long long want = (long long)upb * blocks0;                // units wanted (upb 0: as few splits as x allows)
    const int s_bal = want > TT ? (int)((want + TT - 1) / TT) : 1;
    int cps = (C + s_bal - 1) / s_bal;
    cps = cps > W ? cps : (W < C ? W : C);
    cps = cps < cps_x ? cps : cps_x;
    cps = cps < C ? cps : C;
    const int S = (C + cps - 1) / cps;
    const long long U = (long long)S * TT;
    const int grid = (int)(U < blocks0 ? U : blocks0);
    return Geometry{S, cps, grid};
}

}  // namespace nf4v4
