// gh_in_gemm_probe.cu — would the 7B step gain from producing the LoRA products GH = s gy B inside the base layers'
// input-gradient GEMM (extra output columns) instead of as separate skinny GEMMs on the side stream?
//   today:  side stream: GH_i = s_i G_i B_i (one GEMM per layer), dB_i += s_i G_i^T H_i, dA = GH^T x
//           main stream: dequantize W (memory-bound stand-in), gx = G [W_0; W_1; ...], join, gx += GH [A_0; ...]
//   probe:  side stream: dB_i only; main stream: dequantize, C = G [W_0 | s_0 B_0 0 ..; W_1 | 0 s_1 B_1 ..] (N = in + P,
//           P = sum r: GH lands in C's last columns), side stream: dA from C's columns; main: C[:, :in] += GH A, then
//           gx = C[:, :in] (a 2-D copy: the engine's gx is a contiguous [n, in])
// Random bf16 inputs, float32 accumulation, reduced-precision reduction off (the engine's math mode). Rounds of 10
// steps, the two forms alternating; median of 9 rounds each. Run on the GPU machine:
//   nvcc -O2 -std=c++20 -arch=sm_90a native/bench/gh_in_gemm_probe.cu -lcublas -o /tmp/gh && /tmp/gh
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include "hash_fill.cuh"
#define CK(x) do { auto e = (x); if ((int)e != 0) { printf("err %d at %s:%d\n", (int)e, __FILE__, __LINE__); exit(1);} } while (0)

typedef __nv_bfloat16 bf16;
static cublasHandle_t hMain, hSide;
static cudaStream_t sMain, sSide;

// row-major C[m, n] (ldc) = alpha op(A) op(B) + beta C; A [m, k] (or [k, m] when transA), B [k, n] (or [n, k] when transB)
static void gemm(cublasHandle_t h, bool transA, bool transB, int m, int n, int k, float alpha, const bf16* a, int lda,
                 const bf16* b, int ldb, float beta, void* c, int ldc, cudaDataType ct) {
    CK(cublasGemmEx(h, transB ? CUBLAS_OP_T : CUBLAS_OP_N, transA ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha, b,
                    CUDA_R_16BF, ldb, a, CUDA_R_16BF, lda, &beta, c, ct, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

static bf16* randomBf16(size_t count, unsigned seed) {
    bf16* p; CK(cudaMalloc(&p, count * 2));
    fill_bf16<<<1024, 256>>>(p, count, seed);
    return p;
}

// the dequantize's memory traffic: 4 bits in, 16 bits out per value (w rows of stride ldw, in columns)
__global__ void fakeDequant(const unsigned* q, bf16* w, int rows, int in, int ldw) {
    size_t words = (size_t)rows * in / 8;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < words; i += (size_t)gridDim.x * blockDim.x) {
        unsigned v = q[i];
        size_t e = i * 8, row = e / in, col = e % in;
        __align__(16) bf16 out[8];
        for (int j = 0; j < 8; j++) out[j] = __float2bfloat16((float)((v >> (4 * j)) & 15) * 0.01f);
        *reinterpret_cast<uint4*>(w + row * ldw + col) = *reinterpret_cast<uint4*>(out);
    }
}

static void race(const char* name, auto first, auto second) {
    cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
    for (int i = 0; i < 5; i++) { first(); second(); }
    std::vector<float> a, b;
    for (int round = 0; round < 18; round++) {
        bool f = (round & 1) == 0;
        cudaEventRecord(e0, sMain);
        for (int i = 0; i < 10; i++) { if (f) first(); else second(); }
        cudaEventRecord(e1, sMain); cudaEventSynchronize(e1);
        float ms; cudaEventElapsedTime(&ms, e0, e1);
        (f ? a : b).push_back(ms * 100.f);
    }
    std::sort(a.begin(), a.end()); std::sort(b.begin(), b.end());
    float x = a[a.size() / 2], y = b[b.size() / 2];
    printf("%-48s first %8.1f us  second %8.1f us  gain %6.1f us (%.1f%%)\n", name, x, y, x - y, 100.0 * (x - y) / x);
}

int main() {
    CK(cudaStreamCreateWithFlags(&sMain, cudaStreamNonBlocking));
    int lo, hi; CK(cudaDeviceGetStreamPriorityRange(&lo, &hi));
    CK(cudaStreamCreateWithPriority(&sSide, cudaStreamNonBlocking, hi));
    for (auto [h, s] : {std::pair{&hMain, sMain}, std::pair{&hSide, sSide}}) {
        CK(cublasCreate(h)); CK(cublasSetStream(*h, s));
        CK(cublasSetMathMode(*h, (cublasMath_t)(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
    }
    cudaEvent_t fork, join, fork2;
    CK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming)); CK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
    CK(cudaEventCreateWithFlags(&fork2, cudaEventDisableTiming));
    const int n = 2048, r = 16;
    struct Group { const char* name; int parts; int out; int in; };
    Group groups[] = {{"q/k/v", 3, 4096, 4096}, {"gate/up", 2, 11008, 4096}, {"o", 1, 4096, 4096}, {"down", 1, 4096, 11008}};
    for (const Group& g : groups) {
        int total = g.parts * g.out, in = g.in, R = g.parts * r;
        bf16* G = randomBf16((size_t)n * total, 1);                 // [n, total] the joined output gradients
        bf16* x = randomBf16((size_t)n * in, 2);                    // [n, in]
        bf16* Hh = randomBf16((size_t)n * R, 3);                    // [n, R] kept h
        bf16* B = randomBf16((size_t)total * r, 4);                 // per layer [out, r], stacked
        bf16* A = randomBf16((size_t)R * in, 5);                    // [R, in]
        unsigned* q; CK(cudaMalloc(&q, (size_t)total * in / 2)); fill_u8<<<1024, 256>>>((uint8_t*)q, (size_t)total * in / 2, 6);
        bf16* W; CK(cudaMalloc(&W, (size_t)total * (in + 64) * 2)); CK(cudaMemset(W, 0, (size_t)total * (in + 64) * 2));
        bf16* C; CK(cudaMalloc(&C, (size_t)n * (in + 64) * 2));
        bf16* gx; CK(cudaMalloc(&gx, (size_t)n * in * 2));
        bf16* GH; CK(cudaMalloc(&GH, (size_t)n * R * 2));
        float *dB, *dA; CK(cudaMalloc(&dB, (size_t)total * r * 4)); CK(cudaMalloc(&dA, (size_t)R * in * 4));
        auto dq = [&](int ldw) { fakeDequant<<<132 * 8, 256, 0, sMain>>>(q, W, total, in, ldw); };
        auto dBs = [&] { for (int i = 0; i < g.parts; i++)
                             gemm(hSide, true, false, g.out, r, n, 1.f, G + (size_t)i * g.out, total, Hh + i * r, R, 1.f,
                                  dB + (size_t)i * g.out * r, r, CUDA_R_32F); };
        auto today = [&](bool side) {
            cublasHandle_t hs = side ? hSide : hMain;
            if (side) { CK(cudaEventRecord(fork, sMain)); CK(cudaStreamWaitEvent(sSide, fork)); } else CK(cublasSetStream(hSide, sMain));
            for (int i = 0; i < g.parts; i++)
                gemm(hs, false, false, n, r, g.out, 1.f, G + (size_t)i * g.out, total, B + (size_t)i * g.out * r, r, 0.f,
                     GH + i * r, R, CUDA_R_16BF);
            dBs();
            gemm(hs, true, false, R, in, n, 1.f, GH, R, x, in, 0.f, dA, in, CUDA_R_32F);
            dq(in);
            gemm(hMain, false, false, n, in, total, 1.f, G, total, W, in, 0.f, gx, in, CUDA_R_16BF);
            if (side) { CK(cudaEventRecord(join, sSide)); CK(cudaStreamWaitEvent(sMain, join)); } else CK(cublasSetStream(hSide, sSide));
            gemm(hMain, false, false, n, in, R, 1.f, GH, R, A, in, 1.f, gx, in, CUDA_R_16BF);
        };
        // P output columns for GH (R, or padded to 64)
        auto inGemm = [&](int P, bool copy) {
            int ld = in + P;
            CK(cudaEventRecord(fork, sMain)); CK(cudaStreamWaitEvent(sSide, fork));
            dBs();
            dq(ld);   // (the engine would also write s_i B_i into the extra columns: ~R x total values, negligible)
            gemm(hMain, false, false, n, ld, total, 1.f, G, total, W, ld, 0.f, C, ld, CUDA_R_16BF);
            CK(cudaEventRecord(fork2, sMain)); CK(cudaStreamWaitEvent(sSide, fork2));
            gemm(hSide, true, false, R, in, n, 1.f, C + in, ld, x, in, 0.f, dA, in, CUDA_R_32F);
            gemm(hMain, false, false, n, in, R, 1.f, C + in, ld, A, in, 1.f, C, ld, CUDA_R_16BF);
            if (copy) CK(cudaMemcpy2DAsync(gx, (size_t)in * 2, C, (size_t)ld * 2, (size_t)in * 2, n, cudaMemcpyDeviceToDevice, sMain));
            CK(cudaEventRecord(join, sSide)); CK(cudaStreamWaitEvent(sMain, join));
        };
        printf("%s: n %d, %d x [%d -> %d], r %d\n", g.name, n, g.parts, in, g.out, r);
        race("  today side / today side (noise)", [&] { today(true); }, [&] { today(true); });
        race("  today serial / today side", [&] { today(false); }, [&] { today(true); });
        race("  today side / GH in GEMM, P = R, copy", [&] { today(true); }, [&] { inGemm(R, true); });
        race("  today side / GH in GEMM, P = 64, copy", [&] { today(true); }, [&] { inGemm(64, true); });
        race("  today side / GH in GEMM, P = R, no copy", [&] { today(true); }, [&] { inGemm(R, false); });
        race("  base GEMM N = in / N = in + R", [&] { gemm(hMain, false, false, n, in, total, 1.f, G, total, W, in, 0.f, gx, in, CUDA_R_16BF); },
             [&] { gemm(hMain, false, false, n, in + R, total, 1.f, G, total, W, in + R, 0.f, C, in + R, CUDA_R_16BF); });
        for (void* p : {(void*)G, (void*)x, (void*)Hh, (void*)B, (void*)A, (void*)q, (void*)W, (void*)C, (void*)gx, (void*)GH,
                        (void*)dB, (void*)dA}) CK(cudaFree(p));
    }
    CK(cudaDeviceSynchronize());
    return 0;
}
