// lora_gemm.cu — the skinny GEMMs of LoRA training (backend/cuda/LoraGemmKernels): one dimension of the product is
// a LoRA rank (r = 16, or a group's stacked ranks R = 32 / 48, at most 64), the others are tokens and features, so
// the products are memory-bound streams over one large BF16 operand. cuBLAS reaches 1-1.5 TB/s on them
// (native/NOTES-lora-gemm.md); these kernels stream the large operand once with 16-byte cp.async loads.
//
// One kernel family, C [M, N] = alpha * opA [M, K] opB [K, N] (+ beta * C), N <= NP (16, 32, 48, 64):
//   layout am_bn: A [M, K] (row stride lda), B [N, K] (ldb)   h  = x A^T       (M = tokens, K = in,  N = r)
//   layout am_bk: A [M, K],                  B [K, N]         gh = s gy B      (M = tokens, K = out, N = r)
//   layout ak_bk: A [K, M],                  B [K, N]         dB = s gy^T h    (M = out,    K = tokens, N = r)
//                                                             dA^T = x^T gh    (M = in,     K = tokens, N = r;
//                                                                               C stored transposed: ldc_m = 1)
// A and B are BF16; C is BF16 or F32, element (m, n) at C + m * ldc_m + n * ldc_n; beta is 0 or 1 in practice.
// The products are what cuBLAS computes (BF16 operands, f32 accumulation, alpha and beta applied in f32 once at the
// end), in a different (fixed) summation order.
//
// Launch: grid = ceil(M / 64) * S blocks of 128 threads (4 warps), dynamic shared memory STAGES * stage bytes.
// Block b takes rows [64 (b / S), +64) of C and the slice b % S of K's 64-wide tiles (tiles [s T / S, (s+1) T / S)).
// Warp w owns rows [16 w, +16) of the block and all N columns: mma.m16n8k16 bf16 -> f32, fragments by ldmatrix
// (.trans for operands stored k-major). A 4-stage cp.async ring of (64 x 64 A tile, B tile) per block; shared rows
// are padded to an odd number of 16-byte chunks, so the 8 row addresses of an ldmatrix hit 8 distinct bank groups.
//
// Deterministic split-K: with S > 1 each block stores its fragments (f32) to its own slot of `partials`, then counts
// itself in counters[row block]; the last block to arrive adds the S slots in slice order 0..S-1 (the same sums
// whichever block is last), applies alpha / beta, stores C and resets its counter to 0 for the next launch. Every
// element is therefore summed in one fixed order for a given (shape, S): bit-identical run to run. No float atomics.
//
// Requirements (the launcher checks them and otherwise keeps cuBLAS): A, B 16-byte aligned, lda, ldb multiples of 8,
// the contiguous dimension of each operand a multiple of 8 (am: K; ak: M; bn: K; bk: N); C aligned to its element
// size times 2 when ldc_n == 1 (pair stores; else element stores). M, K any (tails are zero-filled loads / skipped
// stores). partials: grid * 128 * NP / 2 floats when S > 1; counters: ceil(M / 64) ints, zero on entry.
//
// Portable (compute_80 PTX): no sm_90 features, so the module is not in the SM90A list and no PDL contract applies.
#include "common.cuh"

namespace lg {
constexpr int THREADS = 128;                       // 4 warps x 16 rows of C
constexpr int BM = 64;                             // rows of C per block
constexpr int BK = 64;                             // k per tile
constexpr int STAGES = 4;                          // cp.async ring depth: 3 tiles in flight while one is consumed
constexpr int ROW64 = (BK / 8 + 1) * 16;           // a 64-element row padded to 9 chunks (144 B)
constexpr int A_TILE = 64 * ROW64;                 // [64 rows][64 cols] either way round (am: m x k, ak: k x m)

template <int NP, bool BN>
struct BTile {
    static constexpr int ROW = BN ? ROW64 : (NP / 8 + 1) * 16;  // bn: [NP][64 k]; bk: [64 k][NP] (odd chunk count)
    static constexpr int ROWS = BN ? NP : BK;
    static constexpr int BYTES = ROW * ROWS;
};

template <int NP, bool BN>
struct Stage {
    static constexpr int BYTES = A_TILE + BTile<NP, BN>::BYTES;   // one ring slot: A tile, then B tile
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

// 16 bytes global -> shared, L2 only (the streamed operand is read once); valid = false writes 16 zero bytes.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
    int bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// Four 8x8 b16 matrices, lanes 8i..8i+7 address matrix i's rows; r[i] = (row lane/4, cols 2(lane%4), +1), or with
// .trans (rows 2(lane%4), +1, col lane/4).
__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t (&r)[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t addr, uint32_t (&r)[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// c[16x8] += a[16x16] b[16x8], f32 accumulate. a0 (g, 2t..), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..);
// b0 (k 2t.., n g), b1 (k 2t+8.., n g); c0,c1 (g, 2t..2t+1), c2,c3 (g+8, 2t..2t+1); g = lane/4, t = lane%4.
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

struct Args {
    const __nv_bfloat16* a;
    int64_t lda;
    const __nv_bfloat16* b;
    int64_t ldb;
    void* c;
    int64_t ldc_m, ldc_n;
    int c_f32;
    float alpha, beta;
    int M, N, K, S;
    float* partials;
    int* counters;
};

// One k tile (k0) of A and B into a stage: 16-byte chunks, zero-filled past M / N / K (so tails add exact zeros).
template <int NP, bool AK, bool BN>
__device__ __forceinline__ void load_tile(const Args& p, uint32_t stage, int m0, int k0) {
    const int tid = threadIdx.x;
#pragma unroll
    for (int i = 0; i < (64 * 8) / THREADS; i++) {
        const int u = tid + i * THREADS, row = u >> 3, ch = u & 7;
        // am: row = m, chunk along k; ak: row = k, chunk along m
        const int64_t gr = AK ? k0 + row : m0 + row;
        const int gc = AK ? m0 + ch * 8 : k0 + ch * 8;
        const bool ok = AK ? (gr < p.K && gc < p.M) : (gr < p.M && gc < p.K);
        const __nv_bfloat16* src = ok ? p.a + gr * p.lda + gc : p.a;
        cp_async16(stage + row * ROW64 + ch * 16, src, ok);
    }
    const uint32_t bs = stage + A_TILE;
    constexpr int BCH = BN ? NP * 8 : BK * (NP / 8);   // 16-byte chunks of the B tile
    for (int u = tid; u < BCH; u += THREADS) {
        int row, ch;
        bool ok;
        const __nv_bfloat16* src;
        if (BN) {   // row = n, chunk along k
            row = u >> 3; ch = u & 7;
            ok = row < p.N && k0 + ch * 8 < p.K;
            src = ok ? p.b + (int64_t)row * p.ldb + k0 + ch * 8 : p.b;
        } else {    // row = k, chunk along n
            row = u / (NP / 8); ch = u - row * (NP / 8);
            ok = k0 + row < p.K && ch * 8 < p.N;
            src = ok ? p.b + (int64_t)(k0 + row) * p.ldb + ch * 8 : p.b;
        }
        cp_async16(bs + row * BTile<NP, BN>::ROW + ch * 16, src, ok);
    }
}

// The warp's 16 rows x NP columns over one stage's 64 k.
template <int NP, bool AK, bool BN>
__device__ __forceinline__ void compute_tile(uint32_t stage, int warp, int lane, float (&acc)[NP / 8][4]) {
    const int q = lane >> 3, i = lane & 7;
    const uint32_t bs = stage + A_TILE;
#pragma unroll
    for (int kk = 0; kk < BK / 16; kk++) {
        uint32_t af[4];
        if (AK) {   // stored [k][m]: matrix q = (k half q >> 1, m half q & 1), transposed on load
            ldsm_x4_t(stage + (kk * 16 + (q >> 1) * 8 + i) * ROW64 + (warp * 2 + (q & 1)) * 16, af);
        } else {    // stored [m][k]: lanes 0-15 rows 0-15 at k chunk 0, lanes 16-31 at k chunk 1
            ldsm_x4(stage + (warp * 16 + (lane & 15)) * ROW64 + (kk * 2 + (lane >> 4)) * 16, af);
        }
#pragma unroll
        for (int np = 0; np < NP / 16; np++) {
            uint32_t bf[4];   // b0, b1 of n tile 2 np, then of 2 np + 1
            if (BN) {         // stored [n][k]: matrix q = (n half q >> 1, k half q & 1)
                ldsm_x4(bs + (np * 16 + (q >> 1) * 8 + i) * BTile<NP, BN>::ROW + (kk * 2 + (q & 1)) * 16, bf);
            } else {          // stored [k][n]: matrix q = (k half q & 1, n half q >> 1), transposed on load
                ldsm_x4_t(bs + (kk * 16 + (q & 1) * 8 + i) * BTile<NP, BN>::ROW + (np * 2 + (q >> 1)) * 16, bf);
            }
            mma(acc[2 * np], af, bf[0], bf[1]);
            mma(acc[2 * np + 1], af, bf[2], bf[3]);
        }
    }
}

// C = alpha * v (+ beta * C) for the warp's fragments of rows m0 + 16 warp ..
template <int NP>
__device__ __forceinline__ void store_tile(const Args& p, int m0, int warp, int lane, const float (&v)[NP / 8][4]) {
    const int g = lane >> 2, t = lane & 3;
    const int elem = p.c_f32 ? 4 : 2;
    const bool pair = p.ldc_n == 1 && (p.ldc_m & 1) == 0 && (reinterpret_cast<uintptr_t>(p.c) & (2 * elem - 1)) == 0;
#pragma unroll
    for (int nt = 0; nt < NP / 8; nt++) {
        const int n = nt * 8 + 2 * t;
        if (n >= p.N) continue;   // N % 8 == 0: n < N implies n + 1 < N
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int m = m0 + warp * 16 + g + 8 * h;
            if (m >= p.M) continue;
            float v0 = p.alpha * v[nt][2 * h], v1 = p.alpha * v[nt][2 * h + 1];
            const int64_t o0 = (int64_t)m * p.ldc_m + (int64_t)n * p.ldc_n, o1 = o0 + p.ldc_n;
            if (p.c_f32) {
                float* c = static_cast<float*>(p.c);
                if (p.beta != 0.f) { v0 += p.beta * c[o0]; v1 += p.beta * c[o1]; }
                if (pair) *reinterpret_cast<float2*>(c + o0) = make_float2(v0, v1);
                else { c[o0] = v0; c[o1] = v1; }
            } else {
                __nv_bfloat16* c = static_cast<__nv_bfloat16*>(p.c);
                if (p.beta != 0.f) { v0 += p.beta * bf16_to_f32(c[o0]); v1 += p.beta * bf16_to_f32(c[o1]); }
                if (pair) *reinterpret_cast<__nv_bfloat162*>(c + o0) = __floats2bfloat162_rn(v0, v1);
                else { c[o0] = f32_to_bf16(v0); c[o1] = f32_to_bf16(v1); }
            }
        }
    }
}

template <int NP, bool AK, bool BN>
__device__ __forceinline__ void gemm_body(const Args& p) {
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ int last_arrival;
    constexpr int STAGE = Stage<NP, BN>::BYTES;
    constexpr int NT = NP / 8;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int rb = blockIdx.x / p.S, split = blockIdx.x - rb * p.S;
    const int m0 = rb * BM;
    const int T = (p.K + BK - 1) / BK;
    const int t0 = (int)((int64_t)split * T / p.S), t1 = (int)((int64_t)(split + 1) * T / p.S);
    const int nt = t1 - t0;
    const uint32_t base = smem_addr(smem);

    float acc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < nt) load_tile<NP, AK, BN>(p, base + s * STAGE, m0, (t0 + s) * BK);
        cp_async_commit();   // empty groups too: the wait count below stays "all but the newest STAGES - 2"
    }
    for (int it = 0; it < nt; it++) {
        cp_async_wait<STAGES - 2>();   // tile it has landed (this thread's part) ...
        __syncthreads();               // ... everyone's part; and everyone is done with the slot refilled next
        const int next = it + STAGES - 1;
        if (next < nt) load_tile<NP, AK, BN>(p, base + (next % STAGES) * STAGE, m0, (t0 + next) * BK);
        cp_async_commit();
        compute_tile<NP, AK, BN>(base + (it % STAGES) * STAGE, warp, lane, acc);
    }
    cp_async_wait<0>();

    if (p.S == 1) {
        store_tile<NP>(p, m0, warp, lane, acc);
        return;
    }
    // split-K: fragments to this block's slot; the row block's last block adds the slots in slice order
    float* slot = p.partials + ((int64_t)blockIdx.x * THREADS + threadIdx.x) * (NT * 4);
#pragma unroll
    for (int j = 0; j < NT; j++) __stcg(reinterpret_cast<float4*>(slot + 4 * j), make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]));
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last_arrival = atomicAdd(p.counters + rb, 1) == p.S - 1;
    __syncthreads();
    if (!last_arrival) return;
    __threadfence();
#pragma unroll
    for (int j = 0; j < NT; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    const float* first = p.partials + ((int64_t)rb * p.S * THREADS + threadIdx.x) * (NT * 4);
    const int64_t stride = (int64_t)THREADS * NT * 4;
    // unrolled so that 8 slots' loads are in flight at once (the adds stay in slice order): the reduction is the
    // kernel's tail, one L2 round trip per 8 slices instead of per slice
#pragma unroll 8
    for (int sp = 0; sp < p.S; sp++) {
#pragma unroll
        for (int j = 0; j < NT; j++) {
            const float4 v = __ldcg(reinterpret_cast<const float4*>(first + sp * stride + 4 * j));
            acc[j][0] += v.x; acc[j][1] += v.y; acc[j][2] += v.z; acc[j][3] += v.w;
        }
    }
    store_tile<NP>(p, m0, warp, lane, acc);
    if (threadIdx.x == 0) p.counters[rb] = 0;   // ready for the next launch
}
}  // namespace lg

#define LORA_GEMM_KERNEL(name, NP, AK, BN)                                                                            \
    extern "C" __global__ void __launch_bounds__(lg::THREADS) name(                                                   \
        const __nv_bfloat16* __restrict__ a, int64_t lda, const __nv_bfloat16* __restrict__ b, int64_t ldb, void* c, \
        int64_t ldc_m, int64_t ldc_n, int c_f32, float alpha, float beta, int M, int N, int K, int S,                \
        float* __restrict__ partials, int* __restrict__ counters) {                                                   \
        const lg::Args p{a, lda, b, ldb, c, ldc_m, ldc_n, c_f32, alpha, beta, M, N, K, S, partials, counters};       \
        lg::gemm_body<NP, AK, BN>(p);                                                                                 \
    }

LORA_GEMM_KERNEL(lora_gemm_am_bn_n16, 16, false, true)
LORA_GEMM_KERNEL(lora_gemm_am_bn_n32, 32, false, true)
LORA_GEMM_KERNEL(lora_gemm_am_bn_n48, 48, false, true)
LORA_GEMM_KERNEL(lora_gemm_am_bn_n64, 64, false, true)
LORA_GEMM_KERNEL(lora_gemm_am_bk_n16, 16, false, false)
LORA_GEMM_KERNEL(lora_gemm_am_bk_n32, 32, false, false)
LORA_GEMM_KERNEL(lora_gemm_am_bk_n48, 48, false, false)
LORA_GEMM_KERNEL(lora_gemm_am_bk_n64, 64, false, false)
LORA_GEMM_KERNEL(lora_gemm_ak_bk_n16, 16, true, false)
LORA_GEMM_KERNEL(lora_gemm_ak_bk_n32, 32, true, false)
LORA_GEMM_KERNEL(lora_gemm_ak_bk_n48, 48, true, false)
LORA_GEMM_KERNEL(lora_gemm_ak_bk_n64, 64, true, false)
