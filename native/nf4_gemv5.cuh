// nf4_gemv5.cuh — the "v5 rows" decode GEMV experiment (M = 1): y [1, N] = x [1, K] W^T (+ bias), W bitsandbytes NF4
// packed row-major (2 values per byte, high nibble = first k), absmax per `blocksize` values (F32, or double-quantized),
// x / bias / y in T = bf16 or f16, K % 32 == 0, blocksize >= 32. Bench-only for now (native/bench/nf4_gemv_bench.cu).
//
// Why (native/NOTES-nf4-gemv.md, "v5"): on the H200 every earlier skeleton, even with no decode at all, ran 2-3.5x
// slower than a plain streaming read of the same bytes. Those kernels read many separate row pieces scattered over the
// matrix at once; the streaming read sweeps one compact address window with the whole grid in lockstep. v5 copies that
// access pattern as literally as possible:
//   - a block of T threads (T = 32 * ceil(C / (32 P)), C = K / 32 pieces of 16 bytes per row, P pieces per thread)
//     processes ONE output row per iteration; thread t owns the fixed pieces t, t + T, ... of the row (32 values
//     each), so a block reads its row as one contiguous K / 2-byte stretch;
//   - rows are taken grid-stride IN ADDRESS ORDER: iteration i, block b takes row i * gridDim.x + b, so the grid reads
//     one contiguous window of rows at any time;
//   - software prefetch: each thread keeps the next D rows' 16-byte loads (+ the absmax word) in a register ring,
//     issued D rows ahead (ld.global.nc.L1::no_allocate); x (the thread's 32 P values) lives in registers (P == 1) or
//     is re-read through L1 (P > 1, K > 32768);
//   - the row reduction: xor-shuffle warp sums, warp partials to a double-buffered shared slot (one __syncthreads per
//     row), thread 0 adds them in warp order + bias, rounds once and stores y[row]. Deterministic.
//
// Numerics (DEC):
//   DEC_EXACT: the contract of nf4_gemv.cu: weight = round_T(fl(code_f32[q] * absmax_f32));
//   DEC_BNB:   bitsandbytes' inference numerics (nf4_gemv4.cuh): weight = round_T(round_T(code[q]) * round_T(absmax)).
//              The product of two T values is exact in f32 (8 + 8 or 11 + 11 significant bits <= 24), so
//              round_T(fl(codeT * absmaxT)) is that single rounding: the same pipeline as DEC_EXACT with the table
//              and the absmax pre-rounded to T.
//   DEC_LOADS: timing only: the same loads, prefetch, x registers and reduction of a trivial function of the bytes.
// Then y = round_T(sum_k w * x (+ bias)): products exact in f32 (16-bit x 16-bit), f32 sums (two chains per thread,
// shuffle tree, warp order), bias added once in f32.
//
// Decode per 4-byte word (8 values): hiw = (w >> 2) & 0x3C3C3C3C, low = (w << 2) & 0x3C3C3C3C hold 4 x the nibbles as
// byte offsets; one prmt per value extracts its offset; the 16 float codes live in shared memory (16 distinct words in
// banks 0..15: any lane pattern is conflict-free, equal words broadcast).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>

#include "pdl.cuh"

namespace nf4v5 {

constexpr int DEC_EXACT = 0;
constexpr int DEC_BNB = 1;
constexpr int DEC_LOADS = 2;
constexpr int MAX_THREADS = 1024;
// Launch bound of the P = 1 kernels: D = 4 keeps 5 x 5 ring words + 16 x words + the decode's LDS results live, which
// spills at 64 registers (the 1024-thread cap), so those kernels are bounded at 512 threads (K <= 16384 with one piece
// per thread; larger K takes the P = 2, D = 2 kernel).
__host__ __device__ constexpr int max_threads(int D, int P) { return D >= 4 && P == 1 ? 512 : MAX_THREADS; }

__device__ __forceinline__ uint4 ld_stream(const void* p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
    uint32_t r;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
    return r;
}

template <bool F16>
__device__ __forceinline__ float round_t(float v) {
    if (F16) return __half2float(__float2half_rn(v));
    return __bfloat162float(__float2bfloat16_rn(v));
}
// (lo, hi) -> one T pair word (lo in bits 0..15), each rounded to nearest even
template <bool F16>
__device__ __forceinline__ uint32_t pack_t2(float lo, float hi) {
    if (F16) {
        __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&h);
    }
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
}
template <bool F16>
__device__ __forceinline__ float t_lo(uint32_t p) {
    if (F16) return __half2float(__ushort_as_half((unsigned short)(p & 0xFFFFu)));
    return __uint_as_float(p << 16);
}
template <bool F16>
__device__ __forceinline__ float t_hi(uint32_t p) {
    if (F16) return __half2float(__ushort_as_half((unsigned short)(p >> 16)));
    return __uint_as_float(p & 0xFFFF0000u);
}
template <bool F16>
__device__ __forceinline__ float t_to_f(uint16_t v) {
    if (F16) return __half2float(__ushort_as_half(v));
    return __uint_as_float((uint32_t)v << 16);
}
template <bool F16>
__device__ __forceinline__ uint16_t f_to_t(float v) {
    if (F16) return __half_as_ushort(__float2half_rn(v));
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

struct Args {
    const uint8_t* packed;       // [N * K / 2]
    const void* absmax;          // F32 [N * K / bs] or U8 codes (nested)
    const float* nested_absmax;  // [ceil(blocks / nested_bs)]
    const float* nested_code;    // [256]
    float offset;
    int log2_bs;                 // >= 5
    int nested_bs, nested_shift; // nested_shift >= 0: block >> shift, else block / nested_bs
    int nested;
    const float* code16;         // [16] the NF4 (or FP4) code
    const uint16_t* x;           // [K] T
    int N, K;
    const uint16_t* bias;        // [N] T or null
    uint16_t* y;                 // [N] T
};

// Threads per block for K (P pieces per thread): 32 * ceil(ceil(C / P) / 32).
__host__ __device__ inline int threads_for(int K, int P) {
    const int C = K / 32;
    const int per = (C + P - 1) / P;
    return (per + 31) / 32 * 32;
}
// Pieces per thread needed for K by the D kernel family (1 while C <= its P = 1 bound, then 2 up to K = 65536 with the
// P = 2 kernel; 0 = unsupported).
__host__ __device__ inline int pieces_for(int K, int D) {
    const int C = K / 32;
    return C <= max_threads(D, 1) ? 1 : C <= 2 * MAX_THREADS ? 2 : 0;
}

// Issue the loads of row `row`, piece j (valid: j < C) into (w, a): the 16 packed bytes and the absmax word (F32 bits,
// or the 8-bit code when nested: the group's nested absmax, one float per nested_bs blocks, is read when the piece is
// used, an L1 hit shared by the whole row).
__device__ __forceinline__ void load_piece(const Args& g, int row, int j, uint4& w, uint32_t& a) {
    const int64_t e = (int64_t)row * g.K + 32 * (int64_t)j;  // first value of the piece
    w = ld_stream(g.packed + (e >> 1));
    const int64_t block = e >> g.log2_bs;
    if (g.nested) a = __ldg(reinterpret_cast<const uint8_t*>(g.absmax) + block);
    else a = __float_as_uint(__ldg(reinterpret_cast<const float*>(g.absmax) + block));
}
// The F32 absmax of the piece whose absmax word is a (row, piece j).
__device__ __forceinline__ float piece_absmax(const Args& g, const float* ncode, uint32_t a, int row, int j) {
    if (!g.nested) return __uint_as_float(a);
    const int64_t block = ((int64_t)row * g.K + 32 * (int64_t)j) >> g.log2_bs;
    const int64_t nb = g.nested_shift >= 0 ? (block >> g.nested_shift) : block / g.nested_bs;
    return __fadd_rn(__fmul_rn(ncode[a], __ldg(g.nested_absmax + nb)), g.offset);
}

// The thread's 32 x values as 16 T pairs (element 2i in the low half of word i) when each thread owns one piece
// (P == 1, thread t < C); zeros otherwise (P == 2 reads x per piece from global memory).
template <int P>
__device__ __forceinline__ void load_x_pairs(const Args& g, int t, int C, uint32_t* xr) {
#pragma unroll
    for (int i = 0; i < 16; i++) xr[i] = 0;
    if (P == 1 && t < C) {
        const uint4* xp = reinterpret_cast<const uint4*>(g.x + 32 * t);
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const uint4 v = __ldg(xp + q);
            xr[4 * q] = v.x; xr[4 * q + 1] = v.y; xr[4 * q + 2] = v.z; xr[4 * q + 3] = v.w;
        }
    }
}

// The x pairs of piece j: the thread's registers when it owns one piece (P == 1), else read from global memory.
template <int P>
__device__ __forceinline__ void piece_x_pairs(const Args& g, int j, const uint32_t* xr, uint32_t* xw) {
    if (P == 1) {
#pragma unroll
        for (int i = 0; i < 16; i++) xw[i] = xr[i];
    } else {
        const uint4* xp = reinterpret_cast<const uint4*>(g.x + 32 * (int64_t)j);
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const uint4 v = __ldg(xp + q);
            xw[4 * q] = v.x; xw[4 * q + 1] = v.y; xw[4 * q + 2] = v.z; xw[4 * q + 3] = v.w;
        }
    }
}

// The ring's first D rows of loads: row s * G + b, the thread's pieces t + p * T (zeros past N or C).
template <int D, int P>
__device__ __forceinline__ void prologue_loads(const Args& g, int t, int T, int C, int G, int b, uint4 (&rw)[D][P],
                                               uint32_t (&ra)[D][P]) {
#pragma unroll
    for (int s = 0; s < D; s++) {
        const int row = s * G + b;
#pragma unroll
        for (int p = 0; p < P; p++) {
            const int j = t + p * T;
            rw[s][p] = make_uint4(0, 0, 0, 0);
            ra[s][p] = 0;
            if (row < g.N && j < C) load_piece(g, row, j, rw[s][p], ra[s][p]);
        }
    }
}

// Finishes row `row` from every warp's reduced partial v (lane 0's): the warps' values go to slot, one barrier,
// thread 0 adds them in warp order, adds the bias once in f32, rounds once and stores y[row]. The slot is rewritten
// two rows later, after the next barrier, which thread 0 passes only once it has read this row's partials.
template <bool F16>
__device__ __forceinline__ void store_row(const Args& g, float v, float* slot, int lane, int warp, int nw, int t,
                                          int row) {
    if (lane == 0) slot[warp] = v;
    __syncthreads();
    if (t == 0) {
        float sum = 0.0f;
        for (int w2 = 0; w2 < nw; w2++) sum += slot[w2];
        if (g.bias) sum = __fadd_rn(sum, t_to_f<F16>(g.bias[row]));
        g.y[row] = f_to_t<F16>(sum);
    }
}

template <bool F16, int DEC, int D, int P>
__global__ void __launch_bounds__(max_threads(D, P)) gemv5_kernel(const Args g) {
    static_assert(D % 2 == 0, "the shared partial slot parity (i0 + s) & 1 = s & 1 needs an even D");
    __shared__ float s_code[16];
    __shared__ float s_ncode[256];
    __shared__ float s_part[2][MAX_THREADS / 32];

    const int T = blockDim.x;
    const int t = threadIdx.x;
    const int lane = t & 31, warp = t >> 5, nw = T >> 5;
    const int C = g.K >> 5;
    const int G = gridDim.x, b = blockIdx.x;
    const int N = g.N;

    // prologue loads first (they need no table), then the tables and x while they fly
    uint4 rw[D][P];
    uint32_t ra[D][P];
    prologue_loads<D, P>(g, t, T, C, G, b, rw, ra);
    if (DEC != DEC_LOADS) {
        if (t < 16) s_code[t] = DEC == DEC_BNB ? round_t<F16>(__ldg(g.code16 + t)) : __ldg(g.code16 + t);
        if (g.nested)
            for (int i = t; i < 256; i += T) s_ncode[i] = __ldg(g.nested_code + i);
    }
    // x: the thread's 32 values (16 T pairs, element 2i in the low half of word i) per piece; registers when P == 1
    uint32_t xr[16];
    load_x_pairs<P>(g, t, C, xr);
    __syncthreads();

    bool go = true;
    for (int i0 = 0; go; i0 += D) {
#pragma unroll
        for (int s = 0; s < D; s++) {
            const int row = (i0 + s) * G + b;  // uniform over the block: every thread takes the same path
            if (row >= N) { go = false; break; }
            float acc0 = 0.0f, acc1 = 0.0f;
            uint32_t fold = 0;
#pragma unroll
            for (int p = 0; p < P; p++) {
                const int j = t + p * T;
                const uint4 w = rw[s][p];
                const uint32_t araw = ra[s][p];
                // refill the slot with the row D iterations ahead (same piece)
                const int nrow = row + D * G;
                if (nrow < N && j < C) load_piece(g, nrow, j, rw[s][p], ra[s][p]);
                if (DEC == DEC_LOADS) {
                    fold ^= w.x ^ w.y ^ w.z ^ w.w ^ araw;
                    continue;
                }
                if (j >= C) continue;
                float amax = piece_absmax(g, s_ncode, araw, row, j);
                if (DEC == DEC_BNB) amax = round_t<F16>(amax);
                uint32_t xw[16];
                piece_x_pairs<P>(g, j, xr, xw);
#pragma unroll
                for (int wi = 0; wi < 4; wi++) {
                    const uint32_t word = wi == 0 ? w.x : wi == 1 ? w.y : wi == 2 ? w.z : w.w;
                    const uint32_t hiw = (word >> 2) & 0x3C3C3C3Cu;  // byte bb: 4 * high nibble (value 2 bb)
                    const uint32_t low = (word << 2) & 0x3C3C3C3Cu;  // byte bb: 4 * low nibble (value 2 bb + 1)
#pragma unroll
                    for (int bb = 0; bb < 4; bb++) {
                        const uint32_t oh = prmt(hiw, 0u, 0x4440u + bb), ol = prmt(low, 0u, 0x4440u + bb);
                        const float ch = *reinterpret_cast<const float*>(reinterpret_cast<const char*>(s_code) + oh);
                        const float cl = *reinterpret_cast<const float*>(reinterpret_cast<const char*>(s_code) + ol);
                        const uint32_t wp = pack_t2<F16>(__fmul_rn(ch, amax), __fmul_rn(cl, amax));
                        const uint32_t xp2 = xw[4 * wi + bb];  // values 8 wi + 2 bb (low half), + 1 (high half)
                        acc0 = fmaf(t_lo<F16>(wp), t_lo<F16>(xp2), acc0);
                        acc1 = fmaf(t_hi<F16>(wp), t_hi<F16>(xp2), acc1);
                    }
                }
            }
            float v;
            if (DEC == DEC_LOADS) {
                // keep every loaded bit live; x too (so the x registers are not optimised away)
                uint32_t xf = 0;
#pragma unroll
                for (int i = 0; i < 16; i++) xf ^= xr[i];
                v = (float)((fold ^ xf) & 0xFFu);
            } else {
                v = acc0 + acc1;
            }
#pragma unroll
            for (int off = 16; off >= 1; off >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, off);
            // slot parity (i0 + s) & 1 = s & 1 (D even)
            store_row<F16>(g, v, s_part[s & 1], lane, warp, nw, t, row);
        }
    }
}

}  // namespace nf4v5
