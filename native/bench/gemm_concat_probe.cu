// gemm_concat_probe.cu — would the 7B step gain from running a group's GEMMs (q/k/v, gate/up) as ONE GEMM?
//   backward: grad_x = sum_i G_i W_i as three (two) GEMMs accumulating onto grad_x (beta 0, 1, 1: the engine today)
//             against one GEMM with K = sum out_i over [G_0 | G_1 | G_2] (row stride sum out_i) and [W_0; W_1; W_2]
//   forward:  y_i = [x | H] [W_i | s_i B_i]^T as one GEMM per layer (N = out_i, the fold today) against one GEMM with
//             N = sum out_i (outputs [y_0 | y_1 | y_2], row stride sum out_i)
// Random bf16 inputs (constant ones draw less power and run faster on the H200), float32 accumulation with
// reduced-precision reduction disallowed (the engine's math mode). Timing: rounds of 10 calls, the two forms
// alternating round by round so both see the same clocks; median of 9 rounds each. Each line: "first" = the
// engine's form today, "second" = the alternative. Run on the GPU machine:
//   nvcc -O2 -std=c++17 -arch=sm_90a native/bench/gemm_concat_probe.cu -lcublas -o /tmp/gc && /tmp/gc
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include "hash_fill.cuh"
#define CK(x) do { auto e = (x); if ((int)e != 0) { printf("err %d at %s:%d\n", (int)e, __FILE__, __LINE__); exit(1);} } while (0)

static cublasHandle_t h;
static cublasHandle_t hDefault, hWorkspace;   // the second with a 32 MiB workspace set (cuBLAS' advice for Hopper)
typedef __nv_bfloat16 bf16;

// row-major C[m, n] (ldc) = alpha A[m, k] (lda) op(B) + beta C; B row-major [n, k] when transB (y = x W^T), else [k, n]
static void gemmRowMajor(int m, int n, int k, const bf16* a, int lda, const bf16* b, int ldb, bool transB, float beta,
                         bf16* c, int ldc) {
    float alpha = 1;
    // column-major C^T[n, m] = op(B)^T ... : C^T = B' A^T with B' = B (col-major [k, n] as row-major [n, k]: op T) or [n, k] (op N)
    CK(cublasGemmEx(h, transB ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, n, m, k, &alpha, b, CUDA_R_16BF, ldb, a,
                    CUDA_R_16BF, lda, &beta, c, CUDA_R_16BF, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

static bf16* randomBf16(size_t count, unsigned seed) {
    bf16* p; CK(cudaMalloc(&p, count * 2));
    fill_bf16<<<1024, 256>>>(p, count, seed);
    return p;
}

template <class A, class B>
static void race(const char* name, double flop, A separate, B joined, double flopSecond = 0) {
    if (flopSecond == 0) flopSecond = flop;
    cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
    for (int i = 0; i < 5; i++) { separate(); joined(); }
    std::vector<float> ts, tj;
    for (int round = 0; round < 18; round++) {
        bool sep = (round & 1) == 0;
        cudaEventRecord(e0);
        for (int i = 0; i < 10; i++) { if (sep) separate(); else joined(); }
        cudaEventRecord(e1); cudaEventSynchronize(e1);
        float ms; cudaEventElapsedTime(&ms, e0, e1);
        (sep ? ts : tj).push_back(ms * 100.f);   // us per call
    }
    std::sort(ts.begin(), ts.end()); std::sort(tj.begin(), tj.end());
    float s = ts[ts.size() / 2], j = tj[tj.size() / 2];
    printf("%-42s first %8.1f us (%5.0f TFLOP/s)  second %8.1f us (%5.0f TFLOP/s)  gain %6.1f us (%.1f%%)\n", name, s,
           flop / s * 1e-6, j, flopSecond / j * 1e-6, s - j, 100.0 * (s - j) / s);
}

// row-major Y_b [n, out] (stride n * out) = X [n, k] W_b [out, k]^T (stride out * k), b < batch: one strided-batched GEMM
static void batchedForward(int n, int out, int k, const bf16* x, const bf16* w, bf16* y, int batch) {
    float alpha = 1, beta = 0;
    CK(cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, out, n, k, &alpha, w, CUDA_R_16BF, k, (long long)out * k, x,
                                  CUDA_R_16BF, k, 0, &beta, y, CUDA_R_16BF, out, (long long)out * n, batch,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

int main() {
    for (cublasHandle_t* p : {&hDefault, &hWorkspace}) {
        CK(cublasCreate(p));
        CK(cublasSetMathMode(*p, (cublasMath_t)(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
    }
    void* ws; CK(cudaMalloc(&ws, 32u << 20));
    CK(cublasSetWorkspace(hWorkspace, ws, 32u << 20));
    h = hDefault;
    const int n = 2048, hidden = 4096, inter = 11008, foldK = 4096 + 64;
    struct Group { const char* name; int parts; int out; };
    Group groups[] = {{"q/k/v", 3, hidden}, {"gate/up", 2, inter}};
    for (const Group& g : groups) {
        int total = g.parts * g.out;
        // backward: G [n, total] (blocks of out columns) or the blocks contiguous ([n, out] each, as the engine holds
        // them), W stacked [total, hidden] row-major, grad_x [n, hidden]
        bf16* G = randomBf16((size_t)n * total, 1);
        bf16* W = randomBf16((size_t)total * hidden, 2);
        bf16* gx = randomBf16((size_t)n * hidden, 3);
        double flop = 2.0 * n * hidden * total;
        auto separate = [&] { for (int i = 0; i < g.parts; i++)
                                  gemmRowMajor(n, hidden, g.out, G + (size_t)i * g.out * n, g.out, W + (size_t)i * g.out * hidden,
                                               hidden, false, i == 0 ? 0.f : 1.f, gx, hidden); };
        auto joined = [&] { gemmRowMajor(n, hidden, total, G, total, W, hidden, false, 0.f, gx, hidden); };
        char name[96];
        snprintf(name, sizeof name, "backward %s (%d x %d x %dx%d)", g.name, n, hidden, g.parts, g.out);
        printf("%s\n", name);
        race("  separate / separate (noise)", flop, separate, separate);
        race("  separate / one GEMM, K concatenated", flop, separate, joined);
        race("  one GEMM / separate", flop, joined, separate);
        race("  separate: default / 32 MiB workspace", flop, separate,
             [&] { h = hWorkspace; separate(); h = hDefault; });
        // forward fold: X [n, foldK], Wf [total, foldK] row-major, Y [n, total] or the blocks contiguous
        bf16* X = randomBf16((size_t)n * foldK, 4);
        bf16* Wf = randomBf16((size_t)total * foldK, 5);
        bf16* Y; CK(cudaMalloc(&Y, (size_t)n * total * 2));
        flop = 2.0 * n * total * foldK;
        auto fSeparate = [&] { for (int i = 0; i < g.parts; i++)
                                   gemmRowMajor(n, g.out, foldK, X, foldK, Wf + (size_t)i * g.out * foldK, foldK, true, 0.f,
                                                Y + (size_t)i * g.out * n, g.out); };
        auto fJoined = [&] { gemmRowMajor(n, total, foldK, X, foldK, Wf, foldK, true, 0.f, Y, total); };
        auto fBatched = [&] { batchedForward(n, g.out, foldK, X, Wf, Y, g.parts); };
        snprintf(name, sizeof name, "forward %s (%d x %dx%d x %d)", g.name, n, g.parts, g.out, foldK);
        printf("%s\n", name);
        race("  separate / separate (noise)", flop, fSeparate, fSeparate);
        race("  separate / one GEMM, N concatenated", flop, fSeparate, fJoined);
        race("  one GEMM / separate", flop, fJoined, fSeparate);
        race("  separate / strided-batched", flop, fSeparate, fBatched);
        race("  one GEMM / strided-batched", flop, fJoined, fBatched);
        CK(cudaFree(G)); CK(cudaFree(W)); CK(cudaFree(gx)); CK(cudaFree(X)); CK(cudaFree(Wf)); CK(cudaFree(Y));
    }
    // the fold's k: in + R with H's R columns padded to 64 (4160) against 128 (4224) and no adapter (4096), for the
    // joined gate/up (N = 22016) and q/k/v (N = 12288) outputs. Measured (session 17): the time grows with k alone
    // (same TFLOP/s within ~1%): the 64-column padding costs no efficiency.
    for (int nOut : {22016, 12288, 4096}) {
        int ks[] = {4096, 4160, 4224};
        bf16* X = randomBf16((size_t)n * 4224, 6);
        bf16* Wf = randomBf16((size_t)nOut * 4224, 7);
        bf16* Y; CK(cudaMalloc(&Y, (size_t)n * nOut * 2));
        auto fwd = [&](int k) { return [=] { gemmRowMajor(n, nOut, k, X, k, Wf, k, true, 0.f, Y, nOut); }; };
        char name[96];
        for (int a = 0; a < 3; a++)
            for (int c = a + 1; c < 3; c++) {
                snprintf(name, sizeof name, "fold k %d / %d (N %d), per-call us", ks[a], ks[c], nOut);
                race(name, 2.0 * n * nOut * ks[a], fwd(ks[a]), fwd(ks[c]), 2.0 * n * nOut * ks[c]);
            }
        CK(cudaFree(X)); CK(cudaFree(Wf)); CK(cudaFree(Y));
    }
    CK(cudaDeviceSynchronize());
    return 0;
}
