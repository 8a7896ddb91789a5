// nf4_gemv7.cu — entry points of the "v7" decode GEMV (native/nf4_gemv7.cuh: v5's whole-row sweep with bitsandbytes'
// batch-1 arithmetic), M = 1 only. Launched by Nf4Gemv7Kernels.java (-Dqlora4j.nf4.gemv=v7, opt-in).
//
// Numerics: bitsandbytes' kgemm_4bit_inference_naive, NOT the exact contract of nf4_gemv.cu: weight = round_T(
// round_T(code) * round_T(absmax)), every product x * w rounded to T, products summed in f32, bias (T) added once in
// f32, one rounding of y to T. The state dtype plays no part (bnb's batch-1 kernel ignores it too).
//
// Arguments: the weight as nf4.cu's Q4_WEIGHT_PARAMS, code16 F32 [16] (the NF4 / FP4 factors), x [K] in T, N, K,
// bias [N] in T or null, y [N] in T. Preconditions (checked by the launcher): K % 32 == 0, blocksize a power of two
// >= 32, x / packed 16-byte aligned; the _p1 kernels take K <= 32768 (one 32-value piece per thread), the _p2 kernels
// K <= 65536 (two pieces per thread, x re-read through L1).
// Launch: block nf4v5::threads_for(K, P) threads (K / 32 / P rounded up to a warp), grid any size (rows grid-stride in
// address order; the launcher uses min(N, min(V7_BLOCKS, fit) x SMs), as the bench), dynamic shared memory
// nf4v7::table_bytes(TAB_BCAST) = 1024 bytes (the one pair table).
// Configuration (bench "v7 bnb bcast b8 d2", native/NOTES-nf4-gemv.md): one 1 KiB pair table, D = 2 rows in flight.
#include "nf4_gemv7.cuh"

#define V7_DEPTH 2

#define V7_ENTRY(name, F16, P)                                                                                       \
    extern "C" __global__ void __launch_bounds__(nf4v5::max_threads(V7_DEPTH, P)) name(                              \
        const uint8_t* __restrict__ packed, const void* __restrict__ absmax,                                         \
        const float* __restrict__ nested_absmax, const float* __restrict__ nested_code, float offset,                \
        int log2_blocksize, int nested_bs, int nested_shift, int nested, const float* __restrict__ code16,           \
        const uint16_t* __restrict__ x, int N, int K, const uint16_t* __restrict__ bias, uint16_t* __restrict__ y) {  \
        nf4v5::Args g;                                                                                               \
        g.packed = packed; g.absmax = absmax; g.nested_absmax = nested_absmax; g.nested_code = nested_code;          \
        g.offset = offset; g.log2_bs = log2_blocksize; g.nested_bs = nested_bs; g.nested_shift = nested_shift;       \
        g.nested = nested; g.code16 = code16; g.x = x; g.N = N; g.K = K; g.bias = bias; g.y = y;                     \
        nf4v7::gemv7_body<F16, nf4v7::TAB_BCAST, V7_DEPTH, P>(g);                                                   \
    }

V7_ENTRY(q4v7_gemv_bf16_p1, false, 1)
V7_ENTRY(q4v7_gemv_bf16_p2, false, 2)
V7_ENTRY(q4v7_gemv_f16_p1, true, 1)
V7_ENTRY(q4v7_gemv_f16_p2, true, 2)
