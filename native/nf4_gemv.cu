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
#include "common.cuh"

namespace nf4v2 {

enum : int { DTC_F32 = 0, DTC_BF16 = 1, DTC_F16 = 2 };
constexpr int CHUNK_K = 128;
constexpr int DEC_TAB = 0;   // 16-float table in shared memory, one LDS per nibble
constexpr int DEC_REG = 1;   // per-slice bf16/f16 tables in registers, prmt lookups (ALU only)
constexpr int DEC_NONE = 2;  // timing only: the packed bits used as if decoded (wrong results; the bench's ceiling)

__device__ __forceinline__ float load_as_f32(const void* p, int64_t i, int dtype) {
    if (dtype == DTC_BF16) return bf16_to_f32(reinterpret_cast<const __nv_bfloat16*>(p)[i]);
    if (dtype == DTC_F16) return f16_to_f32(reinterpret_cast<const __half*>(p)[i]);
    return reinterpret_cast<const float*>(p)[i];
}

__device__ __forceinline__ void store_from_f32(void* p, int64_t i, int dtype, float v) {
    if (dtype == DTC_BF16) reinterpret_cast<__nv_bfloat16*>(p)[i] = f32_to_bf16(v);
    else if (dtype == DTC_F16) reinterpret_cast<__half*>(p)[i] = f32_to_f16(v);
    else reinterpret_cast<float*>(p)[i] = v;
}

__device__ __forceinline__ float round_to(float v, int dtype) {
    if (dtype == DTC_BF16) return bf16_to_f32(f32_to_bf16(v));
    if (dtype == DTC_F16) return f16_to_f32(f32_to_f16(v));
    return v;
}

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

// Two values rounded to the compute dtype (through the state dtype when DR) as one bf16x2 / f16x2 register:
// lo in the low half. The cvt rounds to nearest even, as round_to does.
template <bool F16C, bool DR>
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi) {
    uint32_t r;
    if (!F16C) {
        if (DR) {  // state f16, compute bf16: bf16(f16(v))
            float2 f = __half22float2(__floats2half2_rn(lo, hi));
            lo = f.x; hi = f.y;
        }
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    } else {
        if (DR) {  // state bf16, compute f16: f16(bf16(v))
            float2 f = __bfloat1622float2(__floats2bfloat162_rn(lo, hi));
            lo = f.x; hi = f.y;
        }
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    }
    return r;
}

template <bool F16C>
__device__ __forceinline__ void mma16816(float* c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
    if (F16C) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    } else {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
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

template <bool F16C, bool DR, int NT, int TILES, int DEC>
__device__ __forceinline__ void compute_chunk(const ChunkLoad<TILES>& L, const Weight& w, const float* tab,
                                              const float* ncode, const uint16_t* __restrict__ x, int M, int K,
                                              int kb, int g, float (&acc)[TILES][NT][4]) {
    static_assert(DEC == DEC_TAB || DEC == DEC_REG || DEC == DEC_NONE, "decode: DEC_TAB, DEC_REG or DEC_NONE");
    // B fragments: x[g + 8 nt][kb .. kb + 32) as 16 bf16x2 / f16x2 words (zero for rows >= M and past K)
    uint32_t xw[NT][16];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        const int xr = g + 8 * nt;
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
        uint32_t P0[8], P1[8];
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
                    mma16816<F16C>(acc[ti][nt], r0[b], r1[b], r0[b + 1], r1[b + 1], xw[nt][2 * st], xw[nt][2 * st + 1]);
                }
            }
        }
    }
}

// Shared memory of a block (static): 16 factors, 256 nested codes, and W x TILES x NT x 32 float4 fragments.
template <int W, int TILES, int NT>
struct Smem {
    float4 red[W * TILES * NT * 32];
    float tab[16];
    float ncode[256];
};

// The kernel body. Launch: grid = ceil(N / (16 * TILES)) blocks of W * 32 threads, no dynamic shared memory.
template <bool F16C, bool DR, int NT, int W, int TILES, int DEPTH, int DEC, int PF>
__device__ __forceinline__ void gemv_body(const Weight& w, const float* __restrict__ nested_code,
                                          const float* __restrict__ code16, const uint16_t* __restrict__ x, int M,
                                          int N, int K, const void* __restrict__ bias, int bias_dtype,
                                          void* __restrict__ y, int y_dtype) {
    __shared__ __align__(16) Smem<W, TILES, NT> sm;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const int C = (K + CHUNK_K - 1) / CHUNK_K;
    const int cpw = warp < C ? (C - warp + W - 1) / W : 0;  // this warp's chunks: warp, warp + W, ...
    const int64_t row0 = (int64_t)blockIdx.x * (16 * TILES) + g;
    const int kb0 = warp * CHUNK_K + 32 * t;                 // k of this thread's first chunk
    const int kstep = W * CHUNK_K;

    // the first DEPTH chunks' loads go out before anything else
    ChunkLoad<TILES> buf[DEPTH];
#pragma unroll
    for (int d = 0; d < DEPTH; d++) buf[d] = load_chunk<TILES, PF>(w, row0, N, K, kb0 + d * kstep, d < cpw);

    if (threadIdx.x < 16) sm.tab[threadIdx.x] = __ldg(code16 + threadIdx.x);
    if (w.nested) {
        for (int j = threadIdx.x; j < 256; j += W * 32) sm.ncode[j] = __ldg(nested_code + j);
    }
    __syncthreads();

    float acc[TILES][NT][4];
#pragma unroll
    for (int ti = 0; ti < TILES; ti++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++) acc[ti][nt][0] = acc[ti][nt][1] = acc[ti][nt][2] = acc[ti][nt][3] = 0.0f;

    for (int j0 = 0; j0 < cpw; j0 += DEPTH) {
#pragma unroll
        for (int d = 0; d < DEPTH; d++) {
            const int j = j0 + d;
            if (j < cpw) {  // warp-uniform
                const int kb = kb0 + j * kstep;
                ChunkLoad<TILES> ahead = load_chunk<TILES, PF>(w, row0, N, K, kb + DEPTH * kstep, j + DEPTH < cpw);
                compute_chunk<F16C, DR, NT, TILES, DEC>(buf[d], w, sm.tab, sm.ncode, x, M, K, kb, g, acc);
                buf[d] = ahead;
            }
        }
    }

    // the warps' fragments, added in warp order
#pragma unroll
    for (int ti = 0; ti < TILES; ti++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
            sm.red[((warp * TILES + ti) * NT + nt) * 32 + lane] = make_float4(acc[ti][nt][0], acc[ti][nt][1], acc[ti][nt][2], acc[ti][nt][3]);
    __syncthreads();
    const int cdt = F16C ? DTC_F16 : DTC_BF16;
    const float* red = reinterpret_cast<const float*>(sm.red);
    for (int e = threadIdx.x; e < TILES * NT * 128; e += W * 32) {
        // e = ((ti * NT + nt) * 32 + ln) * 4 + q: fragment entry q of lane ln = (row g' + 8 (q >> 1), x row 2 t' + (q & 1))
        const int q = e & 3, ln = (e >> 2) & 31, tn = e >> 7;
        const int ti = tn / NT, nt = tn - ti * NT;
        const int64_t o = ((int64_t)blockIdx.x * TILES + ti) * 16 + (ln >> 2) + 8 * (q >> 1);
        const int m = 8 * nt + 2 * (ln & 3) + (q & 1);
        if (o >= N || m >= M) continue;
        float sum = 0.0f;
        for (int ww = 0; ww < W; ww++) sum += red[ww * (TILES * NT * 128) + e];
        const float b = bias ? round_to(load_as_f32(bias, o, bias_dtype), cdt) : 0.0f;
        store_from_f32(y, (int64_t)m * N + o, y_dtype, round_to(__fadd_rn(sum, b), cdt));
    }
}

// Register budget: at least 512 threads per SM (128 registers at most).
template <int W>
struct MinBlocks { static constexpr int value = W >= 16 ? 1 : 16 / W; };

template <bool F16C, int NT, int W, int TILES, int DEPTH, int DEC, int PF>
__global__ void __launch_bounds__(W * 32, MinBlocks<W>::value)
gemv_kernel(const uint8_t* __restrict__ packed, const void* __restrict__ absmax,
            const float* __restrict__ nested_absmax, const float* __restrict__ nested_code, float offset,
            int log2_blocksize, int nested_bs, int nested_shift, int nested, const float* __restrict__ code16,
            const uint16_t* __restrict__ x, int M, int N, int K, const void* __restrict__ bias, int bias_dtype,
            void* __restrict__ y, int y_dtype, int double_round) {
    Weight w{packed, absmax, nested_absmax, offset, log2_blocksize, nested_bs, nested_shift, nested};
    if (double_round) {
        gemv_body<F16C, true, NT, W, TILES, DEPTH, DEC, PF>(w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype);
    } else {
        gemv_body<F16C, false, NT, W, TILES, DEPTH, DEC, PF>(w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype);
    }
}

}  // namespace nf4v2

// ---------------------------------------------------------------------------------------------
// Entry points for Nf4GemvKernels.java. Arguments: the weight (as nf4.cu's Q4_WEIGHT_PARAMS), code16 F32 [16],
// x [M, K] in the compute dtype, M, N, K, bias (any float dtype, or null) and its dtype code, y [M, N] and its
// dtype code, double_round (1 when the state dtype is a 16-bit type other than the compute dtype).
// Launch: grid ceil(N / (16 * V2_TILES)), block V2_WARPS * 32, no dynamic shared memory.
// Configuration: the bench's "tab w8 t1 d4" (native/bench/README.md); change it here after a bench run.
#define V2_WARPS 8
#define V2_TILES 1
#define V2_DEPTH 4

#define V2_ENTRY(name, F16C, NT, DEC)                                                                                \
    extern "C" __global__ void __launch_bounds__(V2_WARPS * 32, nf4v2::MinBlocks<V2_WARPS>::value) name(             \
        const uint8_t* __restrict__ packed, const void* __restrict__ absmax,                                         \
        const float* __restrict__ nested_absmax, const float* __restrict__ nested_code, float offset,                \
        int log2_blocksize, int nested_bs, int nested_shift, int nested, const float* __restrict__ code16,           \
        const uint16_t* __restrict__ x, int M, int N, int K, const void* __restrict__ bias, int bias_dtype,          \
        void* __restrict__ y, int y_dtype, int double_round) {                                                       \
        nf4v2::Weight w{packed, absmax, nested_absmax, offset, log2_blocksize, nested_bs, nested_shift, nested};     \
        if (double_round) {                                                                                          \
            nf4v2::gemv_body<F16C, true, NT, V2_WARPS, V2_TILES, V2_DEPTH, DEC, 0>(w, nested_code, code16, x, M, N, K,  \
                                                                                bias, bias_dtype, y, y_dtype);       \
        } else {                                                                                                     \
            nf4v2::gemv_body<F16C, false, NT, V2_WARPS, V2_TILES, V2_DEPTH, DEC, 0>(w, nested_code, code16, x, M, N, K, \
                                                                                 bias, bias_dtype, y, y_dtype);      \
        }                                                                                                            \
    }

V2_ENTRY(q4v2_gemv_bf16_m8, false, 1, nf4v2::DEC_TAB)
V2_ENTRY(q4v2_gemv_bf16_m16, false, 2, nf4v2::DEC_TAB)
V2_ENTRY(q4v2_gemv_f16_m8, true, 1, nf4v2::DEC_TAB)
V2_ENTRY(q4v2_gemv_f16_m16, true, 2, nf4v2::DEC_TAB)
V2_ENTRY(q4v2reg_gemv_bf16_m8, false, 1, nf4v2::DEC_REG)
V2_ENTRY(q4v2reg_gemv_bf16_m16, false, 2, nf4v2::DEC_REG)
V2_ENTRY(q4v2reg_gemv_f16_m8, true, 1, nf4v2::DEC_REG)
V2_ENTRY(q4v2reg_gemv_f16_m16, true, 2, nf4v2::DEC_REG)
