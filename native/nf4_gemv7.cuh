// nf4_gemv7.cuh — the "v7" decode GEMV experiment (M = 1): v5's memory organisation (nf4_gemv5.cuh: a block reads ONE
// whole row per iteration, rows grid-stride in address order, register ring of the next D rows, x in registers, the
// same reduction) with bitsandbytes' OWN batch-1 arithmetic (kgemm_4bit_inference_naive). Bench-only
// (native/bench/nf4_gemv_bench.cu). K % 32 == 0, blocksize >= 32, T = bf16 or f16.
//
// Why (native/NOTES-nf4-gemv.md, "v5" and "v6"): v5's loads-only twin runs at 82-95% of a streaming read, but its
// exact decode costs ~6.75 issue slots per value and bounds it at ~2.2x the loads time. bnb's batch-1 kernel rounds
// every product to T, which lets the multiplies run packed (two values per instruction).
//
// Numerics (bnb kgemm_4bit_inference_naive, T = bf16 / f16):
//   w = round_T(round_T(code[q]) * round_T(absmax))   (one T x T multiply: HMUL2 of a pair-table entry by the absmax pair)
//   p = round_T(x * w)                                 (HMUL2 of the x pair by the weight pair)
//   y = round_T(sum_k f32(p) (+ bias))                 (products widened to f32, f32 sums; bias added once in f32)
// Both HMUL2s are correctly rounded (the exact product of two T values, rounded once), so every product is bit-identical
// to the float64 reference's; only the order of the f32 sums differs (two chains per thread, shuffle tree, warp order).
//
// Per packed byte (2 values): 1 PRMT (table address), 1 LDS.32 (the (code_T[hi], code_T[lo]) pair), 1 HMUL2 (x absmax
// pair), 1 HMUL2 (x the x pair), 2 widenings (bf16: SHL + LOP; f16: 2 HADD2.F32), 2 FADD = 8 issue slots = 4 per value
// (v5 exact: ~6.75). Per 32-value piece: + absmax (1 cvt to the T pair) and the refill load, amortised over 32 values.
//
// Pair table (TAB):
//   TAB_REP:   replicated per bank, as v4: entry v for lane l at byte offset v * 256 + l * 4 (64 KiB, the upper half of
//              every 256-byte row unused), so the address is ONE prmt of the packed word with lane * 4 and the warp's 32
//              lookups hit 32 distinct banks for any bytes. Costs occupancy at small K (3 blocks of 65 KiB per SM).
//   TAB_BCAST: one copy (1 KiB), address = byte * 4: random bytes give ~3-4-way bank conflicts (equal bytes broadcast);
//              measured beside TAB_REP to see whether shared-memory wavefronts or occupancy matter more.
#pragma once
#include "nf4_gemv5.cuh"

namespace nf4v7 {

constexpr int TAB_REP = 0;
constexpr int TAB_BCAST = 1;
// dynamic shared memory of the pair table (bytes)
__host__ __device__ constexpr int table_bytes(int TAB) { return TAB == TAB_REP ? 256 * 256 : 256 * 4; }

template <bool F16>
__device__ __forceinline__ uint32_t hmul2_rn(uint32_t a, uint32_t b) {
    if (F16) {
        __half2 r = __hmul2_rn(*reinterpret_cast<const __half2*>(&a), *reinterpret_cast<const __half2*>(&b));
        return *reinterpret_cast<uint32_t*>(&r);
    }
    __nv_bfloat162 r = __hmul2_rn(*reinterpret_cast<const __nv_bfloat162*>(&a), *reinterpret_cast<const __nv_bfloat162*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
}

// The kernel body: shared by the bench's gemv7_kernel below and the engine's extern "C" entry points (nf4_gemv7.cu),
// which must be launched with __launch_bounds__(nf4v5::max_threads(D, P)) and table_bytes(TAB) of dynamic shared memory.
template <bool F16, int TAB, int D, int P>
__device__ __forceinline__ void gemv7_body(const nf4v5::Args& g) {
    static_assert(D % 2 == 0, "the shared partial slot parity (i0 + s) & 1 = s & 1 needs an even D");
    extern __shared__ __align__(16) uint32_t s_tab[];  // table_bytes(TAB)
    __shared__ float s_ncode[256];
    __shared__ float s_part[2][nf4v5::MAX_THREADS / 32];

    const int T = blockDim.x;
    const int t = threadIdx.x;
    const int lane = t & 31, warp = t >> 5, nw = T >> 5;
    const int C = g.K >> 5;
    const int G = gridDim.x, b = blockIdx.x;
    const int N = g.N;
    const uint32_t lane4 = (uint32_t)lane * 4u;

    // prologue loads first (they need no table), then the tables and x while they fly
    uint4 rw[D][P];
    uint32_t ra[D][P];
    nf4v5::prologue_loads<D, P>(g, t, T, C, G, b, rw, ra);
    // pair table: entry v = (round_T(code[v >> 4]) in the low half (the first value of the byte: element 2i of the x
    // pair sits in the low half too), round_T(code[v & 15]) in the high half)
    if (TAB == TAB_REP) {
        for (int i = t; i < 256 * 32; i += T) {
            const int v = i >> 5, r = i & 31;
            s_tab[v * 64 + r] = nf4v5::pack_t2<F16>(__ldg(g.code16 + (v >> 4)), __ldg(g.code16 + (v & 15)));
        }
    } else {
        for (int v = t; v < 256; v += T) s_tab[v] = nf4v5::pack_t2<F16>(__ldg(g.code16 + (v >> 4)), __ldg(g.code16 + (v & 15)));
    }
    if (g.nested)
        for (int i = t; i < 256; i += T) s_ncode[i] = __ldg(g.nested_code + i);
    // x: the thread's 32 values (16 T pairs, element 2i in the low half of word i) per piece; registers when P == 1
    uint32_t xr[16];
    pdl_wait();  // the prologue's weight loads and tables overlap the previous kernel (pdl.cuh); x only after it
    pdl_launch_dependents();
    nf4v5::load_x_pairs<P>(g, t, C, xr);
    __syncthreads();

    bool go = true;
    for (int i0 = 0; go; i0 += D) {
#pragma unroll
        for (int s = 0; s < D; s++) {
            const int row = (i0 + s) * G + b;  // uniform over the block: every thread takes the same path
            if (row >= N) { go = false; break; }
            float acc0 = 0.0f, acc1 = 0.0f;
#pragma unroll
            for (int p = 0; p < P; p++) {
                const int j = t + p * T;
                const uint4 w = rw[s][p];
                const uint32_t araw = ra[s][p];
                // refill the slot with the row D iterations ahead (same piece)
                const int nrow = row + D * G;
                if (nrow < N && j < C) nf4v5::load_piece(g, nrow, j, rw[s][p], ra[s][p]);
                if (j >= C) continue;
                const float amax = nf4v5::piece_absmax(g, s_ncode, araw, row, j);
                const uint32_t am2 = nf4v5::pack_t2<F16>(amax, amax);  // round_T(absmax), both halves
                uint32_t xw[16];
                nf4v5::piece_x_pairs<P>(g, j, xr, xw);
#pragma unroll
                for (int wi = 0; wi < 4; wi++) {
                    const uint32_t word = wi == 0 ? w.x : wi == 1 ? w.y : wi == 2 ? w.z : w.w;
#pragma unroll
                    for (int bb = 0; bb < 4; bb++) {
                        uint32_t pair;
                        if (TAB == TAB_REP) {
                            // byte bb -> bits 8..15, lane * 4 -> bits 0..7, zeros above: v * 256 + lane * 4
                            const uint32_t off = nf4v5::prmt(word, lane4, 0x5504u | (bb << 4));
                            pair = *reinterpret_cast<const uint32_t*>(reinterpret_cast<const char*>(s_tab) + off);
                        } else {
                            pair = s_tab[nf4v5::prmt(word, 0u, 0x4440u + bb)];
                        }
                        const uint32_t w2 = hmul2_rn<F16>(pair, am2);                 // bnb: T * T weight
                        const uint32_t p2 = hmul2_rn<F16>(xw[4 * wi + bb], w2);       // bnb: T product
                        acc0 += nf4v5::t_lo<F16>(p2);                                 // bnb: local_C += (float)(a * b)
                        acc1 += nf4v5::t_hi<F16>(p2);
                    }
                }
            }
            float v = acc0 + acc1;
#pragma unroll
            for (int off = 16; off >= 1; off >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, off);
            // slot parity (i0 + s) & 1 = s & 1 (D even)
            nf4v5::store_row<F16>(g, v, s_part[s & 1], lane, warp, nw, t, row);
        }
    }
}

template <bool F16, int TAB, int D, int P>
__global__ void __launch_bounds__(nf4v5::max_threads(D, P)) gemv7_kernel(const nf4v5::Args g) {
    gemv7_body<F16, TAB, D, P>(g);
}

}  // namespace nf4v7
