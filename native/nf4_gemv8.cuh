// nf4_gemv8.cuh — "v8" (bench only: native/bench/nf4_gemv_bench.cu): the aligned pair-decode GEMV
// (nf4v2::gemv_body_fast, DEC_PAIR) with its weight bytes brought into shared memory by the copy engine
// (cp.async.bulk + mbarriers, sm_90) instead of each thread's register ring of global loads. Include after
// nf4_gemv.cu. Measured and not taken into the engine (native/NOTES-nf4-gemv.md, session 12).
//
// Why it was tried: Nsight Compute on the v2a pair kernel (4096 x 11008, M = 1) puts "long scoreboard" (waits on
// global loads: the ring, x, absmax) first among its stalls, 2.2 of the 8.2 cycles between two instructions of a warp,
// and its no-decode twin runs at 12.8 us where a streaming read of the same bytes takes 6.9: the register ring holds
// 48 KiB per SM in flight, and every block of the 2.6 waves starts with an empty ring. Here one producer warp per block
// keeps STAGES stages (16 rows x 1 KiB of packed bytes + their absmax codes) in flight across tile boundaries (a
// persistent grid walks the 16-row tiles), and 8 consumer warps read them from shared memory.
//
// What it gave (H200, M = 1): 4096 x 11008 16.4 us vs 18.8 (v2a), 8192 x 28672 57.3 vs 70.5; no gain with one tile per
// block (4096 x 4096 7.7 vs 7.4, 11008 x 4096 15.2 vs 15.0). In the Llama-7B decode it was slower than v2 (286-296 vs
// 302-312 tokens/s, also when used for gate/up only): its ~100 KiB of shared memory per block keeps its blocks from
// starting beside the previous kernel's under programmatic dependent launch, which costs more than the stages save.
// Prefetching x one chunk ahead (to hide its L1 latency) made it slower still (8.1 / 17.1 us).
//
// Results are bit-identical to gemv_body_fast with DEC_PAIR: each consumer warp w takes chunks w, w + 8, w + 16, ...
// of every tile in increasing order (stage s holds chunks 16 s .. 16 s + 15), decodes and multiplies them with the
// same decode_mma, and the warps' fragments are added in warp order (the same reduce as reduce_store).
//
// Applies (fast8_applies) when K % 256 == 0 (so every row's absmax codes of a stage start on a 4-byte boundary and
// every stage holds an even number of chunks), blocksize 64, and for nested weights a power-of-two nested blocksize.
#include "mbarrier.cuh"

namespace nf4v8 {

using nf4v2::CHUNK_K;
using nf4v2::Weight;

constexpr int W = 8;                             // consumer warps
constexpr int THREADS = (W + 1) * 32;            // + one producer warp
constexpr int GROUP = 16;                        // chunks per stage (two per consumer warp)
constexpr int ROW_BYTES = GROUP * CHUNK_K / 2;   // packed bytes of one row in a stage: 1 KiB
// Row pitch in shared memory: rows g and g + 1 (one quarter warp's 16-byte loads) 64 bytes apart in the banks,
// so that the 8 lanes of a quarter warp read 128 distinct bytes.
constexpr int PITCH = ROW_BYTES + 64;
// absmax bytes per row and stage: 32 codes (nested) or 32 floats, padded so that rows g = 0..7 of one code
// position fall in 8 different banks (144 / 4 = 36 words apart)
constexpr int ABS_ROW = 144;
constexpr int STAGE_BYTES = 16 * PITCH + 16 * ABS_ROW;
constexpr int STAGES = 3;
// Dynamic shared memory of a launch. With the 32 KiB pair table and the static block state: ~99 KiB per block, two
// blocks per SM.
constexpr int DYN_SMEM = STAGES * STAGE_BYTES;
constexpr int BLOCKS_PER_SM = 2;

__host__ __device__ inline bool fast8_applies(int K, int log2_blocksize, int nested, int nested_shift) {
    return K % 256 == 0 && log2_blocksize == 6 && (!nested || nested_shift >= 0);
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* b) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                     smem_addr(dst)),
                 "l"(src), "r"(bytes), "r"(smem_addr(b))
                 : "memory");
}

__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(smem_addr(dst)), "l"(src) : "memory");
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(dst)), "l"(src) : "memory");
}

// Static block state: the decode tables, the mbarriers (full: a stage landed; empty: the consumers are done with it),
// and two reduction buffers (tile parity: a warp may write the next tile's fragments while others read this one's).
template <int NT>
struct Smem8 {
    float4 red[2][W * NT * 32];
    float tab[16];
    float ncode[256];
    uint64_t full[STAGES];
    uint64_t empty[STAGES];
};

// One Smem8 per kernel (not per inlined body: a kernel inlines four, for the double rounding and the nesting).
template <int NT>
__device__ __forceinline__ Smem8<NT>& block_smem8() {
    __shared__ __align__(16) Smem8<NT> sm;
    return sm;
}

extern __shared__ __align__(128) uint8_t v8_stages[];

// The producer's fill of stage slot `slot` with stage s of tile bx: 16 rows of `chunks` chunks (bulk copies, one row
// per lane 0..15) and their absmax (cp.async: nested 4-byte words of codes, plain 16-byte pieces of floats). Rows
// past N repeat row N - 1 (their sums are never stored).
template <bool NESTED>
__device__ __forceinline__ void fill_stage(const Weight& w, int N, int K, int bx, int s, int slot, uint64_t* full,
                                           int lane) {
    const int C = K / CHUNK_K;
    const int chunks = min(GROUP, C - s * GROUP);
    uint8_t* st = v8_stages + slot * STAGE_BYTES;
    uint8_t* ab = st + 16 * PITCH;
    const int blocks_per_row = K >> 6;
    // absmax: 2 blocks per chunk, so 2 * chunks codes (chunks / 2 words) or floats (chunks / 2 16-byte pieces) per row
    const int pieces = chunks / 2;
    for (int i = lane; i < 16 * pieces; i += 32) {
        const int rl = i / pieces, j = i - rl * pieces;
        const int r = min(bx * 16 + rl, N - 1);
        const int64_t blk = (int64_t)r * blocks_per_row + s * 2 * GROUP + 4 * j;
        if (NESTED) cp_async4(ab + rl * ABS_ROW + 4 * j, reinterpret_cast<const uint8_t*>(w.absmax) + blk);
        else cp_async16(ab + rl * ABS_ROW + 16 * j, reinterpret_cast<const float*>(w.absmax) + blk);
    }
    mbar::cp_async_arrive(smem_addr(full + slot));
    __syncwarp();
    if (lane == 0) mbar::arrive_expect_tx(smem_addr(full + slot), 16u * chunks * (CHUNK_K / 2));
    __syncwarp();
    if (lane < 16) {
        const int r = min(bx * 16 + lane, N - 1);
        bulk_copy(st + lane * PITCH, w.packed + (int64_t)r * (K / 2) + (int64_t)s * ROW_BYTES, chunks * (CHUNK_K / 2),
                  full + slot);
    }
}

template <bool F16C, bool DR, int NT, bool NESTED>
__device__ __forceinline__ void gemv8_body(const Weight& w, const float* __restrict__ nested_code,
                                           const float* __restrict__ code16, const uint16_t* __restrict__ x, int M,
                                           int N, int K, const void* __restrict__ bias, int bias_dtype,
                                           void* __restrict__ y, int y_dtype) {
    Smem8<NT>& sm = block_smem8<NT>();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int C = K / CHUNK_K;
    const int S = (C + GROUP - 1) / GROUP;   // stages per tile
    const int tiles = (N + 15) / 16;
    if (threadIdx.x == 0) {
        for (int i = 0; i < STAGES; i++) {
            mbar::init(smem_addr(sm.full + i), 1);   // the producer's arrive.expect_tx (its lanes' cp.async arrivals add their own)
            mbar::init(smem_addr(sm.empty + i), W);  // one arrival per consumer warp
        }
        mbar::fence_init();
    }
    __syncthreads();
    // The producer's first STAGES fills go out before the tables are filled (they overlap the first DRAM latency and,
    // with programmatic dependent launch, the previous kernel's tail: weights are not written by earlier kernels).
    int pbx = blockIdx.x, ps = 0, pit = 0;   // the producer's cursor: tile, stage, fill count
    if (warp == W) {
        for (; pit < STAGES && pbx < tiles; pit++) {
            fill_stage<NESTED>(w, N, K, pbx, ps, pit, sm.full, lane);
            if (++ps == S) { ps = 0; pbx += gridDim.x; }
        }
    }
    nf4v2::fill_tables<F16C, nf4v2::DEC_PAIR>(sm.tab, sm.ncode, code16, nested_code, NESTED, THREADS);
    pdl_wait();
    pdl_launch_dependents();
    __syncthreads();

    if (warp == W) {   // producer: the remaining fills, each after the consumers released its slot
        for (; pbx < tiles; pit++) {
            const int slot = pit % STAGES;
            mbar::wait(smem_addr(sm.empty + slot), (uint32_t)((pit / STAGES - 1) & 1));
            fill_stage<NESTED>(w, N, K, pbx, ps, slot, sm.full, lane);
            if (++ps == S) { ps = 0; pbx += gridDim.x; }
        }
        return;
    }

    const int g = lane >> 2, t = lane & 3;
    const float2* pair = nf4v2::pair_table + (lane & (nf4v2::PAIR_COPIES - 1));
    const uint16_t* xrow[NT];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) xrow[nt] = x + (int64_t)min(g + 8 * nt, M - 1) * K;
    uint32_t xw[NT][16];   // x rows g + 8 nt (rows >= M stay zero)
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int j = 0; j < 16; j++) xw[nt][j] = 0;
    const int blocks_per_row = K >> 6;
    int it = 0, parity_red = 0;
    for (int bx = blockIdx.x; bx < tiles; bx += gridDim.x, parity_red ^= 1) {
        float acc[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
        const int r0 = min(bx * 16 + g, N - 1), r1 = min(bx * 16 + g + 8, N - 1);
        for (int s = 0; s < S; s++, it++) {
            const int slot = it % STAGES;
            mbar::wait(smem_addr(sm.full + slot), (uint32_t)((it / STAGES) & 1));
            const uint8_t* st = v8_stages + slot * STAGE_BYTES;
            const uint8_t* ab = st + 16 * PITCH;
            const int chunks = min(GROUP, C - s * GROUP);
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int c = warp + W * h;
                if (c < chunks) {   // warp-uniform
                    nf4v2::load_x_kept<NT>(xw, xrow, s * GROUP * CHUNK_K + c * CHUNK_K + 32 * t, g, M);
                    const uint4 p0 = *reinterpret_cast<const uint4*>(st + g * PITCH + c * 64 + 16 * t);
                    const uint4 p1 = *reinterpret_cast<const uint4*>(st + (g + 8) * PITCH + c * 64 + 16 * t);
                    const int bl = 2 * c + (t >> 1);   // the thread's absmax block within the stage row
                    float a0, a1;
                    if (NESTED) {
                        const int64_t blk = (int64_t)s * 2 * GROUP + bl;
                        const float s0 = __ldg(w.nested_absmax + (((int64_t)r0 * blocks_per_row + blk) >> w.nested_shift));
                        const float s1 = __ldg(w.nested_absmax + (((int64_t)r1 * blocks_per_row + blk) >> w.nested_shift));
                        a0 = __fadd_rn(__fmul_rn(sm.ncode[ab[g * ABS_ROW + bl]], s0), w.offset);
                        a1 = __fadd_rn(__fmul_rn(sm.ncode[ab[(g + 8) * ABS_ROW + bl]], s1), w.offset);
                    } else {
                        a0 = reinterpret_cast<const float*>(ab + g * ABS_ROW)[bl];
                        a1 = reinterpret_cast<const float*>(ab + (g + 8) * ABS_ROW)[bl];
                    }
                    const uint32_t w0[4] = {p0.x, p0.y, p0.z, p0.w};
                    const uint32_t w1[4] = {p1.x, p1.y, p1.z, p1.w};
                    nf4v2::decode_mma<F16C, DR, NT, nf4v2::DEC_PAIR>(w0, w1, a0, a1, sm.tab, pair, 0u, xw, acc);
                }
            }
            __syncwarp();
            if (lane == 0) mbar::arrive(smem_addr(sm.empty + slot));
        }
        // the warps' fragments added in warp order (as nf4v2::reduce_store), bias, store
        float4* red = sm.red[parity_red];
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
            red[(warp * NT + nt) * 32 + lane] = make_float4(acc[nt][0], acc[nt][1], acc[nt][2], acc[nt][3]);
        asm volatile("bar.sync 1, %0;" ::"n"(W * 32) : "memory");   // the consumer warps only
        const int cdt = F16C ? DT_F16 : DT_BF16;
        const float* redf = reinterpret_cast<const float*>(red);
        for (int e = threadIdx.x; e < NT * 128; e += W * 32) {
            const int q = e & 3, ln = (e >> 2) & 31, nt = e >> 7;
            const int64_t o = (int64_t)bx * 16 + (ln >> 2) + 8 * (q >> 1);
            const int m = 8 * nt + 2 * (ln & 3) + (q & 1);
            if (o >= N || m >= M) continue;
            float sum = 0.0f;
            for (int ww = 0; ww < W; ww++) sum += redf[ww * (NT * 128) + e];
            const float b = bias ? round_to(load_as_f32(bias, o, bias_dtype), cdt) : 0.0f;
            store_from_f32(y, (int64_t)m * N + o, y_dtype, round_to(__fadd_rn(sum, b), cdt));
        }
    }
}

// gemv8_body for the launch's double rounding and nesting. Launch: grid min(tiles, BLOCKS_PER_SM x SMs), THREADS
// threads, DYN_SMEM bytes of dynamic shared memory (raised above 48 KiB by the launcher), only where fast8_applies,
// on sm_90 (a trap elsewhere).
template <bool F16C, int NT>
__device__ __forceinline__ void gemv8(int double_round, const Weight& w, const float* __restrict__ nested_code,
                                      const float* __restrict__ code16, const uint16_t* __restrict__ x, int M, int N,
                                      int K, const void* __restrict__ bias, int bias_dtype, void* __restrict__ y,
                                      int y_dtype) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900)
    if (double_round) {
        if (w.nested) gemv8_body<F16C, true, NT, true>(w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype);
        else gemv8_body<F16C, true, NT, false>(w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype);
    } else {
        if (w.nested) gemv8_body<F16C, false, NT, true>(w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype);
        else gemv8_body<F16C, false, NT, false>(w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype);
    }
#else
    __trap();   // cp.async.bulk and mbarrier transaction counts need sm_90
#endif
}

}  // namespace nf4v8
