// nf4_gemv.cu — the "v2" decode GEMV of bitsandbytes 4-bit weights (NF4 / FP4, optionally double-quantized):
// y [M, N] = x [M, K] W^T (+ bias), M <= 16 rows of x, 16-bit compute (bf16 / f16), K % 32 == 0.
// nf4.cu keeps the earlier variants (stream / hybrid / mma); Nf4GemvKernels.java launches these.
//
// Numerics (those of nf4.cu and of the CPU reference dev.qlora4j.quant.Nf4Matmul):
//   absmax(block) = F32 absmax[block], or nested: fl(fl(nested_code[q[block]] * nested_absmax[block / nested_bs]) + offset);
//   weight        = round(compute, round(state, fl(table[code] * absmax)))  (per value; never factored out of a sum);
//   y[m, o]       = round(y, round(compute, sum_k x[m, k] * weight[o, k] + round(compute, bias[o]))), float32 sums
//                   (tensor-core mma with float32 accumulators; the order differs from the CPU's, which the tests allow).
//
// Organisation (why: native/bench/README.md; native/bench/nf4_gemv_bench.cu times the knobs below):
//  - one block owns TILES tiles of 16 output rows and the whole of K: no split-K across blocks, so no partial
//    scratch, no atomics, no "last block" tail; the W warps of the block split K's 128-wide chunks round-robin
//    (warp w: chunks w, w + W, ...: at any moment the block's warps read W adjacent 64-byte pieces of each row)
//    and add their float32 mma fragments through shared memory in warp order (deterministic);
//  - each thread keeps DEPTH chunks of weight loads in flight (16 bytes of rows g and g + 8 of every tile per
//    chunk, ld.global.nc.L1::no_allocate), issued before anything waits on them; absmax loads go with them,
//    a nested absmax is decoded when the chunk is used (no load waits on another load);
//  - no per-launch table fill: the 16 factors (64 bytes) and the 256 nested codes (1 KiB) go to shared memory;
//  - decode DEC_TAB: per nibble, one LDS.32 from the 16-float table (16 distinct words = 16 distinct banks, so
//    conflict-free for any codes), fl(code * absmax), and one cvt.rn.bf16x2 / f16x2 per byte; DEC_REG: per-slice
//    register tables looked up with prmt (ALU only, the "hybrid" decode of nf4.cu);
//  - mma.m16n8k16 (A = 16 weight rows x 16 k, B = x rows): thread (g, t) holds the 32 values k = 128c + 32t ..
//    + 31 of rows g and g + 8, and reads x[g (+8)][the same 32 k] from global memory (L1-resident: x is small).
//
// Dtype codes (launch arguments): 0 = float32, 1 = bfloat16, 2 = float16.
#include "q4_common.cuh"

namespace nf4v2 {

constexpr int CHUNK_K = 128;
constexpr int DEC_TAB = 0;   // 16-float table in shared memory, one LDS per nibble
constexpr int DEC_REG = 1;   // per-slice bf16/f16 tables in registers, prmt lookups (ALU only)
constexpr int DEC_NONE = 2;  // timing only: the packed bits used as if decoded (wrong results; the bench's ceiling)
constexpr int DEC_PAIR = 3;  // 256-entry (code[hi], code[lo]) pair table, replicated per half-warp lane: one LDS.64 per byte
// DEC_PAIR: copies of the pair table; lane l reads copy l % 16, so a half-warp's 16 LDS.64 hit 16 distinct bank pairs
// whatever the bytes (float2 index = byte * 16 + copy). 256 x 16 x 8 B = 32 KiB of shared memory per block.
constexpr int PAIR_COPIES = 16;
// At namespace scope so that a kernel's two gemv_body instances (double rounding or not) share one table.
__shared__ __align__(16) float2 pair_table[256 * PAIR_COPIES];
// DEC_BNB: bitsandbytes' batch-1 weights (kgemm_4bit_inference_naive): w = round_T(round_T(code) * round_T(absmax)),
// one HMUL2 per byte from a "wide" table of T pairs (round_T(code[hi]), round_T(code[lo])), one copy per lane: byte v
// for lane l at byte offset v * 256 + l * 4, so the address is ONE prmt of the packed word with l * 4 (byte v lands in
// bits 8..15; the upper half of each 256-byte row is unused). 64 KiB of dynamic shared memory, conflict-free for any
// bytes. Products are exact in the f32 mma sums. Not the exact contract of the other decodes: the opt-in "v2bnb"
// variant, checked against BnbBatch1Reference's weights. (A wide table of DEC_PAIR's float pairs, one prmt instead of
// a prmt and two IMADs per byte, measured no faster than DEC_PAIR on the H200: session 5, bench/RESULTS.md.)
constexpr int DEC_BNB = 5;
// DEC_CODE: x times the codes alone (DEC_BNB's wide table, no HMUL2), each absmax block's float32 sum scaled once by
// its absmax (nf4_gemv_code.cuh): not the exact contract either; the default "v2code" variant for 1..8 rows.
constexpr int DEC_CODE = 6;
// Dynamic shared memory of the DEC_BNB launches (the host passes exactly this; the bench reads it, the engine's
// Nf4GemvKernels.WIDE_TABLE_BYTES mirrors it).
[[maybe_unused]] constexpr int WIDE_TABLE_BYTES = 256 * 256;
extern __shared__ __align__(16) uint8_t wide_table[];

__host__ __device__ constexpr bool wide_decode(int dec) { return dec == DEC_BNB || dec == DEC_CODE; }


// The statistics of one 4-bit weight (the same leading kernel arguments as nf4.cu's Q4_WEIGHT_PARAMS).
struct Weight {
    const uint8_t* packed;        // [(N*K+1)/2]
    const void* absmax;           // F32 [blocks], or U8 [blocks] when nested
    const float* nested_absmax;   // F32 [ceil(blocks / nested_bs)] (nested only)
    float offset;                 // nested only
    int log2_blocksize;
    int nested_bs;
    int nested_shift;             // log2(nested_bs) when a power of two, else -1
    int nested;
};

// PF: 0 = no L2 prefetch hint, 1 = .L2::128B, 2 = .L2::256B (DRAM fetches whole 128/256-byte pieces).
template <int PF>
__device__ __forceinline__ uint4 ld_stream_u4(const void* p) {
    uint4 r;
    if (PF == 2) {
        asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    } else if (PF == 1) {
        asm volatile("ld.global.nc.L1::no_allocate.L2::128B.v4.u32 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    } else {
        asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    }
    return r;
}

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
    uint32_t r;  // PTX prmt (not __byte_perm): selector bit 3 of a nibble is the sign-replicate mode used below
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
    return r;
}

// ---- decode of one packed 32-bit word (8 values, bytes 0..3 = k pairs 0..3) into 4 bf16x2 / f16x2 registers:
// r[b] = (value of byte b's high nibble in the low half, its low nibble's value in the high half), i.e. the k
// order of x in memory (value 2i is the high nibble of byte i).

// DEC_TAB: tab = the 16 factors in shared memory. A holds 4 * (high nibble) in each byte, B 4 * (low nibble):
// each byte is a ready byte offset into the table.
template <bool F16C, bool DR>
__device__ __forceinline__ void decode_word_tab(uint32_t w, const float* tab, float amax, uint32_t* r) {
    const uint32_t A = (w >> 2) & 0x3C3C3C3Cu, B = (w << 2) & 0x3C3C3C3Cu;
    const char* base = reinterpret_cast<const char*>(tab);
#pragma unroll
    for (int b = 0; b < 4; b++) {
        const uint32_t oh = __byte_perm(A, 0, 0x4440 | b), ol = __byte_perm(B, 0, 0x4440 | b);
        const float vh = *reinterpret_cast<const float*>(base + oh);
        const float vl = *reinterpret_cast<const float*>(base + ol);
        r[b] = pack_pair<F16C, DR>(__fmul_rn(vh, amax), __fmul_rn(vl, amax));
    }
}

// DEC_PAIR: pair = the lane's copy of the pair table (byte v at pair + v * PAIR_COPIES: (code[v >> 4], code[v & 15])).
// Per byte: the byte times 128 (its copy's byte offset), one LDS.64, two FMUL and one cvt: the same values as
// decode_word_tab (the same code factors and products), with one table read per byte instead of two.
// The table address is formed as ONE multiply-add of the byte with the lane copy's shared-window address (an opaque
// register, so that the compiler cannot re-associate it into (byte * 16 + copy) * 8 + table: two IMADs per byte).
template <bool F16C, bool DR>
__device__ __forceinline__ void decode_word_pair(uint32_t w, const float2* pair, float amax, uint32_t* r) {
    uint32_t base;
    asm("mov.u32 %0, %1;" : "=r"(base) : "r"((uint32_t)__cvta_generic_to_shared(pair)));
#pragma unroll
    for (int b = 0; b < 4; b++) {
        const uint32_t a = __byte_perm(w, 0, 0x4440 | b) * (uint32_t)(PAIR_COPIES * sizeof(float2)) + base;
        float cx, cy;
        asm("ld.shared.v2.f32 {%0, %1}, [%2];" : "=f"(cx), "=f"(cy) : "r"(a));
        r[b] = pack_pair<F16C, DR>(__fmul_rn(cx, amax), __fmul_rn(cy, amax));
    }
}

// The byte offset of byte b of w in a wide table: (byte << 8) | (lane_off & 0xFF), lane_off = lane * entry bytes.
__device__ __forceinline__ uint32_t wide_offset(uint32_t w, uint32_t lane_off, int b) {
    return prmt(w, lane_off, 0x5504u | (uint32_t)(b << 4));
}

// round_T(a * b) for two T pairs, one rounding (fma with -0: an exact zero product keeps its sign, as a multiply).
template <bool F16C>
__device__ __forceinline__ uint32_t hmul2(uint32_t a, uint32_t b) {
    uint32_t r;
    if (F16C) {
        asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(0x80008000u));
    } else {
        asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(0x80008000u));
    }
    return r;
}

// DEC_BNB: per byte one prmt, one LDS.32 and one HMUL2 by amax2 = (round_T(absmax), round_T(absmax)).
template <bool F16C>
__device__ __forceinline__ void decode_word_bnb(uint32_t w, uint32_t lane_off, uint32_t amax2, uint32_t* r) {
#pragma unroll
    for (int b = 0; b < 4; b++) {
        r[b] = hmul2<F16C>(*reinterpret_cast<const uint32_t*>(wide_table + wide_offset(w, lane_off, b)), amax2);
    }
}

// Fills DEC_BNB's wide table at table (wide_table, or an SM-wide block's: nf4_gemv_team.cuh) with threads threads of
// index tid: T pairs, 32 copies of 4 bytes in the first half of each 256-byte row, 16-byte stores.
template <bool F16C>
__device__ __forceinline__ void fill_wide_table(uint8_t* table, const float* __restrict__ code16, int tid, int threads) {
    for (int i = tid; i < 256 * 8; i += threads) {  // 8 units of 4 copies per row, bytes 0..127
        const int v = i >> 3, u = i & 7;
        const uint32_t word = pack_pair<F16C, false>(__ldg(code16 + (v >> 4)), __ldg(code16 + (v & 15)));
        reinterpret_cast<uint4*>(table + v * 256)[u] = make_uint4(word, word, word, word);
    }
}

// DEC_REG: the 16 possible weights of a 32-value slice (one absmax), T[q] = round(fl(code[q] * amax)), as byte
// planes: P[j] = low bytes of T[4j..4j+3], P[4 + j] = high bytes (16 FMUL, 8 cvt, 8 prmt per slice).
template <bool F16C, bool DR>
__device__ __forceinline__ void build_planes(const float* tab, float amax, uint32_t (&P)[8]) {
#pragma unroll
    for (int j = 0; j < 4; j++) {
        float4 c = reinterpret_cast<const float4*>(tab)[j];
        uint32_t t0 = pack_pair<F16C, DR>(__fmul_rn(c.x, amax), __fmul_rn(c.y, amax));
        uint32_t t1 = pack_pair<F16C, DR>(__fmul_rn(c.z, amax), __fmul_rn(c.w, amax));
        P[j] = prmt(t0, t1, 0x6420);
        P[4 + j] = prmt(t0, t1, 0x7531);
    }
}

// prmt looks up 4 nibbles at a time from 8 entries (entries 0-7 with the nibbles as selectors, 8-15 with bit 3
// flipped); a byte mask of the nibbles' bit 3 (prmt in sign-replicate mode over w << 4 and w) picks between them.
__device__ __forceinline__ void decode_word_reg(uint32_t w, const uint32_t (&P)[8], uint32_t* r) {
    const uint32_t sh = w << 4;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const uint32_t s = h ? (w >> 16) : w;
        const uint32_t sx = s ^ 0x8888u;
        const uint32_t m = prmt(sh, w, h ? 0xFBEA : 0xD9C8);  // 0xFF where the nibble is >= 8
        const uint32_t lo = (prmt(P[0], P[1], s) & ~m) | (prmt(P[2], P[3], sx) & m);
        const uint32_t hi = (prmt(P[4], P[5], s) & ~m) | (prmt(P[6], P[7], sx) & m);
        r[2 * h] = prmt(lo, hi, 0x4051);
        r[2 * h + 1] = prmt(lo, hi, 0x6273);
    }
}

// a when B, else b (a compile-time choice between two arrays of the same type).
template <bool B, class T>
__device__ __forceinline__ T& pick(T& a, T& b) {
    if constexpr (B) return a;
    else return b;
}

// One chunk's loads for one thread: rows g and g + 8 of each of the block's TILES tiles.
template <int TILES>
struct ChunkLoad {
    uint4 w[TILES][2];      // 16 packed bytes (32 values), zero past N or K
    float s[TILES][2];      // absmax (plain) or the block group's nested absmax (nested)
    uint32_t q[TILES][2];   // nested only: the 8-bit absmax code
};

template <int TILES, int PF>
__device__ __forceinline__ ChunkLoad<TILES> load_chunk(const Weight& w, int64_t row0, int N, int K, int kb, bool valid) {
    ChunkLoad<TILES> L;
#pragma unroll
    for (int ti = 0; ti < TILES; ti++) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int64_t r = row0 + 16 * ti + 8 * h;
            L.w[ti][h] = make_uint4(0, 0, 0, 0);
            L.s[ti][h] = 0.0f;
            L.q[ti][h] = 0;
            if (valid && kb < K && r < N) {
                const int64_t e = r * K + kb;
                L.w[ti][h] = ld_stream_u4<PF>(w.packed + (e >> 1));
                const int64_t block = e >> w.log2_blocksize;
                if (w.nested) {
                    L.q[ti][h] = __ldg(reinterpret_cast<const uint8_t*>(w.absmax) + block);
                    const int64_t nb = w.nested_shift >= 0 ? (block >> w.nested_shift) : block / w.nested_bs;
                    L.s[ti][h] = __ldg(w.nested_absmax + nb);
                } else {
                    L.s[ti][h] = __ldg(reinterpret_cast<const float*>(w.absmax) + block);
                }
            }
        }
    }
    return L;
}

// Zero-filled loads give a finite absmax; their x is zero (past K) or their row is never stored (past N).
__device__ __forceinline__ float chunk_absmax(const Weight& w, const float* ncode, float s, uint32_t q) {
    return w.nested ? __fadd_rn(__fmul_rn(ncode[q], s), w.offset) : s;
}

// One tile's 32 packed bytes per thread (w0: row g, w1: row g + 8; 16 bytes each) decoded with their absmax (a0, a1)
// and multiplied into acc by 8 mma.m16n8k16 per x fragment set (xw: the same 32 k of x rows g + 8 nt).
template <bool F16C, bool DR, int NT, int DEC>
__device__ __forceinline__ void decode_mma(const uint32_t (&w0)[4], const uint32_t (&w1)[4], float a0, float a1,
                                           const float* tab, const float2* pair, uint32_t lane_off,
                                           const uint32_t (&xw)[NT][16], float (&acc)[NT][4]) {
    uint32_t P0[8], P1[8];
    uint32_t am0 = 0, am1 = 0;
    if (DEC == DEC_BNB) {
        am0 = pack_pair<F16C, false>(a0, a0);
        am1 = pack_pair<F16C, false>(a1, a1);
    }
    if (DEC == DEC_REG) {
        build_planes<F16C, DR>(tab, a0, P0);
        build_planes<F16C, DR>(tab, a1, P1);
    }
#pragma unroll
    for (int word = 0; word < 4; word++) {
        uint32_t r0[4], r1[4];
        if (DEC == DEC_TAB) {
            decode_word_tab<F16C, DR>(w0[word], tab, a0, r0);
            decode_word_tab<F16C, DR>(w1[word], tab, a1, r1);
        } else if (DEC == DEC_PAIR) {
            decode_word_pair<F16C, DR>(w0[word], pair, a0, r0);
            decode_word_pair<F16C, DR>(w1[word], pair, a1, r1);
        } else if (DEC == DEC_BNB) {
            decode_word_bnb<F16C>(w0[word], lane_off, am0, r0);
            decode_word_bnb<F16C>(w1[word], lane_off, am1, r1);
        } else if (DEC == DEC_REG) {
            decode_word_reg(w0[word], P0, r0);
            decode_word_reg(w1[word], P1, r1);
        } else {
#pragma unroll
            for (int b = 0; b < 4; b++) {
                r0[b] = prmt(w0[word], w1[word], 0x3210 + 0x1111 * b) & 0x3F7F3F7Fu;
                r1[b] = prmt(w1[word], w0[word], 0x3210 + 0x1111 * b) & 0x3F7F3F7Fu;
            }
        }
        // bytes 2 half, 2 half + 1 of the word = mma k step 2 word + half; x words 2 st, 2 st + 1
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int st = 2 * word + half, b = 2 * half;
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                mma16816<F16C>(acc[nt], r0[b], r1[b], r0[b + 1], r1[b + 1], xw[nt][2 * st], xw[nt][2 * st + 1]);
            }
        }
    }
}

template <bool F16C, bool DR, int NT, int TILES, int DEC, bool XKEPT>
__device__ __forceinline__ void compute_chunk(const ChunkLoad<TILES>& L, const Weight& w, const float* tab,
                                              const float2* pair, const float* ncode, const uint16_t* __restrict__ x,
                                              int M, int K, int kb, int g, uint32_t (&xw_kept)[NT][16],
                                              float (&acc)[TILES][NT][4]) {
    static_assert(DEC == DEC_TAB || DEC == DEC_REG || DEC == DEC_NONE || DEC == DEC_PAIR || wide_decode(DEC),
                  "decode: DEC_TAB, DEC_REG, DEC_PAIR, DEC_BNB or DEC_NONE");
    const uint32_t lane_off = (threadIdx.x & 31) * 4u;  // the lane's byte offset in a wide table row (DEC_BNB)
    // B fragments x[g + 8 nt][kb .. kb + 32) as 16 bf16x2 / f16x2 words (zero for rows >= M and past K). XKEPT: the caller's xw_kept, zero on entry to the
    // kernel; rows >= M never write theirs (they stay zero without a per-chunk clear; the registers then live across
    // the chunk loop, which the rolled loops have room for), rows < M load theirs, or clear them past K. Otherwise a
    // local array that every chunk writes in full (the unrolled m16 loops would spill with the kept one).
    uint32_t xw_local[NT][16];
    auto& xw = pick<XKEPT>(xw_kept, xw_local);
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        const int xr = g + 8 * nt;
        if (XKEPT && xr >= M) continue;
        if (xr < M && kb < K) {
            const uint4* xp = reinterpret_cast<const uint4*>(x + (int64_t)xr * K + kb);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                uint4 v = __ldg(xp + j);
                xw[nt][4 * j] = v.x; xw[nt][4 * j + 1] = v.y; xw[nt][4 * j + 2] = v.z; xw[nt][4 * j + 3] = v.w;
            }
        } else {
#pragma unroll
            for (int j = 0; j < 16; j++) xw[nt][j] = 0;
        }
    }
#pragma unroll
    for (int ti = 0; ti < TILES; ti++) {
        const float a0 = chunk_absmax(w, ncode, L.s[ti][0], L.q[ti][0]);
        const float a1 = chunk_absmax(w, ncode, L.s[ti][1], L.q[ti][1]);
        const uint32_t w0[4] = {L.w[ti][0].x, L.w[ti][0].y, L.w[ti][0].z, L.w[ti][0].w};
        const uint32_t w1[4] = {L.w[ti][1].x, L.w[ti][1].y, L.w[ti][1].z, L.w[ti][1].w};
        decode_mma<F16C, DR, NT, DEC>(w0, w1, a0, a1, tab, pair, lane_off, xw, acc[ti]);
    }
}

// The tables a block decodes with, in shared memory (before the programmatic-launch wait: they overlap the previous
// kernel's tail): the 16 factors, the 256 nested codes (nested weights), and DEC_PAIR's / DEC_BNB's pair tables.
template <bool F16C, int DEC>
__device__ __forceinline__ void fill_tables(float* tab, float* ncode, const float* __restrict__ code16,
                                            const float* __restrict__ nested_code, int nested, int threads) {
    if (threadIdx.x < 16) tab[threadIdx.x] = __ldg(code16 + threadIdx.x);
    if (nested) {
        for (int j = threadIdx.x; j < 256; j += threads) ncode[j] = __ldg(nested_code + j);
    }
    if constexpr (DEC == DEC_PAIR) {
        // 16-byte stores of two copies of one entry (unit i holds copies 2 (i % 8), + 1 of byte i / 8): a warp's
        // stores are 512 contiguous bytes, conflict-free; 8 per thread instead of 16 8-byte ones
        static_assert(PAIR_COPIES == 16, "unit i = copies of entry i / 8");
        for (int i = threadIdx.x; i < 256 * PAIR_COPIES / 2; i += threads) {
            const int v = i >> 3;
            const float hi = __ldg(code16 + (v >> 4)), lo = __ldg(code16 + (v & 15));
            reinterpret_cast<float4*>(pair_table)[i] = make_float4(hi, lo, hi, lo);
        }
    }
    if constexpr (wide_decode(DEC)) fill_wide_table<F16C>(wide_table, code16, threadIdx.x, threads);
}

// Shared memory of a block (static): 16 factors, 256 nested codes, and W x TILES x NT x 32 float4 fragments.
template <int W, int TILES, int NT>
struct Smem {
    float4 red[W * TILES * NT * 32];
    float tab[16];
    float ncode[256];
};

// The block's Smem: one object per (W, TILES, NT), shared by every body a kernel inlines (double rounding or not,
// aligned or general), so that a kernel's static shared memory is the Smem of one body, not the sum of all.
template <int W, int TILES, int NT>
__device__ __forceinline__ Smem<W, TILES, NT>& block_smem() {
    __shared__ __align__(16) Smem<W, TILES, NT> sm;
    return sm;
}

// The end of a block: the W warps' mma fragments (acc, per tile and x fragment set) added in warp order through
// shared memory (deterministic), the bias added, y stored for rows < N and x rows < M.
template <bool F16C, int NT, int W, int TILES>
__device__ __forceinline__ void reduce_store(float4* red4, const float (&acc)[TILES][NT][4], int M, int N,
                                             const void* __restrict__ bias, int bias_dtype, void* __restrict__ y,
                                             int y_dtype, int bx) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
    for (int ti = 0; ti < TILES; ti++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
            red4[((warp * TILES + ti) * NT + nt) * 32 + lane] = make_float4(acc[ti][nt][0], acc[ti][nt][1], acc[ti][nt][2], acc[ti][nt][3]);
    __syncthreads();
    const int cdt = F16C ? DT_F16 : DT_BF16;
    const float* red = reinterpret_cast<const float*>(red4);
    for (int e = threadIdx.x; e < TILES * NT * 128; e += W * 32) {
        // e = ((ti * NT + nt) * 32 + ln) * 4 + q: fragment entry q of lane ln = (row g' + 8 (q >> 1), x row 2 t' + (q & 1))
        const int q = e & 3, ln = (e >> 2) & 31, tn = e >> 7;
        const int ti = tn / NT, nt = tn - ti * NT;
        const int64_t o = ((int64_t)bx * TILES + ti) * 16 + (ln >> 2) + 8 * (q >> 1);
        const int m = 8 * nt + 2 * (ln & 3) + (q & 1);
        if (o >= N || m >= M) continue;
        float sum = 0.0f;
        for (int ww = 0; ww < W; ww++) sum += red[ww * (TILES * NT * 128) + e];
        const float b = bias ? round_to(load_as_f32(bias, o, bias_dtype), cdt) : 0.0f;
        store_from_f32(y, (int64_t)m * N + o, y_dtype, round_to(__fadd_rn(sum, b), cdt));
    }
}

// The kernel body. Launch: grid = ceil(N / (16 * TILES)) blocks of W * 32 threads, no dynamic shared memory.
// bx: this block's tile of output rows, rows [16 TILES bx, 16 TILES (bx + 1)) (blockIdx.x for a one-weight launch;
// the grouped entries below give each weight its own range of blocks).
// ROLLED: the chunk loop is not unrolled; the ring of loads moves down one slot per chunk (register moves), so the
// loop body is one chunk's code instead of DEPTH chunks' (a smaller instruction footprint per warp).
template <bool F16C, bool DR, int NT, int W, int TILES, int DEPTH, int DEC, int PF, bool ROLLED = false>
__device__ __forceinline__ void gemv_body(const Weight& w, const float* __restrict__ nested_code,
                                          const float* __restrict__ code16, const uint16_t* __restrict__ x, int M,
                                          int N, int K, const void* __restrict__ bias, int bias_dtype,
                                          void* __restrict__ y, int y_dtype, int bx) {
    Smem<W, TILES, NT>& sm = block_smem<W, TILES, NT>();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const int C = (K + CHUNK_K - 1) / CHUNK_K;
    const int cpw = warp < C ? (C - warp + W - 1) / W : 0;  // this warp's chunks: warp, warp + W, ...
    const int64_t row0 = (int64_t)bx * (16 * TILES) + g;
    const int kb0 = warp * CHUNK_K + 32 * t;                 // k of this thread's first chunk
    const int kstep = W * CHUNK_K;

    // the first DEPTH chunks' loads go out before anything else
    ChunkLoad<TILES> buf[DEPTH];
#pragma unroll
    for (int d = 0; d < DEPTH; d++) buf[d] = load_chunk<TILES, PF>(w, row0, N, K, kb0 + d * kstep, d < cpw);

    fill_tables<F16C, DEC>(sm.tab, sm.ncode, code16, nested_code, w.nested, W * 32);
    const float2* pair = DEC == DEC_PAIR ? pair_table + (lane & (PAIR_COPIES - 1)) : nullptr;
    // programmatic dependent launch (pdl.cuh): the weight loads and tables above overlap the previous kernel's tail;
    // x is read and y written only after it has completed
    pdl_wait();
    pdl_launch_dependents();
    __syncthreads();

    float acc[TILES][NT][4];
#pragma unroll
    for (int ti = 0; ti < TILES; ti++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++) acc[ti][nt][0] = acc[ti][nt][1] = acc[ti][nt][2] = acc[ti][nt][3] = 0.0f;
    uint32_t xw[NT][16];  // B fragments: x[g + 8 nt][the chunk's 32 k of this thread] (compute_chunk)
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int j = 0; j < 16; j++) xw[nt][j] = 0;

    if constexpr (ROLLED) {
#pragma unroll 1
        for (int j = 0; j < cpw; j++) {
            const int kb = kb0 + j * kstep;
            ChunkLoad<TILES> ahead = load_chunk<TILES, PF>(w, row0, N, K, kb + DEPTH * kstep, j + DEPTH < cpw);
            compute_chunk<F16C, DR, NT, TILES, DEC, true>(buf[0], w, sm.tab, pair, sm.ncode, x, M, K, kb, g, xw, acc);
#pragma unroll
            for (int d = 0; d + 1 < DEPTH; d++) buf[d] = buf[d + 1];
            buf[DEPTH - 1] = ahead;
        }
    } else {
        for (int j0 = 0; j0 < cpw; j0 += DEPTH) {
#pragma unroll
            for (int d = 0; d < DEPTH; d++) {
                const int j = j0 + d;
                if (j < cpw) {  // warp-uniform
                    const int kb = kb0 + j * kstep;
                    ChunkLoad<TILES> ahead = load_chunk<TILES, PF>(w, row0, N, K, kb + DEPTH * kstep, j + DEPTH < cpw);
                    compute_chunk<F16C, DR, NT, TILES, DEC, false>(buf[d], w, sm.tab, pair, sm.ncode, x, M, K, kb, g, xw, acc);
                    buf[d] = ahead;
                }
            }
        }
    }

    reduce_store<F16C, NT, W, TILES>(sm.red, acc, M, N, bias, bias_dtype, y, y_dtype, bx);
}

// ---- The "aligned" path of the pair / bnb kernels (gemv_body_fast): the same tiles, warps, k order, decode and
// reduction as gemv_body (bit-identical results), for the weights of every model (fast_applies): K a multiple of
// CHUNK_K and of the blocksize, and a nested blocksize that is a power of two. Then every chunk of a thread is whole
// and inside its row, and gemv_body's per-chunk work that only the general case needs goes away (session 6; it was
// ~200 of the ~470 SASS instructions of a pair chunk, ~210 of the bnb kernel's ~315 PTX ones):
//  - no 64-bit (row * K + k) arithmetic per chunk: each row keeps a byte pointer and its first absmax block;
//  - no per-chunk tests of the row (rows past N are clamped to N - 1 once; their sums are never stored) or of k;
//  - nested or not, and the nested shift, are compile-time (no branches, no division);
//  - the ring is unrolled DEPTH times: a chunk's registers are refilled with the load DEPTH chunks ahead right after
//    they are used (no register moves), so DEPTH - 1 chunks are in flight while one is decoded.
__host__ __device__ inline bool fast_applies(int K, int log2_blocksize, int nested, int nested_shift) {
    return K % CHUNK_K == 0 && ((K >> log2_blocksize) << log2_blocksize) == K && (!nested || nested_shift >= 0);
}

// One chunk of a thread on the aligned path: 16 packed bytes of rows g and g + 8, their absmax (plain), or their
// 8-bit absmax code and the code's group absmax (nested).
struct FastChunk {
    uint4 w[2];
    float s[2];
    uint32_t q[2];
};

// IL: the bytes in the tile layout (q4_tile_word: [tile][chunk][row half][lane][16 bytes]), so that a warp's 16-byte
// loads of a chunk read 1 KiB contiguously (instead of 16 rows' 64-byte pieces); N % 16 == 0.
// w1: the statistics of rows g + 8 (half 1); the same weight as w except in the joint gate / up decode.
template <bool NESTED, bool IL = false>
__device__ __forceinline__ void load_fast(FastChunk& L, const Weight& w, const Weight& w1, const uint8_t* const (&row)[2],
                                          const uint32_t (&row_block)[2], int kb, int kb0) {
    const uint32_t kblock = (uint32_t)kb >> w.log2_blocksize;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const Weight& wh = h == 0 ? w : w1;
        L.w[h] = ld_stream_u4<0>(row[h] + (IL ? (kb - kb0) << 3 : (kb - kb0) >> 1));
        const uint32_t block = row_block[h] + kblock;
        if (NESTED) {
            L.q[h] = __ldg(reinterpret_cast<const uint8_t*>(wh.absmax) + block);
            L.s[h] = __ldg(wh.nested_absmax + (block >> wh.nested_shift));
        } else {
            L.s[h] = __ldg(reinterpret_cast<const float*>(wh.absmax) + block);
        }
    }
}

// x's B fragments of a chunk (the 32 k at kb of x row pointers xrow[nt]) into xw where load[nt]; the others keep theirs
// (zero on entry to the kernel), so the registers live across the chunk loop.
template <int NT>
__device__ __forceinline__ void load_x_where(uint32_t (&xw)[NT][16], const uint16_t* const (&xrow)[NT], int kb,
                                             const bool (&load)[NT]) {
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        if (load[nt]) {
            const uint4* xp = reinterpret_cast<const uint4*>(xrow[nt] + kb);
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const uint4 v = __ldg(xp + i);
                xw[nt][4 * i] = v.x; xw[nt][4 * i + 1] = v.y; xw[nt][4 * i + 2] = v.z; xw[nt][4 * i + 3] = v.w;
            }
        }
    }
}

// load_x_where for x rows g + 8 nt (rows >= M keep their zero fragments).
template <int NT>
__device__ __forceinline__ void load_x_kept(uint32_t (&xw)[NT][16], const uint16_t* const (&xrow)[NT], int kb, int g, int M) {
    bool load[NT];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) load[nt] = g + 8 * nt < M;
    load_x_where<NT>(xw, xrow, kb, load);
}

// A thread's start on the aligned path (gemv_body_fast, and nf4_gemv_code.cuh's gemv_body_code): its chunks (cpw of
// them: warp, warp + W, ...), the k of its first, the byte pointers and first absmax blocks of its rows g and g + 8
// (rows past N clamped to N - 1), and the ring of loads with its first DEPTH chunks issued.
// JOINT (the gate / up decode of nf4_gemv_code.cuh, tile layout): block bx holds rows 8 bx + g of two weights, w's as
// its rows g and w1's as its rows g + 8 (half bx % 2 of tile bx / 2 in each weight's tiles).
template <int W, int DEPTH, bool NESTED, bool IL, bool JOINT = false>
struct FastStart {
    static_assert(!JOINT || IL, "the joint decode reads the tile layout");
    int cpw, kb0;
    const uint8_t* row[2];
    uint32_t row_block[2];
    FastChunk buf[DEPTH];

    __device__ __forceinline__ FastStart(const Weight& w, const Weight& w1, int N, int K, int bx)
        : FastStart(w, w1, N, K, bx, threadIdx.x >> 5) {}

    // warp: the thread's warp among the W that share the tile (a group's in nf4_gemv_team.cuh's SM-wide blocks)
    __device__ __forceinline__ FastStart(const Weight& w, const Weight& w1, int N, int K, int bx, int warp) {
        const int lane = threadIdx.x & 31;
        const int g = lane >> 2, t = lane & 3;
        const int C = K / CHUNK_K;
        cpw = warp < C ? (C - warp + W - 1) / W : 0;
        kb0 = warp * CHUNK_K + 32 * t;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            if (JOINT) {
                const Weight& wh = h == 0 ? w : w1;
                row[h] = wh.packed + ((int64_t)(bx >> 1) * C * 2 + (bx & 1)) * 512 + lane * 16 + warp * 1024;
                row_block[h] = (uint32_t)(8 * bx + g) * (uint32_t)(K >> w.log2_blocksize);
            } else {
                const int r = min(bx * 16 + g + 8 * h, N - 1);
                row[h] = IL ? w.packed + ((int64_t)bx * C * 2 + h) * 512 + lane * 16 + warp * 1024
                            : w.packed + (((int64_t)r * K + kb0) >> 1);
                row_block[h] = (uint32_t)r * (uint32_t)(K >> w.log2_blocksize);
            }
        }
#pragma unroll
        for (int d = 0; d < DEPTH; d++) {
            if (d < cpw) load(w, w1, d, kb0 + d * W * CHUNK_K);
        }
    }

    __device__ __forceinline__ FastStart(const Weight& w, int N, int K, int bx) : FastStart(w, w, N, K, bx) {}

    // chunk k base kb into ring slot d (w1: as the constructor's)
    __device__ __forceinline__ void load(const Weight& w, const Weight& w1, int d, int kb) {
        load_fast<NESTED, IL>(buf[d], w, w1, row, row_block, kb, kb0);
    }
    // the same chunk of a later tile (IL): its bytes tile_bytes and its absmax blocks tile_blocks past the current one's
    __device__ __forceinline__ void load_tile(const Weight& w, const Weight& w1, int d, int kb, int64_t tile_bytes,
                                              uint32_t tile_blocks) {
        static_assert(IL, "tile offsets are those of the tile layout");
        const uint8_t* const moved[2] = {row[0] + tile_bytes, row[1] + tile_bytes};
        const uint32_t moved_block[2] = {row_block[0] + tile_blocks, row_block[1] + tile_blocks};
        load_fast<NESTED, IL>(buf[d], w, w1, moved, moved_block, kb, kb0);
    }
    // moves the loads on to a later tile (IL): its bytes tile_bytes and its absmax blocks tile_blocks past the current
    // one's, once per tile, so that a chunk's load (load) adds no tile offset: fewer instructions a chunk where the
    // registers allow it (nf4_gemv_code.cuh's G = 1 kernels; the SM-wide ones spill more with it and keep load_tile)
    __device__ __forceinline__ void next_tile(int64_t tile_bytes, uint32_t tile_blocks) {
        static_assert(IL, "tile offsets are those of the tile layout");
#pragma unroll
        for (int h = 0; h < 2; h++) {
            row[h] += tile_bytes;
            row_block[h] += tile_blocks;
        }
    }
    __device__ __forceinline__ void load(const Weight& w, int d, int kb) { load(w, w, d, kb); }
};

template <bool F16C, bool DR, int NT, int W, int DEPTH, int DEC, bool NESTED, bool IL = false>
__device__ __forceinline__ void gemv_body_fast(const Weight& w, const float* __restrict__ nested_code,
                                               const float* __restrict__ code16, const uint16_t* __restrict__ x, int M,
                                               int N, int K, const void* __restrict__ bias, int bias_dtype,
                                               void* __restrict__ y, int y_dtype, int bx) {
    static_assert(DEC == DEC_PAIR || DEC == DEC_BNB || DEC == DEC_NONE, "the aligned path: pair and bnb decodes (none: the bench)");
    Smem<W, 1, NT>& sm = block_smem<W, 1, NT>();
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2;
    constexpr int KSTEP = W * CHUNK_K;
    FastStart<W, DEPTH, NESTED, IL> fs(w, N, K, bx);
    const int cpw = fs.cpw, kb0 = fs.kb0;

    fill_tables<F16C, DEC>(sm.tab, sm.ncode, code16, nested_code, NESTED, W * 32);
    const float2* pair = DEC == DEC_PAIR ? pair_table + (lane & (PAIR_COPIES - 1)) : nullptr;
    const uint32_t lane_off = (uint32_t)lane * 4u;  // DEC_BNB: the lane's byte offset in a wide table row
    pdl_wait();  // as gemv_body: x is read and y written only after the previous kernel has completed
    pdl_launch_dependents();
    __syncthreads();

    float acc[1][NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) acc[0][nt][0] = acc[0][nt][1] = acc[0][nt][2] = acc[0][nt][3] = 0.0f;
    uint32_t xw[NT][16];  // x rows g + 8 nt (zero for rows >= M: loaded per chunk only where g + 8 nt < M)
    const uint16_t* xrow[NT];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
#pragma unroll
        for (int j = 0; j < 16; j++) xw[nt][j] = 0;
        xrow[nt] = x + (int64_t)min(g + 8 * nt, M - 1) * K;
    }

    for (int j0 = 0; j0 < cpw; j0 += DEPTH) {
#pragma unroll
        for (int d = 0; d < DEPTH; d++) {
            const int j = j0 + d;
            if (j < cpw) {  // warp-uniform
                const int kb = kb0 + j * KSTEP;
                load_x_kept<NT>(xw, xrow, kb, g, M);
                const FastChunk& L = fs.buf[d];
                const float a0 = NESTED ? __fadd_rn(__fmul_rn(sm.ncode[L.q[0]], L.s[0]), w.offset) : L.s[0];
                const float a1 = NESTED ? __fadd_rn(__fmul_rn(sm.ncode[L.q[1]], L.s[1]), w.offset) : L.s[1];
                const uint32_t w0[4] = {L.w[0].x, L.w[0].y, L.w[0].z, L.w[0].w};
                const uint32_t w1[4] = {L.w[1].x, L.w[1].y, L.w[1].z, L.w[1].w};
                decode_mma<F16C, DR, NT, DEC>(w0, w1, a0, a1, sm.tab, pair, lane_off, xw, acc[0]);
                if (j + DEPTH < cpw) fs.load(w, d, kb + DEPTH * KSTEP);
            }
        }
    }

    reduce_store<F16C, NT, W, 1>(sm.red, acc, M, N, bias, bias_dtype, y, y_dtype, bx);
}

// gemv_body_fast for the launch's double rounding and nesting, when fast_applies; else gemv_body (rolled, GDEPTH
// chunks in flight). Block-uniform: one test per block.
template <bool F16C, int NT, int W, int DEPTH, int GDEPTH, int DEC>
__device__ __forceinline__ void gemv_body_aligned_or_general(int double_round, const Weight& w,
                                                             const float* __restrict__ nested_code,
                                                             const float* __restrict__ code16,
                                                             const uint16_t* __restrict__ x, int M, int N, int K,
                                                             const void* __restrict__ bias, int bias_dtype,
                                                             void* __restrict__ y, int y_dtype, int bx) {
    if (fast_applies(K, w.log2_blocksize, w.nested, w.nested_shift)) {
        if (double_round) {
            if (w.nested) gemv_body_fast<F16C, true, NT, W, DEPTH, DEC, true>(w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype, bx);
            else gemv_body_fast<F16C, true, NT, W, DEPTH, DEC, false>(w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype, bx);
        } else {
            if (w.nested) gemv_body_fast<F16C, false, NT, W, DEPTH, DEC, true>(w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype, bx);
            else gemv_body_fast<F16C, false, NT, W, DEPTH, DEC, false>(w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype, bx);
        }
    } else {
        if (double_round) {
            gemv_body<F16C, true, NT, W, 1, GDEPTH, DEC, 0, true>(w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype, bx);
        } else {
            gemv_body<F16C, false, NT, W, 1, GDEPTH, DEC, 0, true>(w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype, bx);
        }
    }
}

// gemv_body_fast for a weight whose bytes are in the tile layout (q4_common.cuh's q4_tile_word; the launcher's
// CudaQuant4bit.Layout.TILES): the same values bit for bit as the row layout's aligned path. The tile layout exists
// only where fast_applies holds and N % 16 == 0, so there is no general path: a launch outside that traps.
template <bool F16C, int NT, int W, int DEPTH, int DEC>
__device__ __forceinline__ void gemv_body_tiles(int double_round, const Weight& w, const float* __restrict__ nested_code,
                                                const float* __restrict__ code16, const uint16_t* __restrict__ x, int M,
                                                int N, int K, const void* __restrict__ bias, int bias_dtype,
                                                void* __restrict__ y, int y_dtype, int bx) {
    if (!fast_applies(K, w.log2_blocksize, w.nested, w.nested_shift) || N % 16 != 0) __trap();
    if (double_round) {
        if (w.nested) gemv_body_fast<F16C, true, NT, W, DEPTH, DEC, true, true>(w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype, bx);
        else gemv_body_fast<F16C, true, NT, W, DEPTH, DEC, false, true>(w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype, bx);
    } else {
        if (w.nested) gemv_body_fast<F16C, false, NT, W, DEPTH, DEC, true, true>(w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype, bx);
        else gemv_body_fast<F16C, false, NT, W, DEPTH, DEC, false, true>(w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype, bx);
    }
}

// Register budget: at least QL_V2_WARPS_PER_SM warps per SM (16: 128 registers at most). The microbench builds with
// -DQL_V2_WARPS_PER_SM=32 to measure the 64-register, 4-blocks-per-SM trade (nvcc ignores -maxrregcount under
// __launch_bounds__).
#ifndef QL_V2_WARPS_PER_SM
#define QL_V2_WARPS_PER_SM 16
#endif
template <int W>
struct MinBlocks { static constexpr int value = W >= QL_V2_WARPS_PER_SM ? 1 : QL_V2_WARPS_PER_SM / W; };

// gemv_body with the double rounding chosen by the launch argument (1 when the state dtype is a 16-bit type other than
// the compute dtype): the one place every v2 kernel and entry point turns it into the template argument.
template <bool F16C, int NT, int W, int TILES, int DEPTH, int DEC, int PF, bool ROLLED = false>
__device__ __forceinline__ void gemv_body_rounding(int double_round, const Weight& w, const float* __restrict__ nested_code,
                                                   const float* __restrict__ code16, const uint16_t* __restrict__ x,
                                                   int M, int N, int K, const void* __restrict__ bias, int bias_dtype,
                                                   void* __restrict__ y, int y_dtype, int bx) {
    if (double_round) {
        gemv_body<F16C, true, NT, W, TILES, DEPTH, DEC, PF, ROLLED>(w, nested_code, code16, x, M, N, K, bias, bias_dtype,
                                                                    y, y_dtype, bx);
    } else {
        gemv_body<F16C, false, NT, W, TILES, DEPTH, DEC, PF, ROLLED>(w, nested_code, code16, x, M, N, K, bias, bias_dtype,
                                                                     y, y_dtype, bx);
    }
}

template <bool F16C, int NT, int W, int TILES, int DEPTH, int DEC, int PF, bool ROLLED = false>
__global__ void __launch_bounds__(W * 32, MinBlocks<W>::value)
gemv_kernel(const uint8_t* __restrict__ packed, const void* __restrict__ absmax,
            const float* __restrict__ nested_absmax, const float* __restrict__ nested_code, float offset,
            int log2_blocksize, int nested_bs, int nested_shift, int nested, const float* __restrict__ code16,
            const uint16_t* __restrict__ x, int M, int N, int K, const void* __restrict__ bias, int bias_dtype,
            void* __restrict__ y, int y_dtype, int double_round) {
    Weight w{packed, absmax, nested_absmax, offset, log2_blocksize, nested_bs, nested_shift, nested};
    gemv_body_rounding<F16C, NT, W, TILES, DEPTH, DEC, PF, ROLLED>(double_round, w, nested_code, code16, x, M, N, K, bias,
                                                                   bias_dtype, y, y_dtype, blockIdx.x);
}

// The pair / bnb kernels as the engine builds them: the aligned path when it applies, else rolled gemv_body (the bench
// times this one).
template <bool F16C, int NT, int W, int DEPTH, int GDEPTH, int DEC>
__global__ void __launch_bounds__(W * 32, MinBlocks<W>::value)
gemv_kernel_aligned(const uint8_t* __restrict__ packed, const void* __restrict__ absmax,
                    const float* __restrict__ nested_absmax, const float* __restrict__ nested_code, float offset,
                    int log2_blocksize, int nested_bs, int nested_shift, int nested, const float* __restrict__ code16,
                    const uint16_t* __restrict__ x, int M, int N, int K, const void* __restrict__ bias, int bias_dtype,
                    void* __restrict__ y, int y_dtype, int double_round) {
    Weight w{packed, absmax, nested_absmax, offset, log2_blocksize, nested_bs, nested_shift, nested};
    gemv_body_aligned_or_general<F16C, NT, W, DEPTH, GDEPTH, DEC>(double_round, w, nested_code, code16, x, M, N, K, bias,
                                                                 bias_dtype, y, y_dtype, blockIdx.x);
}

}  // namespace nf4v2
#include "nf4_gemv_team.cuh"
#include "nf4_gemv_handoff.cuh"
#include "nf4_gemv_code.cuh"

// ---- "v3": persistent, software-pipelined streaming decode GEMV (FMA, M <= MAXM; q4v3_gemv_* below).
//
// Why (native/bench/README.md, /work/.device/9 results): v2 issues all of a thread's loads at once, waits, decodes,
// reduces — one memory round trip per block, no overlap of memory and decode, ~2.6 waves each paying the latency.
// v3 is organised like the streaming-read ceiling kernel instead:
//  - grid = (blocks/SM) x SMs, launched once; warp gw of the WT = gridDim.x * W warps owns the contiguous rows
//    [N gw / WT, N (gw + 1) / WT) — every row lives in one warp, so no cross-warp reduction and no scratch;
//  - a row is K / 32 chunks of 16 packed bytes (32 values, one absmax block since blocksize >= 32 and K % 32 == 0);
//    lane l takes chunks l, l + 32, ... of the row; the warp's (row, step) sequence is one flat stream, and each
//    lane keeps a register ring of D 16-byte loads (+ absmax) in flight: the load of step i + D is issued before
//    step i is decoded, across row boundaries, so memory never waits for decode and decode overlaps memory;
//  - decode: the 16-float table in shared memory (one conflict-free LDS per nibble), fl(code * absmax) in f32,
//    cvt.rn.bf16x2 per pair (the numerics contract of nf4_gemv.cu), then f32 FMA with x (a bf16 x bf16 product is
//    exact in f32, so fma == f32 add of the exact product); per-lane f32 sums in k order;
//  - at a row's end: xor-butterfly shuffle reduction (fixed order, deterministic), lane 0 adds the bias and stores;
//  - x is staged once per block in shared memory when M * K * 2 <= XSMEM_MAX bytes (the host passes exactly that as
//    dynamic shared memory), else read from global memory (L1/L2 resident: it is small and shared by all blocks).

namespace nf4v3 {

using nf4v2::Weight;

constexpr int XSMEM_MAX = 32 * 1024;  // bytes of x staged in shared memory (K <= 16384 at M = 1)
constexpr int DEC_TAB = nf4v2::DEC_TAB;
constexpr int DEC_NONE = nf4v2::DEC_NONE;  // timing only (the bench): the bits used as if decoded
static_assert(DEC_TAB != DEC_NONE, "distinct decode modes");

__host__ __device__ inline int x_smem_bytes(int M, int K) {
    const long long b = (long long)M * K * 2;
    return b <= XSMEM_MAX ? (int)b : 0;
}

// One ring slot: a lane's 16 packed bytes (32 values of one row) and their absmax (or nested code + group absmax).
struct Slot {
    uint4 w;
    float s;
    uint32_t q;
};

// gc = row * C + c: the chunk's index in the flattened weight (N * K / 32 < 2^32 for any weight that fits in memory);
// its absmax block is gc >> (log2_blocksize - 5) (blocksize >= 32).
__device__ __forceinline__ Slot load_slot(const Weight& w, uint32_t gc, bool valid) {
    Slot L;
    L.w = make_uint4(0, 0, 0, 0);
    L.s = 0.0f;
    L.q = 0;
    if (valid) {
        L.w = nf4v2::ld_stream_u4<0>(w.packed + (size_t)gc * 16);
        const uint32_t block = gc >> (w.log2_blocksize - 5);
        if (w.nested) {
            L.q = __ldg(reinterpret_cast<const uint8_t*>(w.absmax) + block);
            const uint32_t nb = w.nested_shift >= 0 ? (block >> w.nested_shift) : block / (uint32_t)w.nested_bs;
            L.s = __ldg(w.nested_absmax + nb);
        } else {
            L.s = __ldg(reinterpret_cast<const float*>(w.absmax) + block);
        }
    }
    return L;
}

// Decode one slot (32 values at k0 .. k0 + 31 of one row) and add its products with x rows 0 .. M-1 into acc.
// The f32 value of the low / high half of a bf16x2 or f16x2 word.
template <bool F16C>
__device__ __forceinline__ float2 unpack2(uint32_t v) {
    if (F16C) {
        return __half22float2(*reinterpret_cast<const __half2*>(&v));
    }
    return make_float2(__uint_as_float(v << 16), __uint_as_float(v & 0xFFFF0000u));
}

template <bool F16C, bool DR, int MAXM, int DEC>
__device__ __forceinline__ void fma_slot(const Slot& L, const Weight& w, const float* tab, const float* ncode,
                                         const uint16_t* xp, int K, int M, int k0, float (&acc)[MAXM]) {
    const float a = nf4v2::chunk_absmax(w, ncode, L.s, L.q);
    const uint32_t ws[4] = {L.w.x, L.w.y, L.w.z, L.w.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        uint32_t r[4];  // r[b] = bf16x2 / f16x2 of values k0 + 8i + 2b (low half) and + 1 (high half)
        if (DEC == DEC_TAB) {
            nf4v2::decode_word_tab<F16C, DR>(ws[i], tab, a, r);
        } else {  // timing only: the bits as if decoded
#pragma unroll
            for (int b = 0; b < 4; b++) r[b] = (ws[i] >> b) & 0x3F7F3F7Fu;
        }
#pragma unroll
        for (int m = 0; m < MAXM; m++) {
            if (m < M) {
                const uint4 xv = *reinterpret_cast<const uint4*>(xp + (int64_t)m * K + k0 + 8 * i);
                const uint32_t xw[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
                for (int b = 0; b < 4; b++) {  // 16-bit x 16-bit products are exact in f32: fma = f32 add
                    const float2 wv = unpack2<F16C>(r[b]), xv2 = unpack2<F16C>(xw[b]);
                    acc[m] = fmaf(wv.x, xv2.x, acc[m]);
                    acc[m] = fmaf(wv.y, xv2.y, acc[m]);
                }
            }
        }
    }
}

// Launch: grid = blocks/SM x SMs (any grid works: rows are split over all warps), W * 32 threads,
// dynamic shared memory = x_smem_bytes(M, K). M <= MAXM.
template <bool F16C, bool DR, int W, int D, int MAXM, int DEC>
__device__ __forceinline__ void gemv3_body(const Weight& w, const float* __restrict__ nested_code,
                                           const float* __restrict__ code16, const uint16_t* __restrict__ x, int M,
                                           int N, int K, const void* __restrict__ bias, int bias_dtype,
                                           void* __restrict__ y, int y_dtype) {
    extern __shared__ __align__(16) uint16_t xs[];
    __shared__ float tab[16];
    __shared__ float ncode[256];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t WT = (int64_t)gridDim.x * W, gw = (int64_t)blockIdx.x * W + warp;
    const int rbeg = (int)((int64_t)N * gw / WT), rend = (int)((int64_t)N * (gw + 1) / WT);
    const int C = K >> 5;            // 16-byte chunks per row
    const int J = (C + 31) >> 5;     // warp steps per row
    const int S = (rend - rbeg) * J; // this warp's steps

    // the ring's first D loads go out before anything else. Load cursor: row base lrb = row * C, step lj in row.
    Slot buf[D];
    uint32_t lrb = (uint32_t)rbeg * (uint32_t)C;
    int lj = 0;
#pragma unroll
    for (int d = 0; d < D; d++) {
        buf[d] = load_slot(w, lrb + 32 * lj + lane, d < S && 32 * lj + lane < C);
        if (++lj == J) { lj = 0; lrb += C; }
    }

    pdl_wait();  // the ring's weight loads above overlap the previous kernel (pdl.cuh); x only after it
    pdl_launch_dependents();
    const int xsb = x_smem_bytes(M, K);
    if (xsb) {
        const uint4* src = reinterpret_cast<const uint4*>(x);
        uint4* dst = reinterpret_cast<uint4*>(xs);
        for (int i = threadIdx.x; i < xsb / 16; i += W * 32) dst[i] = __ldg(src + i);
    }
    if (threadIdx.x < 16) tab[threadIdx.x] = __ldg(code16 + threadIdx.x);
    if (w.nested) {
        for (int j = threadIdx.x; j < 256; j += W * 32) ncode[j] = __ldg(nested_code + j);
    }
    __syncthreads();
    const uint16_t* xp = xsb ? static_cast<const uint16_t*>(xs) : x;

    float acc[MAXM];
#pragma unroll
    for (int m = 0; m < MAXM; m++) acc[m] = 0.0f;
    int crow = rbeg;
    int cj = 0;
    for (int s0 = 0; s0 < S; s0 += D) {
#pragma unroll
        for (int d = 0; d < D; d++) {
            if (s0 + d < S) {  // warp-uniform
                const Slot ahead = load_slot(w, lrb + 32 * lj + lane, s0 + d + D < S && 32 * lj + lane < C);
                if (++lj == J) { lj = 0; lrb += C; }
                const int c = 32 * cj + lane;
                if (c < C) fma_slot<F16C, DR, MAXM, DEC>(buf[d], w, tab, ncode, xp, K, M, 32 * c, acc);
                buf[d] = ahead;
                if (++cj == J) {  // row crow complete (warp-uniform)
#pragma unroll
                    for (int m = 0; m < MAXM; m++) {
                        float v = acc[m];
#pragma unroll
                        for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, off);
                        acc[m] = v;
                    }
                    if (lane == 0) {
                        constexpr int cdt = F16C ? DT_F16 : DT_BF16;
                        const float b = bias ? round_to(load_as_f32(bias, crow, bias_dtype), cdt) : 0.0f;
#pragma unroll
                        for (int m = 0; m < MAXM; m++) {
                            if (m < M) {
                                store_from_f32(y, (int64_t)m * N + crow, y_dtype,
                                                      round_to(__fadd_rn(acc[m], b), cdt));
                            }
                        }
                    }
#pragma unroll
                    for (int m = 0; m < MAXM; m++) acc[m] = 0.0f;
                    cj = 0;
                    crow++;
                }
            }
        }
    }
}

// DRB: also compile the double-rounding path (state dtype != compute dtype); the bench passes double_round = 0 and
// instantiates DRB = false (half the code, and registers of the plain path only).
template <int W, int MB, int D, int MAXM, int DEC, bool DRB = false, bool F16C = false>
__global__ void __launch_bounds__(W * 32, MB)
gemv3_kernel(const uint8_t* __restrict__ packed, const void* __restrict__ absmax,
             const float* __restrict__ nested_absmax, const float* __restrict__ nested_code, float offset,
             int log2_blocksize, int nested_bs, int nested_shift, int nested, const float* __restrict__ code16,
             const uint16_t* __restrict__ x, int M, int N, int K, const void* __restrict__ bias, int bias_dtype,
             void* __restrict__ y, int y_dtype, int double_round) {
    Weight w{packed, absmax, nested_absmax, offset, log2_blocksize, nested_bs, nested_shift, nested};
    if (DRB && double_round) {
        gemv3_body<F16C, true, W, D, MAXM, DEC>(w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype);
    } else {
        gemv3_body<F16C, false, W, D, MAXM, DEC>(w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype);
    }
}

}  // namespace nf4v3

// ---------------------------------------------------------------------------------------------
// Entry points for Nf4GemvKernels.java. Arguments: the weight (as nf4.cu's Q4_WEIGHT_PARAMS), code16 F32 [16],
// x [M, K] in the compute dtype, M, N, K, bias (any float dtype, or null) and its dtype code, y [M, N] and its
// dtype code, double_round (1 when the state dtype is a 16-bit type other than the compute dtype).
// Launch: grid ceil(N / (16 * V2_TILES)), block V2_WARPS * 32, no dynamic shared memory.
// Configuration: the bench's "tab w8 t1 d4" (native/bench/README.md); change it here after a bench run.
#define V2_WARPS 8
#define V2_TILES 1
#define V2_DEPTH 4

// The launch arguments of every one-weight v2 entry point (Nf4GemvKernels.gemv), and the Weight they describe.
#define V2_ENTRY_PARAMS                                                                                              \
    const uint8_t* __restrict__ packed, const void* __restrict__ absmax, const float* __restrict__ nested_absmax,    \
        const float* __restrict__ nested_code, float offset, int log2_blocksize, int nested_bs, int nested_shift,    \
        int nested, const float* __restrict__ code16, const uint16_t* __restrict__ x, int M, int N, int K,           \
        const void* __restrict__ bias, int bias_dtype, void* __restrict__ y, int y_dtype, int double_round
#define V2_ENTRY_WEIGHT nf4v2::Weight w{packed, absmax, nested_absmax, offset, log2_blocksize, nested_bs, nested_shift, nested}

#define V2_ENTRY(name, F16C, NT, DEC)                                                                                \
    extern "C" __global__ void __launch_bounds__(V2_WARPS * 32, nf4v2::MinBlocks<V2_WARPS>::value) name(             \
        V2_ENTRY_PARAMS) {                                                                                           \
        V2_ENTRY_WEIGHT;                                                                                             \
        nf4v2::gemv_body_rounding<F16C, NT, V2_WARPS, V2_TILES, V2_DEPTH, DEC, 0>(                                   \
            double_round, w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype, blockIdx.x);             \
    }

V2_ENTRY(q4v2_gemv_bf16_m8, false, 1, nf4v2::DEC_TAB)
V2_ENTRY(q4v2_gemv_bf16_m16, false, 2, nf4v2::DEC_TAB)
V2_ENTRY(q4v2_gemv_f16_m8, true, 1, nf4v2::DEC_TAB)
V2_ENTRY(q4v2_gemv_f16_m16, true, 2, nf4v2::DEC_TAB)
V2_ENTRY(q4v2reg_gemv_bf16_m8, false, 1, nf4v2::DEC_REG)
V2_ENTRY(q4v2reg_gemv_bf16_m16, false, 2, nf4v2::DEC_REG)
V2_ENTRY(q4v2reg_gemv_f16_m8, true, 1, nf4v2::DEC_REG)
V2_ENTRY(q4v2reg_gemv_f16_m16, true, 2, nf4v2::DEC_REG)
// The pair and bnb kernels: the aligned path (nf4v2::gemv_body_fast, V2_FAST_DEPTH chunks per ring) for every weight
// it applies to (nf4v2::fast_applies), else the rolled chunk loop with 2 chunks of loads in flight (session 5's default,
// 5-12% faster in the bench than the unrolled loop with 4).
#define V2_FAST_DEPTH 3
#define V2_ENTRY_ALIGNED(name, F16C, NT, DEC)                                                                        \
    extern "C" __global__ void __launch_bounds__(V2_WARPS * 32, nf4v2::MinBlocks<V2_WARPS>::value) name(             \
        V2_ENTRY_PARAMS) {                                                                                           \
        V2_ENTRY_WEIGHT;                                                                                             \
        nf4v2::gemv_body_aligned_or_general<F16C, NT, V2_WARPS, V2_FAST_DEPTH, 2, DEC>(                              \
            double_round, w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype, blockIdx.x);             \
    }

// the pair-table decode: the default "v2" decode (-Dqlora4j.nf4.gemv=v2table takes the table kernels above). The m16
// forms fit since session 6: one Smem per kernel (block_smem) + the 32 KiB table stay under 48 KiB of static shared
// memory.
V2_ENTRY_ALIGNED(q4v2pair_gemv_bf16_m8, false, 1, nf4v2::DEC_PAIR)
V2_ENTRY_ALIGNED(q4v2pair_gemv_bf16_m16, false, 2, nf4v2::DEC_PAIR)
V2_ENTRY_ALIGNED(q4v2pair_gemv_f16_m8, true, 1, nf4v2::DEC_PAIR)
V2_ENTRY_ALIGNED(q4v2pair_gemv_f16_m16, true, 2, nf4v2::DEC_PAIR)
// -Dqlora4j.nf4.gemv=v2bnb: bitsandbytes' batch-1 weights (64 KiB of dynamic shared memory), rows 1..16
V2_ENTRY_ALIGNED(q4v2bnb_gemv_bf16_m8, false, 1, nf4v2::DEC_BNB)
V2_ENTRY_ALIGNED(q4v2bnb_gemv_bf16_m16, false, 2, nf4v2::DEC_BNB)
V2_ENTRY_ALIGNED(q4v2bnb_gemv_f16_m8, true, 1, nf4v2::DEC_BNB)
V2_ENTRY_ALIGNED(q4v2bnb_gemv_f16_m16, true, 2, nf4v2::DEC_BNB)
// -Dqlora4j.nf4.gemv=v2code (the default): the codes alone in the mma, the absmax applied to each block's sum
// (nf4_gemv_code.cuh; 64 KiB of dynamic shared memory), rows 1..4 (m4), 1..8 (m8) and 1..16 (m16), weights where
// nf4v2::code_applies holds (the launcher gives the others the exact kernels). V2_CODE_DEPTH chunks per ring: 2
// measured 0-9% faster than 3 (bench, session 21).
#define V2_CODE_DEPTH 2
#define V2_ENTRY_CODE(name, F16C, NT)                                                                                \
    extern "C" __global__ void __launch_bounds__(V2_WARPS * 32, nf4v2::MinBlocks<V2_WARPS>::value) name(             \
        V2_ENTRY_PARAMS) {                                                                                           \
        V2_ENTRY_WEIGHT;                                                                                             \
        nf4v2::gemv_code<F16C, NT, V2_WARPS, V2_CODE_DEPTH>(w, nested_code, code16, x, M, N, K, bias, bias_dtype, y,  \
                                                            y_dtype, blockIdx.x);                                    \
    }
V2_ENTRY_CODE(q4v2code_gemv_bf16_m4, false, 1)
V2_ENTRY_CODE(q4v2code_gemv_bf16_m8, false, 2)
V2_ENTRY_CODE(q4v2code_gemv_f16_m4, true, 1)
V2_ENTRY_CODE(q4v2code_gemv_f16_m8, true, 2)
V2_ENTRY_CODE(q4v2code_gemv_bf16_m16, false, 4)
V2_ENTRY_CODE(q4v2code_gemv_f16_m16, true, 4)

// The same entry points for weights in the tile layout (q4_common.cuh, q4_tile_word; CudaQuant4bit.Layout.TILES):
// the code decode (rows 1..8) and the exact pair decode (rows 1..16), each bit for bit its row-layout kernel's values.
// The code kernels' blocks per SM (launch bounds): V2_MINB (two: 128 registers at most); the "_p3" persistent m4 forms
// below are compiled for three (80 registers, no spills; 3 x 69 KiB of shared memory) and launched on three blocks per
// SM for one row of x (Nf4TileGemvKernels.persistentForm): 24 warps a SM instead of 16 hide more of the ring's latency
// (the GEMVs 4-8% faster at one row, 0-7% slower at four; the 7B decode +4%; bench/RESULTS.md, session 25). Sixteen
// warps a block at 64 registers (two blocks, 32 warps a SM, small spills) measured slower than three blocks of eight.
#define V2_MINB nf4v2::MinBlocks<V2_WARPS>::value
#define V2_MINB_P3 3
// G: groups of V2_WARPS warps a block (nf4_gemv_team.cuh; 1 but for the "_s3" SM-wide forms below), each group the
// virtual block blockIdx.x * G + its index.
#define V2_TEAM_BLOCK(G) ((int)blockIdx.x * (G) + nf4v2::Team<(G), V2_WARPS>::group())
#define V2_ENTRY_CODE_TILES(name, F16C, NT, PERSIST, MINB, G, XS)                                                    \
    extern "C" __global__ void __launch_bounds__(V2_WARPS * 32 * (G), MINB) name(                                    \
        V2_ENTRY_PARAMS) {                                                                                           \
        V2_ENTRY_WEIGHT;                                                                                             \
        nf4v2::gemv_code<F16C, NT, V2_WARPS, V2_CODE_DEPTH, true, PERSIST, G, XS>(w, nested_code, code16, x, M, N, K,\
                                                                              bias, bias_dtype, y, y_dtype,          \
                                                                              V2_TEAM_BLOCK(G));                     \
    }
V2_ENTRY_CODE_TILES(q4v2code_gemv_bf16_m4_tiles, false, 1, false, V2_MINB, 1, false)
V2_ENTRY_CODE_TILES(q4v2code_gemv_bf16_m8_tiles, false, 2, false, V2_MINB, 1, false)
V2_ENTRY_CODE_TILES(q4v2code_gemv_f16_m4_tiles, true, 1, false, V2_MINB, 1, false)
V2_ENTRY_CODE_TILES(q4v2code_gemv_f16_m8_tiles, true, 2, false, V2_MINB, 1, false)
V2_ENTRY_CODE_TILES(q4v2code_gemv_bf16_m16_tiles, false, 4, false, V2_MINB, 1, false)
V2_ENTRY_CODE_TILES(q4v2code_gemv_f16_m16_tiles, true, 4, false, V2_MINB, 1, false)
// persistent forms (nf4_gemv_code.cuh, PERSIST): a grid of at most two (_p3: three) blocks per SM walks the tiles with
// one ring of loads (Nf4TileGemvKernels.persistentGrid); bf16 (CUDA activations are F32 or BF16). The _p3 kernels (one
// row of x) stage x in their table's spare halves (XS, the last argument; nf4_gemv_code.cuh stage_x): M * K * 2 <= 32 KiB
// (the launcher sends larger x to _p). The _s3 kernels read x from global memory: staged, their GEMVs were 2% faster
// but the 7B decode 1.5% slower (bench/RESULTS.md, session 27).
V2_ENTRY_CODE_TILES(q4v2code_gemv_bf16_m4_tiles_p, false, 1, true, V2_MINB, 1, false)
V2_ENTRY_CODE_TILES(q4v2code_gemv_bf16_m8_tiles_p, false, 2, true, V2_MINB, 1, false)
V2_ENTRY_CODE_TILES(q4v2code_gemv_bf16_m16_tiles_p, false, 4, true, V2_MINB, 1, false)
V2_ENTRY_CODE_TILES(q4v2code_gemv_bf16_m4_tiles_p3, false, 1, true, V2_MINB_P3, 1, true)
// The SM-wide forms "_s3" (nf4_gemv_team.cuh): one block of V2_SM_GROUPS groups of 8 warps a SM (768 threads, 80
// registers) sharing one wide table on a 64 KiB boundary, so that a byte's table address is one prmt; the groups walk
// the tiles as the "_p3" kernels' blocks do (the same values). Launch: grid <= SMs blocks with grid * V2_SM_GROUPS <=
// the tiles (even for the joint decode), block V2_WARPS * 32 * V2_SM_GROUPS, nf4v2::SM_TEAM_DYNAMIC_BYTES of dynamic
// shared memory.
#define V2_SM_GROUPS 3
V2_ENTRY_CODE_TILES(q4v2code_gemv_bf16_m4_tiles_s3, false, 1, true, 1, V2_SM_GROUPS, false)
// The joint gate / up decode of an MLP (tile layout, rows 1..8 of x): y [M, N] = silu(x gate^T) * (x up^T), the two
// code GEMVs and silu_mul's values bit for bit in one launch (nf4_gemv_code.cuh, gemv_code_swiglu). Arguments: gate's
// and up's weights (as Q4_WEIGHT_PARAMS each), code16 (the type's factors, one type for both), x [M, K], M, N, K, y and
// its dtype code. Launch: grid N / 8 (8 rows of each weight per block), block V2_WARPS * 32, WIDE_TABLE_BYTES of dynamic
// shared memory.
#define V2_ENTRY_SWIGLU(name, F16C, NT, PERSIST, MINB, G, XS)                                                        \
    extern "C" __global__ void __launch_bounds__(V2_WARPS * 32 * (G), MINB) name(                                    \
        const uint8_t* __restrict__ packed, const void* __restrict__ absmax, const float* __restrict__ nested_absmax, \
        const float* __restrict__ nested_code, float offset, int log2_blocksize, int nested_bs, int nested_shift,    \
        int nested, const uint8_t* __restrict__ packed_up, const void* __restrict__ absmax_up,                      \
        const float* __restrict__ nested_absmax_up, const float* __restrict__ nested_code_up, float offset_up,       \
        int log2_blocksize_up, int nested_bs_up, int nested_shift_up, int nested_up, const float* __restrict__ code16, \
        const uint16_t* __restrict__ x, int M, int N, int K, void* __restrict__ y, int y_dtype) {                   \
        (void)nested_code_up;  /* the launcher checks that it holds gate's table */                                  \
        V2_ENTRY_WEIGHT;                                                                                             \
        const nf4v2::Weight up{packed_up, absmax_up, nested_absmax_up, offset_up, log2_blocksize_up, nested_bs_up,   \
                               nested_shift_up, nested_up};                                                          \
        nf4v2::gemv_code_swiglu<F16C, NT, V2_WARPS, V2_CODE_DEPTH, PERSIST, G, XS>(w, up, nested_code, code16, x, M, N,\
                                                                                   K, y, y_dtype, V2_TEAM_BLOCK(G)); \
    }
// bf16 only: the fusion runs where x is the backend's activation dtype, and CUDA activations are F32 or BF16
V2_ENTRY_SWIGLU(q4v2code_swiglu_bf16_m4_tiles, false, 1, false, V2_MINB, 1, false)
V2_ENTRY_SWIGLU(q4v2code_swiglu_bf16_m8_tiles, false, 2, false, V2_MINB, 1, false)
V2_ENTRY_SWIGLU(q4v2code_swiglu_bf16_m4_tiles_p, false, 1, true, V2_MINB, 1, false)
V2_ENTRY_SWIGLU(q4v2code_swiglu_bf16_m8_tiles_p, false, 2, true, V2_MINB, 1, false)
V2_ENTRY_SWIGLU(q4v2code_swiglu_bf16_m16_tiles, false, 4, false, V2_MINB, 1, false)
V2_ENTRY_SWIGLU(q4v2code_swiglu_bf16_m16_tiles_p, false, 4, true, V2_MINB, 1, false)
V2_ENTRY_SWIGLU(q4v2code_swiglu_bf16_m4_tiles_p3, false, 1, true, V2_MINB_P3, 1, true)
V2_ENTRY_SWIGLU(q4v2code_swiglu_bf16_m4_tiles_s3, false, 1, true, 1, V2_SM_GROUPS, false)
#define V2_ENTRY_PAIR_TILES(name, F16C, NT)                                                                          \
    extern "C" __global__ void __launch_bounds__(V2_WARPS * 32, nf4v2::MinBlocks<V2_WARPS>::value) name(             \
        V2_ENTRY_PARAMS) {                                                                                           \
        V2_ENTRY_WEIGHT;                                                                                             \
        nf4v2::gemv_body_tiles<F16C, NT, V2_WARPS, V2_FAST_DEPTH, nf4v2::DEC_PAIR>(                                   \
            double_round, w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype, blockIdx.x);             \
    }
V2_ENTRY_PAIR_TILES(q4v2pair_gemv_bf16_m8_tiles, false, 1)
V2_ENTRY_PAIR_TILES(q4v2pair_gemv_bf16_m16_tiles, false, 2)
V2_ENTRY_PAIR_TILES(q4v2pair_gemv_f16_m8_tiles, true, 1)
V2_ENTRY_PAIR_TILES(q4v2pair_gemv_f16_m16_tiles, true, 2)

// ---------------------------------------------------------------------------------------------
// Grouped v2 entry points (Nf4GemvKernels.gemvGroup): up to 3 weights ("segments") that read the same x [M, K], in one
// launch (a decoder layer's q/k/v, or gate/up, at decode). Arguments: per segment s = 0, 1, 2 (all of segment 0's,
// then 1's, then 2's): its weight (as nf4.cu's Q4_WEIGHT_PARAMS), code16_s, N_s, bias_s (or null) and its dtype code,
// y_s [M, N_s], double_round_s; then x [M, K] in the compute dtype, M, K, and the dtype code of every y_s.
// A segment with N = 0 has no blocks and none of its pointers is read (a group of 2 passes N_2 = 0).
// Launch: grid = sum_s ceil(N_s / (16 * V2_TILES)) blocks (segment 0's, then 1's, then 2's), block V2_WARPS * 32, no
// dynamic shared memory. Block b of segment s runs gemv_body as block b of that weight's own v2 launch does (same
// template, same arguments): the outputs are bit-identical to one launch per weight.
#define V2G_SEG_PARAMS(i)                                                                                            \
    const uint8_t* __restrict__ packed##i, const void* __restrict__ absmax##i,                                       \
    const float* __restrict__ nested_absmax##i, const float* __restrict__ nested_code##i, float offset##i,           \
    int log2_blocksize##i, int nested_bs##i, int nested_shift##i, int nested##i, const float* __restrict__ code16##i, \
    int N##i, const void* __restrict__ bias##i, int bias_dtype##i, void* __restrict__ y##i, int double_round##i

// the value of argument f of the block's segment s (block-uniform selects of kernel parameters)
#define V2G_PICK(f) (s == 0 ? f##0 : s == 1 ? f##1 : f##2)

// The block's segment s and its block bx within it (blocks of rows_per_block output rows), and that segment's
// arguments as the one-weight entries name them (w, nested_code, code16, N, bias, bias_dtype, y, double_round).
#define V2G_SEGMENT(rows_per_block)                                                                                  \
    const int nb0 = (N0 + (rows_per_block) - 1) / (rows_per_block), nb1 = (N1 + (rows_per_block) - 1) / (rows_per_block); \
    const int b = blockIdx.x;                                                                                        \
    const int s = b < nb0 ? 0 : b < nb0 + nb1 ? 1 : 2;                                                              \
    const int bx = b - (s == 0 ? 0 : s == 1 ? nb0 : nb0 + nb1);                                                      \
    nf4v2::Weight w{V2G_PICK(packed), V2G_PICK(absmax), V2G_PICK(nested_absmax), V2G_PICK(offset),                   \
                    V2G_PICK(log2_blocksize), V2G_PICK(nested_bs), V2G_PICK(nested_shift), V2G_PICK(nested)};        \
    const float* nested_code = V2G_PICK(nested_code);                                                                \
    const float* code16 = V2G_PICK(code16);                                                                          \
    const int N = V2G_PICK(N);                                                                                       \
    const void* bias = V2G_PICK(bias);                                                                               \
    const int bias_dtype = V2G_PICK(bias_dtype);                                                                     \
    void* y = V2G_PICK(y);                                                                                           \
    const int double_round = V2G_PICK(double_round)

#define V2G_ENTRY(name, F16C, NT, DEC)                                                                               \
    extern "C" __global__ void __launch_bounds__(V2_WARPS * 32, nf4v2::MinBlocks<V2_WARPS>::value) name(             \
        V2G_SEG_PARAMS(0), V2G_SEG_PARAMS(1), V2G_SEG_PARAMS(2), const uint16_t* __restrict__ x, int M, int K,        \
        int y_dtype) {                                                                                               \
        V2G_SEGMENT(16 * V2_TILES);                                                                                  \
        nf4v2::gemv_body_rounding<F16C, NT, V2_WARPS, V2_TILES, V2_DEPTH, DEC, 0>(                                   \
            double_round, w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype, bx);                     \
    }

V2G_ENTRY(q4v2g_gemv_bf16_m8, false, 1, nf4v2::DEC_TAB)
V2G_ENTRY(q4v2g_gemv_bf16_m16, false, 2, nf4v2::DEC_TAB)
V2G_ENTRY(q4v2g_gemv_f16_m8, true, 1, nf4v2::DEC_TAB)
V2G_ENTRY(q4v2g_gemv_f16_m16, true, 2, nf4v2::DEC_TAB)
V2G_ENTRY(q4v2greg_gemv_bf16_m8, false, 1, nf4v2::DEC_REG)
V2G_ENTRY(q4v2greg_gemv_bf16_m16, false, 2, nf4v2::DEC_REG)
V2G_ENTRY(q4v2greg_gemv_f16_m8, true, 1, nf4v2::DEC_REG)
V2G_ENTRY(q4v2greg_gemv_f16_m16, true, 2, nf4v2::DEC_REG)

// The grouped code decode (nf4_gemv_code.cuh, as V2_ENTRY_CODE per block; 64 KiB of dynamic shared memory): rows 1..4
// (m4) and 1..8 (m8), every weight code_applies. Block b of segment s runs block b of that weight's own q4v2code
// launch: bit-identical outputs.
#define V2G_ENTRY_CODE(name, F16C, NT)                                                                               \
    extern "C" __global__ void __launch_bounds__(V2_WARPS * 32, nf4v2::MinBlocks<V2_WARPS>::value) name(             \
        V2G_SEG_PARAMS(0), V2G_SEG_PARAMS(1), V2G_SEG_PARAMS(2), const uint16_t* __restrict__ x, int M, int K,        \
        int y_dtype) {                                                                                               \
        V2G_SEGMENT(16);  /* the code body's blocks are one 16-row tile */                                           \
        (void)double_round;  /* no weight is rounded */                                                              \
        nf4v2::gemv_code<F16C, NT, V2_WARPS, V2_CODE_DEPTH>(w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, \
                                                            y_dtype, bx);                                            \
    }

// The grouped persistent code decode on tiles (nf4_gemv_code.cuh, gemv_code_group; Nf4GemvKernels.gemvGroupTiles): the
// segments' arguments as V2G_SEG_PARAMS (double_round unused: the code decode rounds no weight), x, M, K, y_dtype.
// Launch: a grid of at most two (_p3: three) blocks per SM (any size is correct), block V2_WARPS * 32,
// WIDE_TABLE_BYTES of dynamic shared memory. bf16 (CUDA activations are F32 or BF16).
#define V2G_SEG_ARGS(i)                                                                                              \
    nf4v2::Weight{packed##i, absmax##i, nested_absmax##i, offset##i, log2_blocksize##i, nested_bs##i,                \
                  nested_shift##i, nested##i}
#define V2G_ENTRY_CODE_TILES(name, F16C, NT, MINB, G, XS)                                                            \
    extern "C" __global__ void __launch_bounds__(V2_WARPS * 32 * (G), MINB) name(                                    \
        V2G_SEG_PARAMS(0), V2G_SEG_PARAMS(1), V2G_SEG_PARAMS(2), const uint16_t* __restrict__ x, int M, int K,        \
        int y_dtype) {                                                                                               \
        (void)code161; (void)code162; (void)nested_code1; (void)nested_code2;  /* weight 0's tables (checked equal) */ \
        (void)double_round0; (void)double_round1; (void)double_round2;                                               \
        const nf4v2::CodeSegments cs{{V2G_SEG_ARGS(0), V2G_SEG_ARGS(1), V2G_SEG_ARGS(2)}, {bias0, bias1, bias2},     \
                                     {bias_dtype0, bias_dtype1, bias_dtype2}, {y0, y1, y2},                         \
                                     {N0 / 16, N1 / 16, N2 / 16}};                                                   \
        nf4v2::gemv_code_group<F16C, NT, V2_WARPS, V2_CODE_DEPTH, G, XS>(cs, nested_code0, code160, x, M, K, y_dtype);\
    }
V2G_ENTRY_CODE_TILES(q4v2gcode_gemv_bf16_m4_tiles_p, false, 1, V2_MINB, 1, false)
V2G_ENTRY_CODE_TILES(q4v2gcode_gemv_bf16_m8_tiles_p, false, 2, V2_MINB, 1, false)
V2G_ENTRY_CODE_TILES(q4v2gcode_gemv_bf16_m16_tiles_p, false, 4, V2_MINB, 1, false)
V2G_ENTRY_CODE_TILES(q4v2gcode_gemv_bf16_m4_tiles_p3, false, 1, V2_MINB_P3, 1, true)
V2G_ENTRY_CODE_TILES(q4v2gcode_gemv_bf16_m4_tiles_s3, false, 1, 1, V2_SM_GROUPS, false)

V2G_ENTRY_CODE(q4v2gcode_gemv_bf16_m4, false, 1)
V2G_ENTRY_CODE(q4v2gcode_gemv_bf16_m8, false, 2)
V2G_ENTRY_CODE(q4v2gcode_gemv_f16_m4, true, 1)
V2G_ENTRY_CODE(q4v2gcode_gemv_f16_m8, true, 2)
V2G_ENTRY_CODE(q4v2gcode_gemv_bf16_m16, false, 4)
V2G_ENTRY_CODE(q4v2gcode_gemv_f16_m16, true, 4)

// ---------------------------------------------------------------------------------------------
// v3 entry points (Nf4GemvKernels.java, -Dqlora4j.nf4.gemv=v3): same arguments as the v2 ones; M <= 1 (m1) or
// M <= 4 (m4). Launch: grid V3_BLOCKS x SMs (any grid is correct), block V3_WARPS * 32, dynamic shared memory
// nf4v3::x_smem_bytes(M, K) = M * K * 2 when that is <= 32 KiB, else 0 (x then read from global memory).
// Configuration: the bench's "v3 w8 b3 d4" (native/bench/README.md); change it here after a bench run.
#define V3_WARPS 8
#define V3_BLOCKS 3
#define V3_DEPTH 4

#define V3_ENTRY(name, F16C, MAXM)                                                                                   \
    extern "C" __global__ void __launch_bounds__(V3_WARPS * 32, V3_BLOCKS) name(V2_ENTRY_PARAMS) {                    \
        V2_ENTRY_WEIGHT;                                                                                             \
        if (double_round) {                                                                                          \
            nf4v3::gemv3_body<F16C, true, V3_WARPS, V3_DEPTH, MAXM, nf4v3::DEC_TAB>(w, nested_code, code16, x, M, N, \
                                                                                  K, bias, bias_dtype, y, y_dtype);  \
        } else {                                                                                                     \
            nf4v3::gemv3_body<F16C, false, V3_WARPS, V3_DEPTH, MAXM, nf4v3::DEC_TAB>(w, nested_code, code16, x, M, N,\
                                                                                   K, bias, bias_dtype, y, y_dtype); \
        }                                                                                                            \
    }

V3_ENTRY(q4v3_gemv_bf16_m1, false, 1)
V3_ENTRY(q4v3_gemv_bf16_m4, false, 4)
V3_ENTRY(q4v3_gemv_f16_m1, true, 1)
V3_ENTRY(q4v3_gemv_f16_m4, true, 4)
