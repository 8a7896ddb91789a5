// q4_gemm_probe.cu — step 1 of native/NOTES-fused-dequant-gemm.md: a Hopper GEMM of our own (TMA loads into a
// 4-stage ring, one producer warpgroup, two consumer warpgroups issuing wgmma.m64n256k16, mbarriers), on the
// Llama-7B step's shapes, checked against and timed beside cuBLAS (random data: the card is power-limited on GEMMs,
// so constant inputs flatter both). The 4-bit GEMM would replace its weight TMA with a dequantizing producer.
//
//   nvcc -O3 -std=c++17 -arch=sm_90a -I native -I native/bench/stub native/bench/q4_gemm_probe.cu \
//        native/bench/stub/cublas_shim.cpp -ldl -o /tmp/qg && /tmp/qg
//
// Forward (TN): Y[T, N] = X[T, K] W[N, K]^T, row-major, bf16 in / out, float32 accumulation. Tile 128 (tokens) x 256
// (output features) x 64 (k); consumer warpgroup c owns rows 64c..64c+63 of the tile. X and W tiles arrive by TMA
// with the 128-byte swizzle (the K-major layout wgmma's descriptors read); the consumers release a stage once the
// wgmma group that read it has completed (one group kept in flight).
#include "nf4.cu"   // q4_dequantize_bf16: the reference path (dequantize + cuBLAS)

#include <cuda.h>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "mbarrier.cuh"
#include "wgmma.cuh"
#include "hash_fill.cuh"

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
    fprintf(stderr, "CUDA %s at %d: %s\n", cudaGetErrorString(e_), __LINE__, #x); exit(2); } } while (0)
#define CB(x) do { cublasStatus_t s_ = (x); if (s_ != CUBLAS_STATUS_SUCCESS) { \
    fprintf(stderr, "cuBLAS %d at %d: %s\n", (int)s_, __LINE__, #x); exit(2); } } while (0)

namespace qg {

constexpr int BM = 128, BN = 256, BK = 64, STAGES = 4, THREADS = 384;
constexpr int A_BYTES = BM * BK * 2, B_BYTES = BN * BK * 2, STAGE_BYTES = A_BYTES + B_BYTES;
constexpr int SMEM_BYTES = STAGES * STAGE_BYTES + 1024 /* alignment slack */ + 2 * STAGES * 8;

__device__ __forceinline__ uint32_t saddr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// The dynamic shared memory rounded up to 1024 bytes by pointer arithmetic only: a pointer rebuilt from an integer
// loses its address space, and every access through it becomes a generic LD / ST (measured: the decode's table
// lookups and packed loads ran as LD.E, long-scoreboard stalls, 0.7x; LDS after this).
__device__ __forceinline__ uint8_t* align1024(uint8_t* p) { return p + ((1024u - (saddr(p) & 1023u)) & 1023u); }

// A 2-D box of a tensor map into shared memory; completes `bar`'s transaction bytes.
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, int c0, int c1, uint64_t* bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];"
        ::"r"(saddr(dst)), "l"((uint64_t)map), "r"(c0), "r"(c1), "r"(saddr(bar)) : "memory");
}

// d[64 x 256] (scale_d ? d : 0) + A[64 x 16] B[16 x 256]; A K-major in shared memory; B K-major (TRANS_B 0) or
// MN-major (TRANS_B 1) in shared memory. (Operand list generated: 128 accumulators.)
template <int TRANS_B>
__device__ __forceinline__ void mma_ss_n256(float (&d)[32][4], uint64_t a, uint64_t b, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, 0, %131;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3]), "+f"(d[16][0]), "+f"(d[16][1]), "+f"(d[16][2]), "+f"(d[16][3]), "+f"(d[17][0]), "+f"(d[17][1]), "+f"(d[17][2]), "+f"(d[17][3]), "+f"(d[18][0]), "+f"(d[18][1]), "+f"(d[18][2]), "+f"(d[18][3]), "+f"(d[19][0]), "+f"(d[19][1]), "+f"(d[19][2]), "+f"(d[19][3]), "+f"(d[20][0]), "+f"(d[20][1]), "+f"(d[20][2]), "+f"(d[20][3]), "+f"(d[21][0]), "+f"(d[21][1]), "+f"(d[21][2]), "+f"(d[21][3]), "+f"(d[22][0]), "+f"(d[22][1]), "+f"(d[22][2]), "+f"(d[22][3]), "+f"(d[23][0]), "+f"(d[23][1]), "+f"(d[23][2]), "+f"(d[23][3]), "+f"(d[24][0]), "+f"(d[24][1]), "+f"(d[24][2]), "+f"(d[24][3]), "+f"(d[25][0]), "+f"(d[25][1]), "+f"(d[25][2]), "+f"(d[25][3]), "+f"(d[26][0]), "+f"(d[26][1]), "+f"(d[26][2]), "+f"(d[26][3]), "+f"(d[27][0]), "+f"(d[27][1]), "+f"(d[27][2]), "+f"(d[27][3]), "+f"(d[28][0]), "+f"(d[28][1]), "+f"(d[28][2]), "+f"(d[28][3]), "+f"(d[29][0]), "+f"(d[29][1]), "+f"(d[29][2]), "+f"(d[29][3]), "+f"(d[30][0]), "+f"(d[30][1]), "+f"(d[30][2]), "+f"(d[30][3]), "+f"(d[31][0]), "+f"(d[31][1]), "+f"(d[31][2]), "+f"(d[31][3])
        : "l"(a), "l"(b), "r"(scale_d), "n"(TRANS_B));
}

__device__ __forceinline__ void zero(float (&d)[32][4]) {
#pragma unroll
    for (int j = 0; j < 32; j++) d[j][0] = d[j][1] = d[j][2] = d[j][3] = 0.f;
}

// One stage of a consumer warpgroup: d += A[64 x 64] B[64 x 256], both K-major 128-byte-swizzled tiles at shared
// addresses a and b, as one committed group of 4 k16 products.
__device__ __forceinline__ void mma_stage_ss(float (&d)[32][4], uint32_t a, uint32_t b) {
    wgmma::fence();
#pragma unroll
    for (int k16 = 0; k16 < BK / 16; k16++) {
        mma_ss_n256<0>(d, wgmma::desc_sw128(a + k16 * 32, 16, 1024), wgmma::desc_sw128(b + k16 * 32, 16, 1024), 1);
    }
    wgmma::commit();
}

// A consumer warpgroup's D [64 rows x 256 columns] as bf16 into y (row stride N) at (row0, col0): accumulator
// fragment of warp w: rows 16w + g and 16w + g + 8, columns 8j + 2t and 8j + 2t + 1.
__device__ __forceinline__ void store_rows(const float (&d)[32][4], __nv_bfloat16* y, long row0, int col0, int N) {
    const int warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    __nv_bfloat16* y0 = y + (row0 + warp * 16 + g) * N + col0 + 2 * t;
    __nv_bfloat16* y1 = y0 + 8L * N;
#pragma unroll
    for (int j = 0; j < 32; j++) {
        *reinterpret_cast<__nv_bfloat162*>(y0 + 8 * j) = __floats2bfloat162_rn(d[j][0], d[j][1]);
        *reinterpret_cast<__nv_bfloat162*>(y1 + 8 * j) = __floats2bfloat162_rn(d[j][2], d[j][3]);
    }
}

// A consumer warpgroup's D [64 features x 256 tokens] into y[token][feature] (row stride N) at (tok0, f0), through
// stg [256 tokens][64 features] in shared memory, then 128-byte rows; `bar` is the warpgroup's named barrier.
__device__ __forceinline__ void store_transposed(const float (&d)[32][4], __nv_bfloat16* stg, __nv_bfloat16* y,
                                                 long tok0, int f0, int N, int bar) {
    const int warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int f = warp * 16 + g;
#pragma unroll
    for (int j = 0; j < 32; j++) {
        const int n = 8 * j + 2 * t;
        stg[n * 64 + f] = __float2bfloat16_rn(d[j][0]);
        stg[(n + 1) * 64 + f] = __float2bfloat16_rn(d[j][1]);
        stg[n * 64 + f + 8] = __float2bfloat16_rn(d[j][2]);
        stg[(n + 1) * 64 + f + 8] = __float2bfloat16_rn(d[j][3]);
    }
    asm volatile("bar.sync %0, 128;" ::"r"(bar) : "memory");
    const int i = threadIdx.x % 128;
#pragma unroll 4
    for (int m = 0; m < 16; m++) {
        const int q = i + 128 * m, tok = q / 8, part = q % 8;
        *reinterpret_cast<uint4*>(y + (tok0 + tok) * N + f0 + part * 8) = *reinterpret_cast<const uint4*>(stg + tok * 64 + part * 8);
    }
}

// Grid: (T / BM, N / BN): consecutive blocks share one W tile (read from DRAM once, then from L2); X (T x K) stays in L2.
__global__ void __launch_bounds__(THREADS, 1) gemm_tn_bf16(const __grid_constant__ CUtensorMap tx,
                                                           const __grid_constant__ CUtensorMap tw,
                                                           __nv_bfloat16* __restrict__ y, int N, int K) {
    extern __shared__ uint8_t smem_raw[];
    uint8_t* base = align1024(smem_raw);   // swizzle atoms
    uint8_t* a_tiles = base;
    uint8_t* b_tiles = base + STAGES * A_BYTES;
    uint64_t* full = (uint64_t*)(base + STAGES * STAGE_BYTES);
    uint64_t* empty = full + STAGES;
    const int wg = threadIdx.x / 128, m0 = blockIdx.x * BM, n0 = blockIdx.y * BN, ktiles = K / BK;
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) { mbar::init(saddr(full + s), 1); mbar::init(saddr(empty + s), 2); }
        mbar::fence_init();
    }
    __syncthreads();
    if (wg == 0) {   // producer: one thread issues the TMA loads
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
        if (threadIdx.x == 0) {
            for (int kt = 0; kt < ktiles; kt++) {
                int s = kt % STAGES;
                if (kt >= STAGES) mbar::wait(saddr(empty + s), (uint32_t)((kt / STAGES - 1) & 1));
                mbar::arrive_expect_tx(saddr(full + s), STAGE_BYTES);
                tma_load_2d(a_tiles + s * A_BYTES, &tx, kt * BK, m0, full + s);
                tma_load_2d(b_tiles + s * B_BYTES, &tw, kt * BK, n0, full + s);
            }
        }
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
    const int c = wg - 1;
    float d[32][4];
    zero(d);
    for (int kt = 0; kt < ktiles; kt++) {
        int s = kt % STAGES;
        mbar::wait(saddr(full + s), (uint32_t)((kt / STAGES) & 1));
        mma_stage_ss(d, saddr(a_tiles + s * A_BYTES) + c * 64 * 128, saddr(b_tiles + s * B_BYTES));
        wgmma::wait<1>();   // the group before this one has read its stage: give it back to the producer
        if (kt > 0 && threadIdx.x % 128 == 0) mbar::arrive(saddr(empty + (kt - 1) % STAGES));
    }
    wgmma::wait<0>();
    wgmma::pin(d);
    store_rows(d, y, m0 + c * 64, n0, N);
}


// The statistics of a double-quantized NF4 weight (blocksize 64): U8 absmax codes [N * K / 64], nested absmax
// [blocks / 256] and the 256-entry nested code, the nested offset, and the 16 NF4 code values.
struct Q4Stats {
    const uint8_t* absmax_q;
    const float* nested_absmax;
    const float* nested_code;
    const float* code16;
    float offset;
};

// ---------------------------------------------------------------------------------------------------------------
// The 4-bit GEMM: the W tile is decoded from NF4 by the producer warpgroup instead of loaded as bf16.
//
// Weight layout (bitsandbytes): packed [N, K/2] bytes (value 2i in the high nibble of byte i), blocks of 64
// consecutive values of a row (blocksize 64 = BK: one block per row of a stage) with a U8 absmax code each
// (double quantization): absmax = fl(fl(nested_code[q] * nested_absmax[block / 256]) + offset); value =
// fl(code16[nibble] * absmax), rounded once to bf16: exactly what q4_dequantize_bf16 writes, so the product is
// the dequantize + GEMM product.
//
// Producer warpgroup (128 threads): thread 0 issues the TMA loads (X tiles into the stage ring, packed tiles into
// a separate PST-deep ring); every thread decodes 4 half-rows (32 values) of each stage's 256 x 64 tile into the
// 128-byte-swizzled K-major layout the consumers' descriptors read. Thread i: rows 64p + i/2 (p = 0..3), half i%2:
// a warp's 16-byte stores of one pass cover 4 rows x 2 halves of distinct swizzled chunks (no bank conflicts).
constexpr int PST = 4, P_BYTES = BN * BK / 2;
constexpr int Q4_SMEM_BYTES = STAGES * STAGE_BYTES + PST * P_BYTES + 1024 + (16 + 256) * 4 + (3 * STAGES + PST) * 8;

__device__ __forceinline__ void named_sync_producers() { asm volatile("bar.sync 1, 128;" ::: "memory"); }

__global__ void __launch_bounds__(THREADS, 1) gemm_tn_q4(const __grid_constant__ CUtensorMap tx,
                                                         const __grid_constant__ CUtensorMap tp, const Q4Stats q4,
                                                         __nv_bfloat16* __restrict__ y, int N, int K) {
    extern __shared__ uint8_t smem_raw[];
    uint8_t* base = align1024(smem_raw);
    uint8_t* x_tiles = base;                                  // [STAGES][128 x 64 bf16], swizzled (TMA)
    uint8_t* w_tiles = x_tiles + STAGES * A_BYTES;            // [STAGES][256 x 64 bf16], swizzled (decoded)
    uint8_t* p_tiles = w_tiles + STAGES * B_BYTES;            // [PST][256 x 32 bytes] packed (TMA)
    float* code16 = (float*)(p_tiles + PST * P_BYTES);        // [16]
    float* ncode = code16 + 16;                               // [256]
    uint64_t* xfull = (uint64_t*)(ncode + 256);               // X tile landed
    uint64_t* wfull = xfull + STAGES;                         // W tile decoded (128 producer arrivals)
    uint64_t* empty = wfull + STAGES;                         // both consumer warpgroups done with the stage
    uint64_t* pfull = empty + STAGES;                         // packed tile landed
    const int wg = threadIdx.x / 128, m0 = blockIdx.x * BM, n0 = blockIdx.y * BN, ktiles = K / BK;
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) { mbar::init(saddr(xfull + s), 1); mbar::init(saddr(wfull + s), 128); mbar::init(saddr(empty + s), 2); }
        for (int s = 0; s < PST; s++) mbar::init(saddr(pfull + s), 1);
        mbar::fence_init();
    }
    if (threadIdx.x < 16) code16[threadIdx.x] = q4.code16[threadIdx.x];
    for (int j = threadIdx.x; j < 256; j += THREADS) ncode[j] = q4.nested_code[j];
    __syncthreads();
    if (wg == 0) {
        const int i = threadIdx.x, h = i & 1, rr = i >> 1, kb = K / BK;
        if (i == 0) {
            for (int kt = 0; kt < PST - 1 && kt < ktiles; kt++) {
                mbar::arrive_expect_tx(saddr(pfull + kt), P_BYTES);
                tma_load_2d(p_tiles + kt * P_BYTES, &tp, kt * (BK / 2), n0, pfull + kt);
            }
        }
        // this thread's 4 rows' absmax codes and nested scales, one k-tile ahead
        long blk[4];
        uint32_t qn[4];
        float nn[4];
#pragma unroll
        for (int p = 0; p < 4; p++) {
            blk[p] = (long)(n0 + 64 * p + rr) * kb;
            qn[p] = q4.absmax_q[blk[p]];
            nn[p] = q4.nested_absmax[blk[p] >> 8];
        }
        for (int kt = 0; kt < ktiles; kt++) {
            const int s = kt % STAGES, ps = kt % PST;
            if (i == 0) {
                int kn = kt + PST - 1;
                if (kn < ktiles) {
                    mbar::arrive_expect_tx(saddr(pfull + kn % PST), P_BYTES);
                    tma_load_2d(p_tiles + (kn % PST) * P_BYTES, &tp, kn * (BK / 2), n0, pfull + kn % PST);
                }
                if (kt >= STAGES) mbar::wait(saddr(empty + s), (uint32_t)((kt / STAGES - 1) & 1));
                mbar::arrive_expect_tx(saddr(xfull + s), A_BYTES);
                tma_load_2d(x_tiles + s * A_BYTES, &tx, kt * BK, m0, xfull + s);
            }
            float a[4];
#pragma unroll
            for (int p = 0; p < 4; p++) {
                a[p] = __fadd_rn(__fmul_rn(ncode[qn[p]], nn[p]), q4.offset);
                if (kt + 1 < ktiles) { qn[p] = q4.absmax_q[blk[p] + kt + 1]; nn[p] = q4.nested_absmax[(blk[p] + kt + 1) >> 8]; }
            }
            if (kt >= STAGES) mbar::wait(saddr(empty + s), (uint32_t)((kt / STAGES - 1) & 1));
            mbar::wait(saddr(pfull + ps), (uint32_t)((kt / PST) & 1));
            const uint8_t* P = p_tiles + ps * P_BYTES;
            uint8_t* W = w_tiles + s * B_BYTES;
#pragma unroll
            for (int p = 0; p < 4; p++) {
                const int r = 64 * p + rr;
                uint4 q = *reinterpret_cast<const uint4*>(P + r * 32 + h * 16);
                const uint32_t wd[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    uint32_t o[4];
#pragma unroll
                    for (int bb = 0; bb < 4; bb++) {
                        uint32_t byte = (wd[j] >> (8 * bb)) & 0xffu;
                        __nv_bfloat162 pr = __floats2bfloat162_rn(__fmul_rn(code16[byte >> 4], a[p]),
                                                                  __fmul_rn(code16[byte & 15u], a[p]));
                        o[bb] = *reinterpret_cast<uint32_t*>(&pr);
                    }
                    const int c = h * 4 + j;
                    *reinterpret_cast<uint4*>(W + r * 128 + ((c ^ (r & 7)) << 4)) = make_uint4(o[0], o[1], o[2], o[3]);
                }
            }
            wgmma::fence_smem_for_async();   // the decoded tile is read by wgmma (async proxy)
            mbar::arrive(saddr(wfull + s));
            named_sync_producers();          // every thread is done with packed slot ps before thread 0 refills it
        }
        return;
    }
    const int c = wg - 1;
    float d[32][4];
    zero(d);
    for (int kt = 0; kt < ktiles; kt++) {
        int s = kt % STAGES;
        mbar::wait(saddr(xfull + s), (uint32_t)((kt / STAGES) & 1));
        mbar::wait(saddr(wfull + s), (uint32_t)((kt / STAGES) & 1));
        mma_stage_ss(d, saddr(x_tiles + s * A_BYTES) + c * 64 * 128, saddr(w_tiles + s * B_BYTES));
        wgmma::wait<1>();
        if (kt > 0 && threadIdx.x % 128 == 0) mbar::arrive(saddr(empty + (kt - 1) % STAGES));
    }
    wgmma::wait<0>();
    wgmma::pin(d);
    store_rows(d, y, m0 + c * 64, n0, N);
}

// d[64 x 256] += A[64 x 16] B[16 x 256]; A in registers (the mma.sync m16n8k16 A fragment of each warp's 16 rows),
// B K-major in shared memory. (Operand list generated: 128 accumulators.)
__device__ __forceinline__ void mma_rs_n256(float (&d)[32][4], const uint32_t (&a)[4], uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, {%128, %129, %130, %131}, %132, p, 1, 1, 0;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3]), "+f"(d[16][0]), "+f"(d[16][1]), "+f"(d[16][2]), "+f"(d[16][3]), "+f"(d[17][0]), "+f"(d[17][1]), "+f"(d[17][2]), "+f"(d[17][3]), "+f"(d[18][0]), "+f"(d[18][1]), "+f"(d[18][2]), "+f"(d[18][3]), "+f"(d[19][0]), "+f"(d[19][1]), "+f"(d[19][2]), "+f"(d[19][3]), "+f"(d[20][0]), "+f"(d[20][1]), "+f"(d[20][2]), "+f"(d[20][3]), "+f"(d[21][0]), "+f"(d[21][1]), "+f"(d[21][2]), "+f"(d[21][3]), "+f"(d[22][0]), "+f"(d[22][1]), "+f"(d[22][2]), "+f"(d[22][3]), "+f"(d[23][0]), "+f"(d[23][1]), "+f"(d[23][2]), "+f"(d[23][3]), "+f"(d[24][0]), "+f"(d[24][1]), "+f"(d[24][2]), "+f"(d[24][3]), "+f"(d[25][0]), "+f"(d[25][1]), "+f"(d[25][2]), "+f"(d[25][3]), "+f"(d[26][0]), "+f"(d[26][1]), "+f"(d[26][2]), "+f"(d[26][3]), "+f"(d[27][0]), "+f"(d[27][1]), "+f"(d[27][2]), "+f"(d[27][3]), "+f"(d[28][0]), "+f"(d[28][1]), "+f"(d[28][2]), "+f"(d[28][3]), "+f"(d[29][0]), "+f"(d[29][1]), "+f"(d[29][2]), "+f"(d[29][3]), "+f"(d[30][0]), "+f"(d[30][1]), "+f"(d[30][2]), "+f"(d[30][3]), "+f"(d[31][0]), "+f"(d[31][1]), "+f"(d[31][2]), "+f"(d[31][3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

// ---------------------------------------------------------------------------------------------------------------
// The 4-bit GEMM, register-A form (mixed-input GEMMs on Hopper: the quantized operand decoded in registers). The
// weight tile is wgmma's A operand, decoded by the consumer warps themselves straight into A fragments (no decoded
// tile in shared memory: the producer-decode version above spends its shared-memory bandwidth on table lookups,
// stores and wgmma reads of the decoded tile and runs at a third of cuBLAS); the tokens are the N side, so each
// decoded value feeds 256 tokens instead of 128. D[128 features x 256 tokens] per block: consumer warpgroup c owns
// features 64c..64c+63 (warp w: 16w..16w+15, rows g and g + 8 of its A fragments). X [256 tokens x 64] arrives by TMA
// (128-byte swizzle, K-major: wgmma's B as is) together with the stage's packed bytes [128 features x 32 bytes].
// A fragment of k16 step kk: (row g, k 2t..2t+1) = byte 8kk + t of the row's stage bytes, (row g, k 2t+8..) = byte
// 8kk + t + 4; the same for row g + 8. The epilogue transposes D through shared memory into Y[token][feature].
constexpr int RS_BM = 128, RS_BN = 256, RS_STAGES = 4;
constexpr int RS_X_BYTES = RS_BN * BK * 2, RS_P_BYTES = RS_BM * BK / 2, RS_STAGE_BYTES = RS_X_BYTES + RS_P_BYTES;
constexpr int RS_EPI_BYTES = 2 * 64 * RS_BN * 2;
constexpr int RS_TAB_BYTES = 8 * 16 * 32;   // per warp: 16 feature rows x 16 bf16 products (QG_DECODE 3)
constexpr int RS_SMEM_BYTES = RS_STAGES * RS_STAGE_BYTES + RS_EPI_BYTES + RS_TAB_BYTES + 1024 + (16 + 256) * 4 + 2 * RS_STAGES * 8;

#ifndef QG_DECODE
#define QG_DECODE 2   // 3: the exact decode through a per-row product table; 2: the exact decode per value; 1: no table (nibble as a float, for timing only); 0: no decode (timing only)
#endif
__device__ __forceinline__ uint32_t decode_pair(uint32_t byte, float a, const float* code16) {
#if QG_DECODE >= 2
    __nv_bfloat162 pr = __floats2bfloat162_rn(__fmul_rn(code16[(byte >> 4) & 15u], a), __fmul_rn(code16[byte & 15u], a));
#elif QG_DECODE == 1
    const float hi = __uint_as_float(0x4B000000u | ((byte >> 4) & 15u)) - 8388608.f;
    const float lo = __uint_as_float(0x4B000000u | (byte & 15u)) - 8388608.f;
    __nv_bfloat162 pr = __floats2bfloat162_rn(__fmul_rn(hi, a), __fmul_rn(lo, a));
#endif
#if QG_DECODE == 0
    return (byte & 0x3f3f3f3fu) | 0x3c003c00u;
#else
    return *reinterpret_cast<uint32_t*>(&pr);
#endif
}

#if QG_DECODE == 3
// The 16 products bf16(code[k] * absmax) of one feature row and stage, 32 bytes in the warp's table: each value
// is then one 2-byte lookup (two lookups and a byte permute per A register) instead of a multiply and a conversion.
__device__ __forceinline__ uint32_t lookup_pair(const uint8_t* trow, uint32_t byte) {
    const uint32_t hi = *reinterpret_cast<const uint16_t*>(trow + ((byte >> 3) & 0x1eu));
    const uint32_t lo = *reinterpret_cast<const uint16_t*>(trow + ((byte << 1) & 0x1eu));
    return __byte_perm(hi, lo, 0x5410);
}
#endif

// A fragments of one stage: rows lr and lr + 8 of the stage's packed tile, this lane's byte t of every word.
__device__ __forceinline__ void decode_a(const uint8_t* P, int lr, int t, float a0, float a1, const float* code16,
                                         uint32_t (&A)[4][4], uint8_t* wtab, const float (&c4)[4]) {
    const uint4* p0 = reinterpret_cast<const uint4*>(P + lr * 32);
    const uint4* p1 = reinterpret_cast<const uint4*>(P + (lr + 8) * 32);
    const uint4 x0 = p0[0], x1 = p0[1], y0 = p1[0], y1 = p1[1];
    const uint32_t r0[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
    const uint32_t r1[8] = {y0.x, y0.y, y0.z, y0.w, y1.x, y1.y, y1.z, y1.w};
    const int sh = 8 * t;
#if QG_DECODE == 3
    const int g = lr & 7;   // rows lr, lr + 8 are the warp's rows g, g + 8
    uint8_t* t0 = wtab + g * 32;
    uint8_t* t1 = wtab + (g + 8) * 32;
    __syncwarp();   // the previous stage's lookups are done
    {
        __nv_bfloat162 p0 = __floats2bfloat162_rn(__fmul_rn(c4[0], a0), __fmul_rn(c4[1], a0));
        __nv_bfloat162 p1 = __floats2bfloat162_rn(__fmul_rn(c4[2], a0), __fmul_rn(c4[3], a0));
        __nv_bfloat162 q0 = __floats2bfloat162_rn(__fmul_rn(c4[0], a1), __fmul_rn(c4[1], a1));
        __nv_bfloat162 q1 = __floats2bfloat162_rn(__fmul_rn(c4[2], a1), __fmul_rn(c4[3], a1));
        *reinterpret_cast<uint2*>(t0 + 8 * t) = make_uint2(*reinterpret_cast<uint32_t*>(&p0), *reinterpret_cast<uint32_t*>(&p1));
        *reinterpret_cast<uint2*>(t1 + 8 * t) = make_uint2(*reinterpret_cast<uint32_t*>(&q0), *reinterpret_cast<uint32_t*>(&q1));
    }
    __syncwarp();
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
        A[kk][0] = lookup_pair(t0, r0[2 * kk] >> sh);
        A[kk][1] = lookup_pair(t1, r1[2 * kk] >> sh);
        A[kk][2] = lookup_pair(t0, r0[2 * kk + 1] >> sh);
        A[kk][3] = lookup_pair(t1, r1[2 * kk + 1] >> sh);
    }
    return;
#endif
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
        A[kk][0] = decode_pair(r0[2 * kk] >> sh, a0, code16);
        A[kk][1] = decode_pair(r1[2 * kk] >> sh, a1, code16);
        A[kk][2] = decode_pair(r0[2 * kk + 1] >> sh, a0, code16);
        A[kk][3] = decode_pair(r1[2 * kk + 1] >> sh, a1, code16);
    }
}

// Keeps a register operand alive (and unmoved) up to this point: wgmma reads register A operands asynchronously.
__device__ __forceinline__ void keep(uint32_t (&A)[4][4]) {
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) asm volatile("" : "+r"(A[i][j])::"memory");
}

struct RsState {
    const uint8_t* absmax_q; const float* nested_absmax; const float* ncode; const float* code16; float offset;
    long blk0, blk1;    // first absmax block of this lane's two feature rows
    uint32_t q0, q1;    // their absmax codes for the next stage to decode
    float s0, s1;       // and nested scales
    __device__ __forceinline__ void fetch(int kt) {
        q0 = absmax_q[blk0 + kt]; q1 = absmax_q[blk1 + kt];
        s0 = nested_absmax[(blk0 + kt) >> 8]; s1 = nested_absmax[(blk1 + kt) >> 8];
    }
    __device__ __forceinline__ float absmax0() const { return __fadd_rn(__fmul_rn(ncode[q0], s0), offset); }
    __device__ __forceinline__ float absmax1() const { return __fadd_rn(__fmul_rn(ncode[q1], s1), offset); }
};

__global__ void __launch_bounds__(THREADS, 1) gemm_q4_rs(const __grid_constant__ CUtensorMap tx,
                                                         const __grid_constant__ CUtensorMap tp, const Q4Stats q4,
                                                         __nv_bfloat16* __restrict__ y, int N, int K) {
    extern __shared__ uint8_t smem_raw[];
    uint8_t* base = align1024(smem_raw);
    uint8_t* stages = base;                                              // [S][X 256 x 64 bf16 | packed 128 x 32]
    __nv_bfloat16* epi = (__nv_bfloat16*)(base + RS_STAGES * RS_STAGE_BYTES);   // [2][256 tokens][64 features]
    uint8_t* tabs = (uint8_t*)epi + RS_EPI_BYTES;
    float* code16 = (float*)(tabs + RS_TAB_BYTES);
    float* ncode = code16 + 16;
    uint64_t* full = (uint64_t*)(ncode + 256);
    uint64_t* empty = full + RS_STAGES;
    const int wg = threadIdx.x / 128, t0 = blockIdx.x * RS_BN, f0 = blockIdx.y * RS_BM, ktiles = K / BK;
    if (threadIdx.x == 0) {
        for (int s = 0; s < RS_STAGES; s++) { mbar::init(saddr(full + s), 1); mbar::init(saddr(empty + s), 8); }
        mbar::fence_init();
    }
    if (threadIdx.x < 16) code16[threadIdx.x] = q4.code16[threadIdx.x];
    for (int j = threadIdx.x; j < 256; j += THREADS) ncode[j] = q4.nested_code[j];
    __syncthreads();
    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
        if (threadIdx.x == 0) {
            for (int kt = 0; kt < ktiles; kt++) {
                int s = kt % RS_STAGES;
                if (kt >= RS_STAGES) mbar::wait(saddr(empty + s), (uint32_t)((kt / RS_STAGES - 1) & 1));
                uint8_t* st = stages + s * RS_STAGE_BYTES;
                mbar::arrive_expect_tx(saddr(full + s), RS_STAGE_BYTES);
                tma_load_2d(st, &tx, kt * BK, t0, full + s);
                tma_load_2d(st + RS_X_BYTES, &tp, kt * (BK / 2), f0, full + s);
            }
        }
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
    const int c = wg - 1, warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int lr = c * 64 + warp * 16 + g;    // this lane's first feature row in the tile (and lr + 8)
    RsState st{q4.absmax_q, q4.nested_absmax, ncode, code16, q4.offset, (long)(f0 + lr) * (K / BK), (long)(f0 + lr + 8) * (K / BK)};
    st.fetch(0);
    uint8_t* wtab = tabs + (c * 4 + warp) * 512;
    const float c4[4] = {code16[4 * t], code16[4 * t + 1], code16[4 * t + 2], code16[4 * t + 3]};
    float d[32][4];
    zero(d);
#ifndef QG_RS_PINGPONG
#define QG_RS_PINGPONG 1   // 1: one fragment buffer, the two warpgroups interleave; 0: double-buffered fragments
#endif
#if QG_RS_PINGPONG
    // one fragment buffer: each warpgroup decodes, then multiplies and waits; the two warpgroups' products interleave
    uint32_t A[4][4];
#if QG_RS_PINGPONG == 2
    if (c == 1) asm volatile("bar.arrive 4, 256;" ::: "memory");   // warpgroup 0 takes the first turn
#endif
    for (int kt = 0; kt < ktiles; kt++) {
        const int s = kt % RS_STAGES;
        mbar::wait(saddr(full + s), (uint32_t)((kt / RS_STAGES) & 1));
        const float a0 = st.absmax0(), a1 = st.absmax1();
        if (kt + 1 < ktiles) st.fetch(kt + 1);
        decode_a(stages + s * RS_STAGE_BYTES + RS_X_BYTES, lr, t, a0, a1, code16, A, wtab, c4);
        const uint32_t xb = saddr(stages + s * RS_STAGE_BYTES);
#if QG_RS_PINGPONG == 2
        // explicit turns (named barriers 4 + c): the warpgroups' products alternate on the tensor cores, so one
        // warpgroup decodes while the other's product runs (left alone, both decode at once, then both multiply)
        asm volatile("bar.sync %0, 256;" ::"r"(4 + c) : "memory");
#endif
        wgmma::fence();
#pragma unroll
        for (int kk = 0; kk < 4; kk++) mma_rs_n256(d, A[kk], wgmma::desc_sw128(xb + kk * 32, 16, 1024));
        wgmma::commit();
#if QG_RS_PINGPONG == 2
        asm volatile("bar.arrive %0, 256;" ::"r"(5 - c) : "memory");
#endif
        wgmma::wait<0>();
        keep(A);
        if (lane == 0) mbar::arrive(saddr(empty + s));
    }
#else
    uint32_t A0[4][4], A1[4][4];
    mbar::wait(saddr(full), 0);
    decode_a(stages + RS_X_BYTES, lr, t, st.absmax0(), st.absmax1(), code16, A0, wtab, c4);
    if (ktiles > 1) st.fetch(1);
    // one step: wgmma of stage kt with Acur, then (while it runs) the next stage's fragments into Anext
    auto step = [&](int kt, uint32_t (&Acur)[4][4], uint32_t (&Anext)[4][4]) {
        const int s = kt % RS_STAGES;
        const uint32_t xb = saddr(stages + s * RS_STAGE_BYTES);
        wgmma::fence();
#pragma unroll
        for (int kk = 0; kk < 4; kk++) mma_rs_n256(d, Acur[kk], wgmma::desc_sw128(xb + kk * 32, 16, 1024));
        wgmma::commit();
        wgmma::wait<1>();   // stage kt - 1's product is done: its X slot and Anext's registers are free
        keep(Anext);
        if (kt > 0 && lane == 0) mbar::arrive(saddr(empty + (kt - 1) % RS_STAGES));
        if (kt + 1 < ktiles) {
            const int s1 = (kt + 1) % RS_STAGES;
            mbar::wait(saddr(full + s1), (uint32_t)(((kt + 1) / RS_STAGES) & 1));
            const float a0 = st.absmax0(), a1 = st.absmax1();
            if (kt + 2 < ktiles) st.fetch(kt + 2);
            decode_a(stages + s1 * RS_STAGE_BYTES + RS_X_BYTES, lr, t, a0, a1, code16, Anext, wtab, c4);
        }
    };
    for (int kt = 0; kt < ktiles; kt += 2) {
        step(kt, A0, A1);
        if (kt + 1 < ktiles) step(kt + 1, A1, A0);
    }
#endif
    wgmma::wait<0>();
    wgmma::pin(d);
    store_transposed(d, epi + c * 64 * RS_BN, y, t0, f0 + c * 64, N, 2 + c);
}

// ---------------------------------------------------------------------------------------------------------------
// The 4-bit GEMM, shared-A form: the producer warpgroup decodes a 64-feature x 64 tile of W into shared memory
// (wgmma's A operand, K-major, 128-byte swizzle) and both consumer warpgroups multiply it, each by its own 256
// tokens of X: 512 tokens per decoded value (the register-A form gets 256: each warpgroup decodes its own A), and
// the decode runs on warps that otherwise only issue TMA. D[64 features x 256 tokens] per consumer warpgroup; the
// epilogue transposes it through shared memory into Y[token][feature].
constexpr int SS_BM = 64, SS_BN = 512, SS_STAGES = 3;
constexpr int SS_X_BYTES = SS_BN * BK * 2, SS_A_BYTES = SS_BM * BK * 2, SS_P_BYTES = SS_BM * BK / 2;
constexpr int SS_SMEM_BYTES = SS_STAGES * (SS_X_BYTES + SS_A_BYTES + SS_P_BYTES) + 1024 + (16 + 256) * 4 + 3 * SS_STAGES * 8;

__global__ void __launch_bounds__(THREADS, 1) gemm_q4_ss(const __grid_constant__ CUtensorMap tx,
                                                         const __grid_constant__ CUtensorMap tp, const Q4Stats q4,
                                                         __nv_bfloat16* __restrict__ y, int N, int K) {
    extern __shared__ uint8_t smem_raw[];
    uint8_t* base = align1024(smem_raw);
    uint8_t* x_tiles = base;                                   // [S][512 tokens x 64] (two 256-row TMA boxes)
    uint8_t* a_tiles = x_tiles + SS_STAGES * SS_X_BYTES;       // [S][64 features x 64] decoded, swizzled
    uint8_t* p_tiles = a_tiles + SS_STAGES * SS_A_BYTES;       // [S][64 x 32 bytes] packed
    float* code16 = (float*)(p_tiles + SS_STAGES * SS_P_BYTES);
    float* ncode = code16 + 16;
    uint64_t* xfull = (uint64_t*)(ncode + 256);                // X and packed bytes landed (TMA)
    uint64_t* afull = xfull + SS_STAGES;                       // A decoded (128 producer threads)
    uint64_t* empty = afull + SS_STAGES;                       // consumers done with the stage (8 warps)
    const int wg = threadIdx.x / 128, f0 = blockIdx.x * SS_BM, t0 = blockIdx.y * SS_BN, ktiles = K / BK;
    if (threadIdx.x == 0) {
        for (int s = 0; s < SS_STAGES; s++) { mbar::init(saddr(xfull + s), 1); mbar::init(saddr(afull + s), 128); mbar::init(saddr(empty + s), 8); }
        mbar::fence_init();
    }
    if (threadIdx.x < 16) code16[threadIdx.x] = q4.code16[threadIdx.x];
    for (int j = threadIdx.x; j < 256; j += THREADS) ncode[j] = q4.nested_code[j];
    __syncthreads();
    if (wg == 0) {
        const int i = threadIdx.x, r = i >> 1, h = i & 1;
        auto issue = [&](int kt) {   // thread 0: stage kt's X (two boxes) and packed bytes
            const int s = kt % SS_STAGES;
            if (kt >= SS_STAGES) mbar::wait(saddr(empty + s), (uint32_t)((kt / SS_STAGES - 1) & 1));
            mbar::arrive_expect_tx(saddr(xfull + s), SS_X_BYTES + SS_P_BYTES);
            tma_load_2d(x_tiles + s * SS_X_BYTES, &tx, kt * BK, t0, xfull + s);
            tma_load_2d(x_tiles + s * SS_X_BYTES + SS_X_BYTES / 2, &tx, kt * BK, t0 + SS_BN / 2, xfull + s);
            tma_load_2d(p_tiles + s * SS_P_BYTES, &tp, kt * (BK / 2), f0, xfull + s);
        };
        if (i == 0) for (int kt = 0; kt < SS_STAGES - 1 && kt < ktiles; kt++) issue(kt);
        const long blk = (long)(f0 + r) * (K / BK);
        uint32_t q = q4.absmax_q[blk];
        float ns = q4.nested_absmax[blk >> 8];
        for (int kt = 0; kt < ktiles; kt++) {
            const int s = kt % SS_STAGES;
            const float a = __fadd_rn(__fmul_rn(ncode[q], ns), q4.offset);
            if (kt + 1 < ktiles) { q = q4.absmax_q[blk + kt + 1]; ns = q4.nested_absmax[(blk + kt + 1) >> 8]; }
            mbar::wait(saddr(xfull + s), (uint32_t)((kt / SS_STAGES) & 1));   // (A[s] is free: its TMA waited for empty[s])
            const uint4 pk = *reinterpret_cast<const uint4*>(p_tiles + s * SS_P_BYTES + r * 32 + h * 16);
            const uint32_t wd[4] = {pk.x, pk.y, pk.z, pk.w};
            uint8_t* A = a_tiles + s * SS_A_BYTES;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                uint32_t o[4];
#pragma unroll
                for (int bb = 0; bb < 4; bb++) o[bb] = decode_pair(wd[j] >> (8 * bb), a, code16);
                const int c = h * 4 + j;
                *reinterpret_cast<uint4*>(A + r * 128 + ((c ^ (r & 7)) << 4)) = make_uint4(o[0], o[1], o[2], o[3]);
            }
            wgmma::fence_smem_for_async();
            mbar::arrive(saddr(afull + s));
            // after this stage's decode: the refill waits for the consumers to release stage kt - 1, which they do
            // only once this stage is decoded (issuing it before the decode deadlocks)
            if (i == 0 && kt + SS_STAGES - 1 < ktiles) issue(kt + SS_STAGES - 1);
        }
        return;
    }
    const int c = wg - 1, lane = threadIdx.x % 32;
    float d[32][4];
    zero(d);
    for (int kt = 0; kt < ktiles; kt++) {
        const int s = kt % SS_STAGES;
        mbar::wait(saddr(xfull + s), (uint32_t)((kt / SS_STAGES) & 1));
        mbar::wait(saddr(afull + s), (uint32_t)((kt / SS_STAGES) & 1));
        mma_stage_ss(d, saddr(a_tiles + s * SS_A_BYTES), saddr(x_tiles + s * SS_X_BYTES + c * (SS_X_BYTES / 2)));
        wgmma::wait<1>();
        if (kt > 0 && lane == 0) mbar::arrive(saddr(empty + (kt - 1) % SS_STAGES));
    }
    wgmma::wait<0>();
    wgmma::pin(d);
    asm volatile("bar.sync 2, 256;" ::: "memory");   // both consumer warpgroups are done reading the stages
    // staging: this warpgroup's half of stage 0's X tile
    store_transposed(d, reinterpret_cast<__nv_bfloat16*>(x_tiles + c * (SS_X_BYTES / 2)), y, t0 + c * 256, f0, N, 3 + c);
}

}  // namespace qg

// ---------------------------------------------------------------------------------------------------------------
// host

typedef CUresult (*EncodeTiled)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// A row-major bf16 matrix [rows, cols] read in boxes of box_rows x 64 columns, 128-byte swizzled.
static CUtensorMap tensor_map(EncodeTiled encode, const void* p, int rows, int cols, int box_rows) {
    CUtensorMap m;
    cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows}, strides[1] = {(cuuint64_t)cols * 2};
    cuuint32_t box[2] = {64, (cuuint32_t)box_rows}, estr[2] = {1, 1};
    CUresult r = encode(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(p), dims, strides, box, estr,
                        CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) { fprintf(stderr, "cuTensorMapEncodeTiled: %d\n", (int)r); exit(2); }
    return m;
}

// The packed 4-bit weight [rows, bytes_per_row] read in boxes of 256 rows x 32 bytes (one stage), no swizzle.
static CUtensorMap packed_map(EncodeTiled encode, const void* p, int rows, int bytes_per_row, int box_rows = 256) {
    CUtensorMap m;
    cuuint64_t dims[2] = {(cuuint64_t)bytes_per_row, (cuuint64_t)rows}, strides[1] = {(cuuint64_t)bytes_per_row};
    cuuint32_t box[2] = {32, (cuuint32_t)box_rows}, estr[2] = {1, 1};
    CUresult r = encode(&m, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<void*>(p), dims, strides, box, estr,
                        CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) { fprintf(stderr, "cuTensorMapEncodeTiled (packed): %d\n", (int)r); exit(2); }
    return m;
}

struct Shape { const char* name; int T, N, K; };

int main() {
    EncodeTiled encode = nullptr;
    cudaDriverEntryPointQueryResult q;
    CK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", (void**)&encode, 12000, cudaEnableDefault, &q));
    if (!encode) { fprintf(stderr, "no cuTensorMapEncodeTiled\n"); return 2; }
    CK(cudaFuncSetAttribute(qg::gemm_tn_bf16, cudaFuncAttributeMaxDynamicSharedMemorySize, qg::SMEM_BYTES));
    CK(cudaFuncSetAttribute(qg::gemm_tn_q4, cudaFuncAttributeMaxDynamicSharedMemorySize, qg::Q4_SMEM_BYTES));
    CK(cudaFuncSetAttribute(qg::gemm_q4_rs, cudaFuncAttributeMaxDynamicSharedMemorySize, qg::RS_SMEM_BYTES));
    CK(cudaFuncSetAttribute(qg::gemm_q4_ss, cudaFuncAttributeMaxDynamicSharedMemorySize, qg::SS_SMEM_BYTES));
    cublasHandle_t h;
    CB(cublasCreate(&h));
    CB(cublasSetMathMode(h, (cublasMath_t)(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
    const Shape shapes[] = {{"q/k/v/o fwd 2048x4096x4096", 2048, 4096, 4096}, {"gate/up fwd 2048x11008x4096", 2048, 11008, 4096},
                            {"down fwd 2048x4096x11008", 2048, 4096, 11008}};
    bool ok = true;
    for (const Shape& s : shapes) {
        __nv_bfloat16 *x, *w, *y, *yref;
        CK(cudaMalloc(&x, (size_t)s.T * s.K * 2)); CK(cudaMalloc(&w, (size_t)s.N * s.K * 2));
        CK(cudaMalloc(&y, (size_t)s.T * s.N * 2)); CK(cudaMalloc(&yref, (size_t)s.T * s.N * 2));
        fill_bf16<<<1024, 256>>>(x, (size_t)s.T * s.K, 1);
        fill_bf16<<<1024, 256>>>(w, (size_t)s.N * s.K, 2);
        CK(cudaMemset(y, 0xFF, (size_t)s.T * s.N * 2));   // poisoned
        CUtensorMap tx = tensor_map(encode, x, s.T, s.K, qg::BM), tw = tensor_map(encode, w, s.N, s.K, qg::BN);
        float one = 1.f, zero = 0.f;
        auto ours = [&]() {
            qg::gemm_tn_bf16<<<dim3(s.T / qg::BM, s.N / qg::BN), qg::THREADS, qg::SMEM_BYTES>>>(tx, tw, y, s.N, s.K);
        };
        auto theirs = [&]() {
            CB(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, s.N, s.T, s.K, &one, w, CUDA_R_16BF, s.K, x, CUDA_R_16BF, s.K,
                            &zero, yref, CUDA_R_16BF, s.N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        };
        ours(); theirs();
        CK(cudaGetLastError());
        CK(cudaDeviceSynchronize());
        std::vector<__nv_bfloat16> a((size_t)s.T * s.N), b((size_t)s.T * s.N);
        CK(cudaMemcpy(a.data(), y, a.size() * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(b.data(), yref, b.size() * 2, cudaMemcpyDeviceToHost));
        double maxd = 0, maxref = 0; size_t bad = 0;
        for (size_t i = 0; i < a.size(); i++) {
            double u = __bfloat162float(a[i]), v = __bfloat162float(b[i]);
            double dd = std::fabs(u - v);
            if (!(dd <= 0.02 * std::fabs(v) + 0.25)) bad++;   // bf16 output rounding (2^-8 relative) + summation order
            maxd = std::max(maxd, std::isnan(dd) ? 1e30 : dd); maxref = std::max(maxref, std::fabs(v));
        }
        printf("%-30s check: max |ours - cuBLAS| %.4g (max |y| %.4g), %zu outside tolerance\n", s.name, maxd, maxref, bad);
        ok &= bad == 0;
        auto timeit = [&](auto f) {
            for (int i = 0; i < 3; i++) f();
            std::vector<float> r;
            for (int round = 0; round < 7; round++) {
                CK(cudaEventRecord(e0)); for (int i = 0; i < 20; i++) f(); CK(cudaEventRecord(e1));
                CK(cudaEventSynchronize(e1)); float ms; CK(cudaEventElapsedTime(&ms, e0, e1)); r.push_back(ms / 20);
            }
            std::sort(r.begin(), r.end());
            return r[3] * 1e3;
        };
        double fl = 2.0 * s.T * s.N * s.K;
        for (int round = 0; round < 2; round++) {
            float to = timeit(ours), tc = timeit(theirs);
            printf("%-30s ours %.1f us (%.0f TF/s) | cuBLAS %.1f us (%.0f TF/s) | ours/cuBLAS speed %.3f\n", s.name, to,
                   fl / to / 1e6, tc, fl / tc / 1e6, tc / to);
        }
        // ---- the 4-bit GEMM against dequantize + cuBLAS (random packed bytes and absmax codes, NF4, nested)
        {
            long n = (long)s.N * s.K, blocks = n / 64;
            uint8_t *packed, *aq; float *nabs, *ncode, *code16;
            CK(cudaMalloc(&packed, n / 2)); CK(cudaMalloc(&aq, blocks));
            CK(cudaMalloc(&nabs, (blocks / 256 + 1) * 4)); CK(cudaMalloc(&ncode, 1024)); CK(cudaMalloc(&code16, 64));
            fill_u8<<<1024, 256>>>(packed, n / 2, 11); fill_u8<<<1024, 256>>>(aq, blocks, 12);
            std::vector<float> hn(blocks / 256 + 1), hc(256);
            for (size_t i = 0; i < hn.size(); i++) hn[i] = 0.01f + 0.04f * ((i * 7919) % 1000) / 1000.f;
            for (int i = 0; i < 256; i++) hc[i] = (i - 127.5f) / 128.f;
            const float nf4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                                   -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                                   0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
                                   0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
            CK(cudaMemcpy(nabs, hn.data(), hn.size() * 4, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(ncode, hc.data(), 1024, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(code16, nf4, 64, cudaMemcpyHostToDevice));
            const float offset = 0.0271f;
            CUtensorMap tp = packed_map(encode, packed, s.N, s.K / 2);
            const qg::Q4Stats q4s{aq, nabs, ncode, code16, offset};
            auto fused = [&]() {
                qg::gemm_tn_q4<<<dim3(s.T / qg::BM, s.N / qg::BN), qg::THREADS, qg::Q4_SMEM_BYTES>>>(
                    tx, tp, q4s, y, s.N, s.K);
            };
            CUtensorMap tp128 = packed_map(encode, packed, s.N, s.K / 2, qg::RS_BM);
            CUtensorMap tx256 = tensor_map(encode, x, s.T, s.K, qg::RS_BN);
            auto fused_rs = [&]() {
                qg::gemm_q4_rs<<<dim3(s.T / qg::RS_BN, s.N / qg::RS_BM), qg::THREADS, qg::RS_SMEM_BYTES>>>(
                    tx256, tp128, q4s, y, s.N, s.K);
            };
            CUtensorMap tp64 = packed_map(encode, packed, s.N, s.K / 2, qg::SS_BM);
            auto fused_ss = [&]() {
                qg::gemm_q4_ss<<<dim3(s.N / qg::SS_BM, s.T / qg::SS_BN), qg::THREADS, qg::SS_SMEM_BYTES>>>(
                    tx256, tp64, q4s, y, s.N, s.K);
            };
            auto dq = [&]() {
                q4_dequantize_bf16<<<(int)((n + 16383) / 16384), DQ_THREADS>>>(packed, aq, nabs, ncode, offset, 6, 256, 8, 1,
                                                                               code16, w, n, 1);
            };
            auto dq_gemm = [&]() { dq(); theirs(); };
            // the reference once, then each 4-bit kernel into the poisoned y, compared bit for bit
            dq_gemm();
            CK(cudaDeviceSynchronize());
            CK(cudaMemcpy(b.data(), yref, b.size() * 2, cudaMemcpyDeviceToHost));
            auto check = [&](const char* what, auto launch) {
                CK(cudaMemset(y, 0xFF, (size_t)s.T * s.N * 2));
                launch();
                CK(cudaGetLastError());
                CK(cudaDeviceSynchronize());
                CK(cudaMemcpy(a.data(), y, a.size() * 2, cudaMemcpyDeviceToHost));
                size_t diff = 0, bad4 = 0;
                double md = 0;
                for (size_t i = 0; i < a.size(); i++) {
                    uint16_t u, v;
                    memcpy(&u, &a[i], 2); memcpy(&v, &b[i], 2);
                    diff += u != v;
                    double dd = std::fabs((double)__bfloat162float(a[i]) - __bfloat162float(b[i]));
                    if (!(dd <= 0.02 * std::fabs((double)__bfloat162float(b[i])) + 0.05)) bad4++;
                    md = std::max(md, std::isnan(dd) ? 1e30 : dd);
                }
                printf("%-30s %s check: %zu of %zu outputs differ in bits from dequantize + cuBLAS (max %.3g), %zu outside tolerance\n",
                       s.name, what, diff, a.size(), md, bad4);
                ok &= bad4 == 0;
            };
            check("4-bit (producer decode)", fused);
            check("4-bit (register A)", fused_rs);
            check("4-bit (shared A)", fused_ss);
            for (int round = 0; round < 2; round++) {
                float tf = round == 0 ? timeit(fused) : 0, tr = timeit(fused_rs), tsa = timeit(fused_ss), tdg = timeit(dq_gemm),
                      td = timeit(dq), tc = timeit(theirs);
                printf("%-30s 4-bit shared-A %.1f us (%.0f TF/s), register-A %.1f, producer-decode %.1f | dequantize + cuBLAS %.1f us (dequantize %.1f, cuBLAS %.1f) | speedup shared-A %.3f, register-A %.3f\n",
                       s.name, tsa, fl / tsa / 1e6, tr, tf, tdg, td, tc, tdg / tsa, tdg / tr);
            }
            CK(cudaFree(packed)); CK(cudaFree(aq)); CK(cudaFree(nabs)); CK(cudaFree(ncode)); CK(cudaFree(code16));
        }
        CK(cudaFree(x)); CK(cudaFree(w)); CK(cudaFree(y)); CK(cudaFree(yref));
    }
    printf(ok ? "ALL CHECKS PASSED\n" : "CHECKS FAILED\n");
    return ok ? 0 : 1;
}
