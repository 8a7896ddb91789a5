// nf4_gemv_code.cuh — the "code" decode of the v2 GEMV (nf4_gemv.cu, DEC_CODE; -Dqlora4j.nf4.gemv=v2code): the
// tensor cores multiply x by the 4-bit codes alone, and each absmax block's float32 sum is scaled once by its absmax.
//
// Numerics (T = the compute dtype, bf16 or f16):
//   S_b[m, o] = sum_{k in block b} x[m, k] * round_T(code[q[o, k]])     float32 mma sums (exact 16-bit products)
//   y[m, o]   = round(y, round(compute, sum_b fl(absmax_b * S_b) + round(compute, bias[o])))
// i.e. the weight absmax_b * code[q] is never rounded to 16 bits: only the code is (round_T(code) is within half an
// ulp of T of code, the same relative error as the exact contract's round_T(fl(code * absmax))). Not the exact
// contract of the other decodes (different bits, same accuracy); the default decode for 1..8 rows, "v2" keeps the
// exact one. Why: the exact contract costs a lookup, two FMUL and a cvt per packed byte; here a byte is one prmt and
// one LDS.32 of a ready T pair (DEC_BNB's wide table without its HMUL2), and the absmax costs 4 FFMA per chunk
// (7-11% faster decode of a Llama-7B on an H200; NOTES-nf4-gemv.md, session 21).
//
// How the per-block sums come out of one mma: a chunk of 128 k holds two absmax blocks (blocksize >= 64): thread
// (g, t) holds k 32t .. 32t + 31 of rows g and g + 8, in block t >> 1. The mma's k slots of thread column t are that
// thread's k, so giving the B operand (x) two columns per x row, column 2m + h = x row m where t >> 1 == h and zero
// elsewhere, makes the accumulator's column 2m + h the block-h sum of x row m: thread (g, t) ends a chunk holding
// rows g and g + 8 of x row m = t (+ 4 nt) for both blocks, and scales them by the two blocks' absmax (its own
// block's, and lane t ^ 2's by a shuffle). 4 x rows per n-tile of 8 columns: NT = 1 for M <= 4, NT = 2 for M <= 8,
// NT = 4 for M <= 16 (x's fragments then loaded per n-tile inside each chunk: code_chunk_x_in_turn).
// The lanes that load x (rows g >> 1 < M, half g & 1 == t >> 1) are as many as the exact kernels' (g < M).
#pragma once

namespace nf4v2 {

// One packed word's 4 bytes as 4 T pairs (round_T(code[hi]), round_T(code[lo])): one prmt and one LDS.32 a byte.
__device__ __forceinline__ void decode_word_code(uint32_t w, uint32_t lane_off, uint32_t* r) {
#pragma unroll
    for (int b = 0; b < 4; b++) r[b] = *reinterpret_cast<const uint32_t*>(wide_table + wide_offset(w, lane_off, b));
}

// Whether the code decode applies: the aligned path's conditions and whole 64-value blocks (a thread's 32 k lie in
// one block, and a chunk's two halves in at most two).
__host__ __device__ inline bool code_applies(int K, int log2_blocksize, int nested, int nested_shift) {
    return fast_applies(K, log2_blocksize, nested, nested_shift) && log2_blocksize >= 6;
}

// Output e (< NT * 64) of a tile from its W warps' fragments in red (put_fragment's buffer read as floats), added in
// warp order (deterministic), the bias added, y stored for rows < N and x rows < M.
template <bool F16C, int NT, int W>
__device__ __forceinline__ void sum_store_code(const float* red, int e, int M, int N, const void* __restrict__ bias,
                                               int bias_dtype, void* __restrict__ y, int y_dtype, int bx) {
    // e = (nt * 32 + ln) * 2 + q: output row g' + 8 q of the tile, x row 4 nt + t' (ln = 4 g' + t')
    const int q = e & 1, ln = (e >> 1) & 31, nt = e >> 6;
    const int64_t o = (int64_t)bx * 16 + (ln >> 2) + 8 * q;
    const int m = 4 * nt + (ln & 3);
    if (o >= N || m >= M) return;
    const int cdt = F16C ? DT_F16 : DT_BF16;
    float sum = 0.0f;
    for (int ww = 0; ww < W; ww++) sum += red[ww * (NT * 64) + e];
    const float b = bias ? round_to(load_as_f32(bias, o, bias_dtype), cdt) : 0.0f;
    store_from_f32(y, (int64_t)m * N + o, y_dtype, round_to(__fadd_rn(sum, b), cdt));
}

// The end of a block: every warp's fragment into the buffer, a barrier, then sum_store_code over the team's threads.
// G: the team that shares the tile (nf4_gemv_team.cuh; 1: the block).
template <bool F16C, int NT, int W, int G = 1>
__device__ __forceinline__ void reduce_store_code(float4* red4, const float (&run)[NT][2], int M, int N,
                                                  const void* __restrict__ bias, int bias_dtype, void* __restrict__ y,
                                                  int y_dtype, int bx) {
    using TM = Team<G, W>;
    put_fragment<NT>(reinterpret_cast<float2*>(red4), run, TM::warp(), threadIdx.x & 31);  // half of Smem::red
    TM::sync();
    for (int e = TM::tid(); e < NT * 64; e += W * 32) {
        sum_store_code<F16C, NT, W>(reinterpret_cast<const float*>(red4), e, M, N, bias, bias_dtype, y, y_dtype, bx);
    }
}

// x staged in shared memory (XS: the three-block persistent kernels for one row of x, "_p3"). A persistent block decodes
// many tiles against the same x, and each chunk's x fragments cost ~20 instructions from global memory (their 64-bit
// address recomputed every chunk: at the 80-register cap the compiler keeps no x pointer live; SASS, session 27).
// Staged once per block after the wait, a chunk's fragments are four shared loads at one base plus 4 KiB a chunk.
// Where: the wide table's rows are 256 bytes of which the lanes' entries use bytes 0..127, so the upper halves (32 KiB)
// are free: byte o of x [M, K] (row-major, 16-bit) sits at table + (o >> 7) * 256 + 128 + (o & 127).
constexpr int X_STAGE_BYTES = 256 * 128;

__host__ __device__ inline bool x_stage_fits(int M, int K) { return (int64_t)M * K * 2 <= X_STAGE_BYTES; }

__device__ __forceinline__ uint32_t x_stage_offset(uint32_t o) { return ((o >> 7) << 8) + 128u + (o & 127u); }

// x [M, K] into table's upper halves by threads threads (K % 128 == 0: 16-byte pieces never straddle a half).
__device__ __forceinline__ void stage_x(uint8_t* table, const uint16_t* __restrict__ x, int M, int K, int tid,
                                        int threads) {
    if (!x_stage_fits(M, K)) __trap();  // the launcher sends larger x to the kernels that read global memory
    const int pieces = M * K / 8;
    for (int i = tid; i < pieces; i += threads) {
        *reinterpret_cast<uint4*>(table + x_stage_offset((uint32_t)i * 16u)) = __ldg(reinterpret_cast<const uint4*>(x) + i);
    }
}

// The shared address of a thread's staged x fragments of its first chunk (k base kb0) for each n-tile: x row
// 4 nt + (g >> 1), clamped to M - 1 as code_x_start's rows. Chunk j of a tile (k base kb0 + j * KSTEP) is KSTEP * 2 bytes,
// i.e. KSTEP / 64 rows of the table, further (KSTEP a multiple of 128).
template <int NT>
__device__ __forceinline__ void staged_x_start(const uint8_t* table, int M, int K, int g, int kb0,
                                               uint32_t (&xs)[NT]) {
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        const int m = min(4 * nt + (g >> 1), M - 1);
        xs[nt] = shared_address(table) + x_stage_offset((uint32_t)(m * K + kb0) * 2u);
    }
}

// load_x_where from the staged x: chunk j's fragments (KSTEP: the k of a chunk step) where load[nt].
template <int NT, int KSTEP>
__device__ __forceinline__ void load_x_staged(uint32_t (&xw)[NT][16], const uint32_t (&xs)[NT], int j,
                                              const bool (&load)[NT]) {
    static_assert(KSTEP % 128 == 0, "a chunk step moves by whole 256-byte table rows");
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        if (load[nt]) {
            const uint32_t a = xs[nt] + (uint32_t)j * (uint32_t)(KSTEP / 64 * 256);
#pragma unroll
            for (int i = 0; i < 4; i++) {
                asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];"
                             : "=r"(xw[nt][4 * i]), "=r"(xw[nt][4 * i + 1]), "=r"(xw[nt][4 * i + 2]), "=r"(xw[nt][4 * i + 3])
                             : "r"(a + 16u * i));
            }
        }
    }
}

// The code decode's block start once its first loads are out: the tables (code16's wide table, the nested codes), then
// the wait for the previous kernel (x is read and y written only after it has completed; pdl.cuh) and a barrier.
// XS: x [M, K] is copied into the table's spare halves after the wait (stage_x), before the barrier.
template <bool F16C, int W, bool NESTED, bool XS, typename S>
__device__ __forceinline__ void code_tables_then_wait(S& sm, const float* __restrict__ code16,
                                                      const float* __restrict__ nested_code,
                                                      const uint16_t* __restrict__ x, int M, int K) {
    fill_tables<F16C, DEC_CODE>(sm.tab, sm.ncode, code16, nested_code, NESTED, W * 32);
    pdl_wait();
    pdl_launch_dependents();
    if constexpr (XS) stage_x(wide_table, x, M, K, threadIdx.x, W * 32);
    __syncthreads();
}

// code_tables_then_wait for a G > 1 block (nf4_gemv_team.cuh): the block fills the one set of factors, nested codes and
// wide table (at table) its groups share, then the wait and a barrier of the block.
template <bool F16C, int W, int G, bool NESTED, bool XS, typename S>
__device__ __forceinline__ void code_tables_then_wait_team(S& sm, uint8_t* table, const float* __restrict__ code16,
                                                           const float* __restrict__ nested_code,
                                                           const uint16_t* __restrict__ x, int M, int K) {
    constexpr int THREADS = G * W * 32;
    if (threadIdx.x < 16) sm.tab[threadIdx.x] = __ldg(code16 + threadIdx.x);
    if (NESTED) {
        for (int j = threadIdx.x; j < 256; j += THREADS) sm.ncode[j] = __ldg(nested_code + j);
    }
    fill_wide_table<F16C>(table, code16, threadIdx.x, THREADS);
    pdl_wait();
    pdl_launch_dependents();
    if constexpr (XS) stage_x(table, x, M, K, threadIdx.x, THREADS);
    __syncthreads();
}

// The tables and the wait for the team (G = 1: the block), and what the decode adds to a packed byte for lane: the wide
// table's lane offset (G = 1), or the team table's key (G > 1: decode_word_code_at).
// XS: x staged in the table's spare halves (stage_x).
template <bool F16C, int W, int G, bool NESTED, bool XS, typename S>
__device__ __forceinline__ uint32_t code_tables_key(S& sm, uint8_t* table, const float* __restrict__ code16,
                                                    const float* __restrict__ nested_code, int lane,
                                                    const uint16_t* __restrict__ x, int M, int K) {
    if constexpr (G == 1) {
        code_tables_then_wait<F16C, W, NESTED, XS>(sm, code16, nested_code, x, M, K);
        return (uint32_t)lane * 4u;
    } else {
        code_tables_then_wait_team<F16C, W, G, NESTED, XS>(sm, table, code16, nested_code, x, M, K);
        return team_table_key(table, lane);
    }
}

// A thread's x rows and sums at the start of the code decode: B column g of n-tile nt is x row 4 nt + (g >> 1), nonzero
// only in the k of the threads of block half g & 1 (so only those load it); fragments and sums zero.
template <int NT>
__device__ __forceinline__ void code_x_start(const uint16_t* __restrict__ x, int M, int K, int g, int t,
                                             const uint16_t* (&xrow)[NT], bool (&xload)[NT], uint32_t (&xw)[NT][16],
                                             float (&run)[NT][2]) {
    const bool half_mine = (g & 1) == (t >> 1);
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        const int m = 4 * nt + (g >> 1);
        xload[nt] = half_mine && m < M;
        xrow[nt] = x + (int64_t)min(m, M - 1) * K;
        run[nt][0] = run[nt][1] = 0.0f;
#pragma unroll
        for (int j = 0; j < 16; j++) xw[nt][j] = 0;
    }
}

// A chunk's absmax for thread (g, t): ag / ah [h] = the absmax of block half h of rows g / g + 8 (off0 / off1: the
// rows' weights' nested offsets); the thread's own block from its loads, the other block's by a shuffle with lane t ^ 2.
template <bool NESTED>
__device__ __forceinline__ void code_scales(const FastChunk& L, float off0, float off1, const float* ncode, int t,
                                            float (&ag)[2], float (&ah)[2]) {
    const float a0 = NESTED ? __fadd_rn(__fmul_rn(ncode[L.q[0]], L.s[0]), off0) : L.s[0];
    const float a1 = NESTED ? __fadd_rn(__fmul_rn(ncode[L.q[1]], L.s[1]), off1) : L.s[1];
    const float o0 = __shfl_xor_sync(0xFFFFFFFFu, a0, 2), o1 = __shfl_xor_sync(0xFFFFFFFFu, a1, 2);
    const bool first = t < 2;
    ag[0] = first ? a0 : o0;
    ag[1] = first ? o0 : a0;
    ah[0] = first ? a1 : o1;
    ah[1] = first ? o1 : a1;
}

// An n-tile's chunk sums s ((row g, row g + 8) x (block half 0, 1)) scaled by their absmax into run (row g, row g + 8).
__device__ __forceinline__ void code_scale_add(const float (&s)[4], const float (&ag)[2], const float (&ah)[2],
                                               float (&run)[2]) {
    run[0] = fmaf(s[1], ag[1], fmaf(s[0], ag[0], run[0]));
    run[1] = fmaf(s[3], ah[1], fmaf(s[2], ah[0], run[1]));
}

// One chunk of the code decode: the two blocks' absmax of rows g (off0: its weight's nested offset) and g + 8 (off1),
// the codes through the wide table into the mma against x's fragments xw, and the two blocks' float32 sums scaled into
// run[nt] = (row g, row g + 8) of x row 4 nt + t.
// AT: lane_off is a team table's key (decode_word_code_at: the table on a 64 KiB boundary, nf4_gemv_team.cuh).
template <bool F16C, int NT, bool NESTED, bool AT = false>
__device__ __forceinline__ void code_chunk(const FastChunk& L, float off0, float off1, const float* ncode,
                                           uint32_t lane_off, int t, const uint32_t (&xw)[NT][16], float (&run)[NT][2]) {
    float ag[2], ah[2];
    code_scales<NESTED>(L, off0, off1, ncode, t, ag, ah);
    const uint32_t pk0[4] = {L.w[0].x, L.w[0].y, L.w[0].z, L.w[0].w};
    const uint32_t pk1[4] = {L.w[1].x, L.w[1].y, L.w[1].z, L.w[1].w};
    float s[NT][4];  // the chunk's sums (bench, session 21: two chains of 4 mma instead of 8 measured the same)
#pragma unroll
    for (int nt = 0; nt < NT; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int word = 0; word < 4; word++) {
        uint32_t r0[4], r1[4];
        if constexpr (AT) {
            decode_word_code_at(pk0[word], lane_off, r0);
            decode_word_code_at(pk1[word], lane_off, r1);
        } else {
            decode_word_code(pk0[word], lane_off, r0);
            decode_word_code(pk1[word], lane_off, r1);
        }
#pragma unroll
        for (int half = 0; half < 2; half++) {  // as decode_mma: k step 2 word + half
            const int st = 2 * word + half, b = 2 * half;
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                mma16816<F16C>(s[nt], r0[b], r1[b], r0[b + 1], r1[b + 1], xw[nt][2 * st], xw[nt][2 * st + 1]);
            }
        }
    }
#pragma unroll
    for (int nt = 0; nt < NT; nt++) code_scale_add(s[nt], ag, ah, run[nt]);
}

// code_chunk for 9..16 rows of x (NT = 4; CODE_X_IN_TURN): the x fragments of four n-tiles would not fit the registers
// beside the ring, so the chunk's codes are decoded once into A fragments, then each n-tile's x fragments (the 32 k at
// kb of x row 4 nt + (g >> 1), loaded where xload[nt], else zero) are loaded and multiplied in turn. Per n-tile the same
// 8 mma in the same order as code_chunk, so every x row's sums are those of the m4 / m8 kernels bit for bit.
template <bool F16C, int NT, bool NESTED, bool AT = false>
__device__ __forceinline__ void code_chunk_x_in_turn(const FastChunk& L, float off0, float off1, const float* ncode,
                                                     uint32_t lane_off, int t, const uint16_t* const (&xrow)[NT],
                                                     const bool (&xload)[NT], int kb, float (&run)[NT][2]) {
    float ag[2], ah[2];
    code_scales<NESTED>(L, off0, off1, ncode, t, ag, ah);
    const uint32_t pk0[4] = {L.w[0].x, L.w[0].y, L.w[0].z, L.w[0].w};
    const uint32_t pk1[4] = {L.w[1].x, L.w[1].y, L.w[1].z, L.w[1].w};
    uint32_t r0[4][4], r1[4][4];
#pragma unroll
    for (int word = 0; word < 4; word++) {
        if constexpr (AT) {
            decode_word_code_at(pk0[word], lane_off, r0[word]);
            decode_word_code_at(pk1[word], lane_off, r1[word]);
        } else {
            decode_word_code(pk0[word], lane_off, r0[word]);
            decode_word_code(pk1[word], lane_off, r1[word]);
        }
    }
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        uint32_t xw[1][16];
#pragma unroll
        for (int j = 0; j < 16; j++) xw[0][j] = 0;
        const uint16_t* const xr[1] = {xrow[nt]};
        const bool xl[1] = {xload[nt]};
        load_x_where<1>(xw, xr, kb, xl);
        float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int word = 0; word < 4; word++) {
#pragma unroll
            for (int half = 0; half < 2; half++) {
                const int st = 2 * word + half, b = 2 * half;
                mma16816<F16C>(s, r0[word][b], r1[word][b], r0[word][b + 1], r1[word][b + 1], xw[0][2 * st], xw[0][2 * st + 1]);
            }
        }
        code_scale_add(s, ag, ah, run[nt]);
    }
}

// NT from which the code decode loads x per n-tile inside each chunk (code_chunk_x_in_turn) instead of holding every
// n-tile's fragments across the chunk loop.
constexpr int CODE_X_IN_TURN = 4;

// One chunk with x's fragments: held across chunks in xw and refilled here (NT < CODE_X_IN_TURN), or loaded in turn.
template <bool F16C, int NT, bool NESTED, bool AT = false>
__device__ __forceinline__ void code_chunk_x(const FastChunk& L, float off0, float off1, const float* ncode,
                                             uint32_t lane_off, int t, uint32_t (&xw)[NT][16],
                                             const uint16_t* const (&xrow)[NT], const bool (&xload)[NT], int kb,
                                             float (&run)[NT][2]) {
    if constexpr (NT >= CODE_X_IN_TURN) {
        code_chunk_x_in_turn<F16C, NT, NESTED, AT>(L, off0, off1, ncode, lane_off, t, xrow, xload, kb, run);
    } else {
        load_x_where<NT>(xw, xrow, kb, xload);
        code_chunk<F16C, NT, NESTED, AT>(L, off0, off1, ncode, lane_off, t, xw, run);
    }
}

// The joint gate / up decode's output e (< NT * 32) of a tile: (gate row, up row) 8 bx + g' of x row 4 nt + t', added
// over the W warps in warp order as sum_store_code does; y[m, o] = round(y, silu(g) * u) with g and u the two sums
// rounded to the compute dtype, i.e. exactly what the two GEMVs (no bias) and silu_mul (elementwise.cu) store in turn.
template <bool F16C, int NT, int W>
__device__ __forceinline__ void sum_store_swiglu(const float2* red2, int e, int M, int N, void* __restrict__ y,
                                                 int y_dtype, int bx) {
    const int ln = e & 31, nt = e >> 5;  // output row 8 bx + g' (ln = 4 g' + t'), x row 4 nt + t'
    const int64_t o = (int64_t)bx * 8 + (ln >> 2);
    const int m = 4 * nt + (ln & 3);
    if (o >= N || m >= M) return;
    const int cdt = F16C ? DT_F16 : DT_BF16;
    float gs = 0.0f, us = 0.0f;
    for (int ww = 0; ww < W; ww++) {
        const float2 v = red2[(ww * NT + nt) * 32 + ln];
        gs += v.x;
        us += v.y;
    }
    store_from_f32(y, (int64_t)m * N + o, y_dtype, silu_times(round_to(gs, cdt), round_to(us, cdt)));
}

// The joint decode's end of a one-tile block: every warp's fragment, a barrier, then sum_store_swiglu.
template <bool F16C, int NT, int W, int G = 1>
__device__ __forceinline__ void reduce_store_swiglu(float4* red4, const float (&run)[NT][2], int M, int N,
                                                    void* __restrict__ y, int y_dtype, int bx) {
    using TM = Team<G, W>;
    float2* red2 = reinterpret_cast<float2*>(red4);  // [W][NT][32] pairs
    put_fragment<NT>(red2, run, TM::warp(), threadIdx.x & 31);
    TM::sync();
    for (int e = TM::tid(); e < NT * 32; e += W * 32) sum_store_swiglu<F16C, NT, W>(red2, e, M, N, y, y_dtype, bx);
}

// A code kernel's shared memory as the body reads it (Smem's fields): the reduction buffer of the threads that share a
// tile, the 16 factors and the nested codes; G = 1: the block's Smem; G > 1: the group's buffer below the team table
// and one set of factors and codes for the block (static: constant addresses, no register in the chunk loop), plus
// the team table.
template <int G, int W, int NT>
struct CodeShared {
    using Red = float4[W * NT * 32];
    float4* red;
    float* tab;
    float* ncode;
    uint8_t* table;
    __device__ __forceinline__ CodeShared() {
        if constexpr (G == 1) {
            Smem<W, 1, NT>& s = block_smem<W, 1, NT>();
            red = s.red;
            tab = s.tab;
            ncode = s.ncode;
            table = nullptr;
        } else {
            __shared__ __align__(16) float team_tab[16];
            __shared__ __align__(16) float team_ncode[256];
            const TeamLayout<Red, G> layout;
            red = layout.smem[Team<G, W>::group()];
            tab = team_tab;
            ncode = team_ncode;
            table = layout.table;
        }
    }
};

// The code decode's body: gemv_body_fast's tiles, warps, chunks and ring of loads (code_applies must hold). Launch:
// one block of W warps per 16 output rows, WIDE_TABLE_BYTES of dynamic shared memory; M <= 4 NT.
// IL: the bytes in the tile layout, read as gemv_body_fast's IL reads them (N % 16 == 0).
// JOINT (IL only): the gate / up decode. Block bx decodes rows 8 bx .. 8 bx + 7 of w (gate) and of w1 (up), both [N, K]
// with the same blocksize, nesting and nested code table, and stores y [M, N] = silu(x gate^T) * (x up^T)
// (reduce_store_swiglu; no bias). Launch: N / 8 blocks.
// PERSIST (IL only; persistent_applies): the block decodes tiles bx, bx + gridDim.x, ... (of 16 rows; JOINT: of 8 rows of
// each weight, gridDim.x even) with one ring of loads running on across them, so a block's ramp (tables, first loads)
// and tail come once per gridDim.x-th of the weight instead of once per tile. Each tile's sums are those of the
// one-tile launch, bit for bit.
// G > 1 (PERSIST only): the SM-wide form (nf4_gemv_team.cuh): bx is the group's virtual block blockIdx.x * G + group, the
// stride of the tile walk gridDim.x * G, and the table one per block on a 64 KiB boundary.
template <bool F16C, int NT, int W, int DEPTH, bool NESTED, bool IL = false, bool JOINT = false, bool PERSIST = false,
          int G = 1, bool XS = false>
__device__ __forceinline__ void gemv_body_code(const Weight& w, const Weight& w1, const float* __restrict__ nested_code,
                                               const float* __restrict__ code16, const uint16_t* __restrict__ x, int M,
                                               int N, int K, const void* __restrict__ bias, int bias_dtype,
                                               void* __restrict__ y, int y_dtype, int bx) {
    static_assert(!PERSIST || IL, "the persistent loop moves through the tile layout");
    static_assert(G == 1 || PERSIST, "SM-wide blocks walk tiles");
    static_assert(!XS || NT < CODE_X_IN_TURN, "staged x holds the fragments across the chunk as code_chunk does");
    using TM = Team<G, W>;
    const CodeShared<G, W, NT> shared;
    const CodeShared<G, W, NT>& sm = shared;
    uint8_t* const table = shared.table;
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    constexpr int KSTEP = W * CHUNK_K;
    FastStart<W, DEPTH, NESTED, IL, JOINT> fs(w, w1, N, K, bx, TM::warp());
    const int cpw = fs.cpw, kb0 = fs.kb0;

    constexpr bool HANDOFF = PERSIST && handoff_applies(G, XS, NT);  // the tiles' ends without block barriers
    using Handoff = TileHandoff<W, NT, JOINT ? NT * 32 : NT * 64>;
    if constexpr (HANDOFF) Handoff::init();
    const uint32_t lane_off = code_tables_key<F16C, W, G, NESTED, XS>(sm, table, code16, nested_code, lane, x, M, K);
    const uint16_t* xrow[NT];
    bool xload[NT];
    uint32_t xw[NT][16];
    float run[NT][2];
    code_x_start<NT>(x, M, K, g, t, xrow, xload, xw, run);
    uint32_t xs[NT];
    if constexpr (XS) staged_x_start<NT>(G == 1 ? wide_table : table, M, K, g, kb0, xs);

    // one chunk (the tile's j-th of the warp, k base kb): x's fragments, then its decode
    auto consume = [&](const FastChunk& L, int kb, int j) {
        if constexpr (XS) {
            load_x_staged<NT, KSTEP>(xw, xs, j, xload);
            code_chunk<F16C, NT, NESTED, (G > 1)>(L, w.offset, w1.offset, sm.ncode, lane_off, t, xw, run);
        } else {
            code_chunk_x<F16C, NT, NESTED, (G > 1)>(L, w.offset, w1.offset, sm.ncode, lane_off, t, xw, xrow, xload, kb, run);
        }
    };
    auto store = [&](int tile) {
        if (JOINT) reduce_store_swiglu<F16C, NT, W, G>(sm.red, run, M, N, y, y_dtype, tile);
        else reduce_store_code<F16C, NT, W, G>(sm.red, run, M, N, bias, bias_dtype, y, y_dtype, tile);
    };
    // output e of the block's tile i (tile bx + i * stride) from its fragments buf (the persistent loop's handoff)
    auto sum = [&](const float2* buf, int e, int i) {
        const int tile = bx + i * (int)(gridDim.x * G);
        if (JOINT) sum_store_swiglu<F16C, NT, W>(buf, e, M, N, y, y_dtype, tile);
        else sum_store_code<F16C, NT, W>(reinterpret_cast<const float*>(buf), e, M, N, bias, bias_dtype, y, y_dtype, tile);
    };

    if constexpr (!PERSIST) {
        for (int j0 = 0; j0 < cpw; j0 += DEPTH) {
#pragma unroll
            for (int d = 0; d < DEPTH; d++) {
                const int j = j0 + d;
                if (j < cpw) {  // warp-uniform
                    const int kb = kb0 + j * KSTEP;
                    consume(fs.buf[d], kb, j);
                    if (j + DEPTH < cpw) fs.load(w, w1, d, kb + DEPTH * KSTEP);
                }
            }
        }
        store(bx);
    } else {
        // every warp has cpw >= DEPTH chunks of every tile (persistent_applies): the steps v = tile i * cpw + chunk j
        const int stride = gridDim.x * G, rows_per_tile = JOINT ? 8 : 16;
        const int tiles = (N / rows_per_tile - bx + stride - 1) / stride;
        const int total = tiles * cpw;
        const int64_t tile_bytes = (int64_t)(JOINT ? stride / 2 : stride) * (K / CHUNK_K) * 1024;
        const uint32_t tile_blocks = (uint32_t)(rows_per_tile * stride) * (uint32_t)(K >> w.log2_blocksize);
        int j = 0, tile = bx;                   // the chunk consumed next, and its tile
        // the chunk loaded next (ring slot of step v + DEPTH) and (G > 1) its tile's index: G = 1 moves the loads on once
        // per tile (fs.next_tile; the GEMVs 2-3% faster), G > 1 adds the tile's offset per chunk (the SM-wide kernels'
        // 80 registers spill more otherwise)
        int lj = DEPTH, li = 0;
        Handoff handoff(sm.red);
        for (int v0 = 0; v0 < total; v0 += DEPTH) {
#pragma unroll
            for (int d = 0; d < DEPTH; d++) {
                if (v0 + d < total) {  // warp- and block-uniform
                    consume(fs.buf[d], kb0 + j * KSTEP, j);
                    if (v0 + d + DEPTH < total) {
                        if (lj == cpw) {
                            lj = 0;
                            if constexpr (G == 1) fs.next_tile(tile_bytes, tile_blocks);
                            else li++;
                        }
                        if constexpr (G == 1) fs.load(w, w1, d, kb0 + lj * KSTEP);
                        else fs.load_tile(w, w1, d, kb0 + lj * KSTEP, li * tile_bytes, (uint32_t)li * tile_blocks);
                        lj++;
                    }
                    if (++j == cpw) {
                        if constexpr (HANDOFF) {
                            handoff.hand_off(run, sum);
                        } else {
                            store(tile);
                            TM::sync();  // the next tile's store writes the reduction buffer again
                        }
#pragma unroll
                        for (int nt = 0; nt < NT; nt++) run[nt][0] = run[nt][1] = 0.0f;
                        j = 0;
                        tile += stride;
                    }
                }
            }
        }
        if constexpr (HANDOFF) handoff.finish(sum);
    }
}

// Whether the persistent tile loop applies (PERSIST above): every warp owns the same number of chunks of a tile, at
// least the ring's depth (K / 128 a multiple of W, and >= W * DEPTH).
__host__ __device__ inline bool persistent_applies(int K, int W, int DEPTH) {
    return K % CHUNK_K == 0 && (K / CHUNK_K) % W == 0 && K / CHUNK_K >= W * DEPTH;
}

// The code decode's kernel body: the launcher (Nf4GemvKernels) takes it only where code_applies holds and gives the
// other weights the exact kernels. A kernel of its own, without the exact decode's body as a fallback: the fallback
// raised it from 93 to 119 registers and cost 5-12% (bench, session 21). A launch that breaks the contract traps.
// IL: the weight's bytes in the tile layout (N % 16 == 0 too).
// PERSIST (IL): the persistent tile loop (the launch's grid below N / 16 blocks; persistent_applies must hold).
template <bool F16C, int NT, int W, int DEPTH, bool IL = false, bool PERSIST = false, int G = 1, bool XS = false>
__device__ __forceinline__ void gemv_code(const Weight& w, const float* __restrict__ nested_code,
                                          const float* __restrict__ code16, const uint16_t* __restrict__ x, int M,
                                          int N, int K, const void* __restrict__ bias, int bias_dtype,
                                          void* __restrict__ y, int y_dtype, int bx) {
    if (!code_applies(K, w.log2_blocksize, w.nested, w.nested_shift) || M > 4 * NT || (IL && N % 16 != 0)
        || (PERSIST && !persistent_applies(K, W, DEPTH))) {
        __trap();
    }
    if (w.nested) gemv_body_code<F16C, NT, W, DEPTH, true, IL, false, PERSIST, G, XS>(w, w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype, bx);
    else gemv_body_code<F16C, NT, W, DEPTH, false, IL, false, PERSIST, G, XS>(w, w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype, bx);
}

// The joint gate / up decode (tile layout): y [M, N] = silu(x gate^T) * (x up^T), bit for bit the two code GEMVs and
// silu_mul in turn. gate and up: [N, K] with the same blocksize, nesting and nested code (the launcher checks; the
// kernel traps on the rest of the contract).
// PERSIST: the persistent tile loop (an even grid below N / 8 blocks; persistent_applies must hold).
template <bool F16C, int NT, int W, int DEPTH, bool PERSIST = false, int G = 1, bool XS = false>
__device__ __forceinline__ void gemv_code_swiglu(const Weight& gate, const Weight& up, const float* __restrict__ nested_code,
                                                 const float* __restrict__ code16, const uint16_t* __restrict__ x, int M,
                                                 int N, int K, void* __restrict__ y, int y_dtype, int bx) {
    if (!code_applies(K, gate.log2_blocksize, gate.nested, gate.nested_shift) || M > 4 * NT || N % 16 != 0
        || up.log2_blocksize != gate.log2_blocksize || up.nested != gate.nested || up.nested_shift != gate.nested_shift
        || (PERSIST && (!persistent_applies(K, W, DEPTH) || (gridDim.x * G) % 2 != 0))) {
        __trap();
    }
    if (gate.nested) gemv_body_code<F16C, NT, W, DEPTH, true, true, true, PERSIST, G, XS>(gate, up, nested_code, code16, x, M, N, K, nullptr, 0, y, y_dtype, bx);
    else gemv_body_code<F16C, NT, W, DEPTH, false, true, true, PERSIST, G, XS>(gate, up, nested_code, code16, x, M, N, K, nullptr, 0, y, y_dtype, bx);
}

// The grouped persistent code decode (tile layout): up to three weights that read the same x (a layer's q / k / v at
// decode), [N_s, K] each, as one sequence of 16-row tiles (weight 0's, then 1's, then 2's) that a persistent grid walks
// with one ring of loads, so the three GEMVs are one launch and one ramp per block. Every tile's values are those of
// its weight's own code decode, bit for bit. All weights: the same K, blocksize, nesting and nested code table (the
// launcher checks; the code tables come from weight 0); persistent_applies(K, W, DEPTH).
struct CodeSegments {
    Weight w[3];                 // selected by ternaries below (never indexed by a runtime value: no local memory)
    const void* bias[3];
    int bias_dtype[3];
    void* y[3];
    int tiles[3];                // N_s / 16 (0 for an absent weight)
};

__device__ __forceinline__ int code_segment(const CodeSegments& cs, int vt) {
    return vt < cs.tiles[0] ? 0 : vt < cs.tiles[0] + cs.tiles[1] ? 1 : 2;
}

// Field of segment s, selected by value (a reference chosen at run time would put the segments in local memory).
#define CODE_PICK(cs, s, f) ((s) == 0 ? (cs).f[0] : (s) == 1 ? (cs).f[1] : (cs).f[2])
__device__ __forceinline__ Weight code_weight(const CodeSegments& cs, int s) {
    return Weight{CODE_PICK(cs, s, w).packed, CODE_PICK(cs, s, w).absmax, CODE_PICK(cs, s, w).nested_absmax,
                  CODE_PICK(cs, s, w).offset, CODE_PICK(cs, s, w).log2_blocksize, CODE_PICK(cs, s, w).nested_bs,
                  CODE_PICK(cs, s, w).nested_shift, CODE_PICK(cs, s, w).nested};
}

// G > 1: the SM-wide form (nf4_gemv_team.cuh; as gemv_body_code's G).
template <bool F16C, int NT, int W, int DEPTH, bool NESTED, int G = 1, bool XS = false>
__device__ __forceinline__ void gemv_body_code_group(const CodeSegments& cs, const float* __restrict__ nested_code,
                                                     const float* __restrict__ code16, const uint16_t* __restrict__ x,
                                                     int M, int K, int y_dtype) {
    using TM = Team<G, W>;
    const CodeShared<G, W, NT> shared;
    const CodeShared<G, W, NT>& sm = shared;
    uint8_t* const table = shared.table;
    const int warp = TM::warp(), lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    constexpr int KSTEP = W * CHUNK_K;
    const int C = K / CHUNK_K, cpw = C / W, kb0 = warp * CHUNK_K + 32 * t;
    const int stride = gridDim.x * G, first = (int)blockIdx.x * G + TM::group();  // the team's first virtual tile
    const int all = cs.tiles[0] + cs.tiles[1] + cs.tiles[2];
    const int total = (all - first + stride - 1) / stride * cpw;
    // The tile the ring loads from (virtual tile vt: its weight's tile vt - (tiles before it)): its weight, byte pointers
    // and first absmax blocks of rows g and g + 8. G = 1 locates them once per tile, so that a chunk's load adds only its
    // k (the 7B decode 2% faster than recomputing them per chunk); G > 1 recomputes them per chunk, which its
    // 80-register budget holds without spills (session 26: 48-72 bytes of spills and a 2% slower decode otherwise).
    FastChunk buf[DEPTH];
    Weight lw;
    const uint8_t* lrow[2];
    uint32_t lblock[2];
    auto locate = [&](int vt) {
        const int s = code_segment(cs, vt);
        lw = code_weight(cs, s);
        const int lt = vt - (s == 0 ? 0 : s == 1 ? cs.tiles[0] : cs.tiles[0] + cs.tiles[1]);
#pragma unroll
        for (int h = 0; h < 2; h++) {
            lrow[h] = lw.packed + ((int64_t)lt * C * 2 + h) * 512 + lane * 16 + warp * 1024;
            lblock[h] = (uint32_t)(16 * lt + g + 8 * h) * (uint32_t)(K >> lw.log2_blocksize);
        }
    };
    // chunk j of virtual tile vt into ring slot d (G = 1: vt is the located tile)
    auto issue = [&](int d, int vt, int j) {
        if constexpr (G > 1) locate(vt);
        load_fast<NESTED, true>(buf[d], lw, lw, lrow, lblock, kb0 + j * KSTEP, kb0);
    };
    if constexpr (G == 1) locate(first);
#pragma unroll
    for (int d = 0; d < DEPTH; d++) {
        if (d < total) issue(d, first, d);  // cpw >= DEPTH: the first tile's first chunks
    }

    constexpr bool HANDOFF = handoff_applies(G, XS, NT);  // the tiles' ends without block barriers
    using Handoff = TileHandoff<W, NT, NT * 64>;
    if constexpr (HANDOFF) Handoff::init();
    const uint32_t lane_off = code_tables_key<F16C, W, G, NESTED, XS>(sm, table, code16, nested_code, lane, x, M, K);
    const uint16_t* xrow[NT];
    bool xload[NT];
    uint32_t xw[NT][16];
    float run[NT][2];
    code_x_start<NT>(x, M, K, g, t, xrow, xload, xw, run);
    uint32_t xs[NT];
    if constexpr (XS) staged_x_start<NT>(G == 1 ? wide_table : table, M, K, g, kb0, xs);

    int j = 0, vt = first;          // the chunk consumed next and its virtual tile
    int lj = DEPTH, lvt = first;    // the chunk loaded next
    int s = code_segment(cs, vt);
    float off = CODE_PICK(cs, s, w).offset;
    // output e of the team's tile i (virtual tile ft) from its fragments buf: its weight's tile lt, rows, bias, output
    auto sum = [&](const float2* buf, int e, int i) {
        const int ft = first + i * stride;
        const int fs = code_segment(cs, ft);
        const int lt = ft - (fs == 0 ? 0 : fs == 1 ? cs.tiles[0] : cs.tiles[0] + cs.tiles[1]);
        sum_store_code<F16C, NT, W>(reinterpret_cast<const float*>(buf), e, M, 16 * CODE_PICK(cs, fs, tiles),
                                    CODE_PICK(cs, fs, bias), CODE_PICK(cs, fs, bias_dtype), CODE_PICK(cs, fs, y),
                                    y_dtype, lt);
    };
    Handoff handoff(sm.red);
    for (int v0 = 0; v0 < total; v0 += DEPTH) {
#pragma unroll
        for (int d = 0; d < DEPTH; d++) {
            if (v0 + d < total) {  // warp- and block-uniform
                if constexpr (XS) {
                    load_x_staged<NT, KSTEP>(xw, xs, j, xload);
                    code_chunk<F16C, NT, NESTED, (G > 1)>(buf[d], off, off, sm.ncode, lane_off, t, xw, run);
                } else {
                    code_chunk_x<F16C, NT, NESTED, (G > 1)>(buf[d], off, off, sm.ncode, lane_off, t, xw, xrow, xload, kb0 + j * KSTEP, run);
                }
                if (v0 + d + DEPTH < total) {
                    if (lj == cpw) {
                        lj = 0;
                        lvt += stride;
                        if constexpr (G == 1) locate(lvt);
                    }
                    issue(d, lvt, lj);
                    lj++;
                }
                if (++j == cpw) {
                    if constexpr (HANDOFF) {
                        handoff.hand_off(run, sum);
                    } else {
                        const int lt = vt - (s == 0 ? 0 : s == 1 ? cs.tiles[0] : cs.tiles[0] + cs.tiles[1]);
                        reduce_store_code<F16C, NT, W, G>(sm.red, run, M, 16 * CODE_PICK(cs, s, tiles), CODE_PICK(cs, s, bias),
                                                          CODE_PICK(cs, s, bias_dtype), CODE_PICK(cs, s, y), y_dtype, lt);
                        TM::sync();  // the next tile's store writes the reduction buffer again
                    }
#pragma unroll
                    for (int nt = 0; nt < NT; nt++) run[nt][0] = run[nt][1] = 0.0f;
                    j = 0;
                    vt += stride;
                    s = code_segment(cs, vt);
                    off = CODE_PICK(cs, s, w).offset;
                }
            }
        }
    }
    if constexpr (HANDOFF) handoff.finish(sum);
}

template <bool F16C, int NT, int W, int DEPTH, int G = 1, bool XS = false>
__device__ __forceinline__ void gemv_code_group(const CodeSegments& cs, const float* __restrict__ nested_code,
                                                const float* __restrict__ code16, const uint16_t* __restrict__ x, int M,
                                                int K, int y_dtype) {
    const Weight& w = cs.w[0];
    if (!code_applies(K, w.log2_blocksize, w.nested, w.nested_shift) || M > 4 * NT || !persistent_applies(K, W, DEPTH)) {
        __trap();
    }
#pragma unroll
    for (int s = 1; s < 3; s++) {
        if (cs.tiles[s] > 0 && (cs.w[s].log2_blocksize != w.log2_blocksize || cs.w[s].nested != w.nested
                                || cs.w[s].nested_shift != w.nested_shift)) {
            __trap();
        }
    }
    if (w.nested) gemv_body_code_group<F16C, NT, W, DEPTH, true, G, XS>(cs, nested_code, code16, x, M, K, y_dtype);
    else gemv_body_code_group<F16C, NT, W, DEPTH, false, G, XS>(cs, nested_code, code16, x, M, K, y_dtype);
}

}  // namespace nf4v2
