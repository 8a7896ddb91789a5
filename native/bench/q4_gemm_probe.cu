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
#include <cuda.h>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "wgmma.cuh"

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
    fprintf(stderr, "CUDA %s at %d: %s\n", cudaGetErrorString(e_), __LINE__, #x); exit(2); } } while (0)
#define CB(x) do { cublasStatus_t s_ = (x); if (s_ != CUBLAS_STATUS_SUCCESS) { \
    fprintf(stderr, "cuBLAS %d at %d: %s\n", (int)s_, __LINE__, #x); exit(2); } } while (0)

namespace qg {

constexpr int BM = 128, BN = 256, BK = 64, STAGES = 4, THREADS = 384;
constexpr int A_BYTES = BM * BK * 2, B_BYTES = BN * BK * 2, STAGE_BYTES = A_BYTES + B_BYTES;
constexpr int SMEM_BYTES = STAGES * STAGE_BYTES + 1024 /* alignment slack */ + 2 * STAGES * 8;

__device__ __forceinline__ uint32_t saddr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(uint64_t* b, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(saddr(b)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* b) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(saddr(b)) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* b, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(saddr(b)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* b, uint32_t parity) {
    asm volatile(
        "{\n.reg .pred done;\nQG_WAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra QG_WAIT;\n}\n" ::"r"(saddr(b)), "r"(parity) : "memory");
}
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

// Grid: (T / BM, N / BN): consecutive blocks share one W tile (read from DRAM once, then from L2); X (T x K) stays in L2.
__global__ void __launch_bounds__(THREADS, 1) gemm_tn_bf16(const __grid_constant__ CUtensorMap tx,
                                                           const __grid_constant__ CUtensorMap tw,
                                                           __nv_bfloat16* __restrict__ y, int N, int K) {
    extern __shared__ uint8_t smem_raw[];
    uint8_t* base = (uint8_t*)(((uintptr_t)smem_raw + 1023) & ~(uintptr_t)1023);   // 1024-aligned: swizzle atoms
    uint8_t* a_tiles = base;
    uint8_t* b_tiles = base + STAGES * A_BYTES;
    uint64_t* full = (uint64_t*)(base + STAGES * STAGE_BYTES);
    uint64_t* empty = full + STAGES;
    const int wg = threadIdx.x / 128, m0 = blockIdx.x * BM, n0 = blockIdx.y * BN, ktiles = K / BK;
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) { mbar_init(full + s, 1); mbar_init(empty + s, 2); }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (wg == 0) {   // producer: one thread issues the TMA loads
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
        if (threadIdx.x == 0) {
            for (int kt = 0; kt < ktiles; kt++) {
                int s = kt % STAGES;
                if (kt >= STAGES) mbar_wait(empty + s, (uint32_t)((kt / STAGES - 1) & 1));
                mbar_expect_tx(full + s, STAGE_BYTES);
                tma_load_2d(a_tiles + s * A_BYTES, &tx, kt * BK, m0, full + s);
                tma_load_2d(b_tiles + s * B_BYTES, &tw, kt * BK, n0, full + s);
            }
        }
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
    const int c = wg - 1;
    float d[32][4];
#pragma unroll
    for (int j = 0; j < 32; j++) d[j][0] = d[j][1] = d[j][2] = d[j][3] = 0.f;
    for (int kt = 0; kt < ktiles; kt++) {
        int s = kt % STAGES;
        mbar_wait(full + s, (uint32_t)((kt / STAGES) & 1));
        uint32_t a0 = saddr(a_tiles + s * A_BYTES) + c * 64 * 128, b0 = saddr(b_tiles + s * B_BYTES);
        wgmma::fence();
#pragma unroll
        for (int k16 = 0; k16 < BK / 16; k16++) {
            mma_ss_n256<0>(d, wgmma::desc_sw128(a0 + k16 * 32, 16, 1024), wgmma::desc_sw128(b0 + k16 * 32, 16, 1024), 1);
        }
        wgmma::commit();
        wgmma::wait<1>();   // the group before this one has read its stage: give it back to the producer
        if (kt > 0 && threadIdx.x % 128 == 0) mbar_arrive(empty + (kt - 1) % STAGES);
    }
    wgmma::wait<0>();
    wgmma::pin(d);
    // epilogue: accumulator fragment (warp w: rows 16w.., lane: row g / g + 8, columns 8j + 2t, +1) -> bf16 pairs
    const int warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const long row = m0 + c * 64 + warp * 16 + g;
    __nv_bfloat16* y0 = y + row * N + n0 + 2 * t;
    __nv_bfloat16* y1 = y0 + 8L * N;
#pragma unroll
    for (int j = 0; j < 32; j++) {
        *reinterpret_cast<__nv_bfloat162*>(y0 + 8 * j) = __floats2bfloat162_rn(d[j][0], d[j][1]);
        *reinterpret_cast<__nv_bfloat162*>(y1 + 8 * j) = __floats2bfloat162_rn(d[j][2], d[j][3]);
    }
}

}  // namespace qg

// ---------------------------------------------------------------------------------------------------------------
// host

__global__ void fill_bf16(__nv_bfloat16* p, size_t n, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed; h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
        p[i] = __float2bfloat16((h & 0xffff) / 32768.f - 1.f);
    }
}

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

struct Shape { const char* name; int T, N, K; };

int main() {
    EncodeTiled encode = nullptr;
    cudaDriverEntryPointQueryResult q;
    CK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", (void**)&encode, 12000, cudaEnableDefault, &q));
    if (!encode) { fprintf(stderr, "no cuTensorMapEncodeTiled\n"); return 2; }
    CK(cudaFuncSetAttribute(qg::gemm_tn_bf16, cudaFuncAttributeMaxDynamicSharedMemorySize, qg::SMEM_BYTES));
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
        CK(cudaFree(x)); CK(cudaFree(w)); CK(cudaFree(y)); CK(cudaFree(yref));
    }
    printf(ok ? "ALL CHECKS PASSED\n" : "CHECKS FAILED\n");
    return ok ? 0 : 1;
}
