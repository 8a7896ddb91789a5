// cublaslt_probe.cu — measures whether picking among cuBLASLt's heuristic candidates beats cublasGemmEx (the engine's
// call) on the Llama-7B QLoRA step's GEMM shapes. Run on the GPU machine (it has the cuBLAS headers):
//   nvcc -O2 -std=c++17 -arch=sm_90a native/bench/cublaslt_probe.cu -lcublasLt -lcublas -o /tmp/lt && /tmp/lt
// Results: bench/RESULTS.md, sessions 12 (constant inputs) and 13 (random inputs, the default; QL_LT_CONSTANT=1 for
// constant ones). Candidates are restricted to float32 split-K reductions, as the engine's math mode.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include "hash_fill.cuh"   // fill_bf16: random inputs (constant ones draw less power and run faster)
#define CK(x) do { auto e = (x); if ((int)e != 0) { printf("err %d at %s:%d\n", (int)e, __FILE__, __LINE__); exit(1);} } while (0)
struct Shape { const char* name; int m, n, k; bool transW; };
int main() {
  cublasHandle_t h; CK(cublasCreate(&h));
  cublasSetMathMode(h, (cublasMath_t)(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION));
  cublasLtHandle_t lt; CK(cublasLtCreate(&lt));
  size_t wsBytes = 64u << 20; void* ws; CK(cudaMalloc(&ws, wsBytes));
  // row-major Y[M,N] = X[M,K] W[N,K]^T  ==  column-major Y^T[N,M] = W[N,K] (as col-major K x N, op T) ... X^T
  Shape shapes[] = {{"fold q (2048x4096x4160)", 2048, 4096, 4160, true}, {"fold gate (2048x11008x4160)", 2048, 11008, 4160, true},
                    {"o fwd (2048x4096x4096)", 2048, 4096, 4096, true}, {"down fwd (2048x4096x11008)", 2048, 4096, 11008, true},
                    {"dX q (2048x4096x4096)", 2048, 4096, 4096, false}, {"dX gate (2048x4096x11008)", 2048, 4096, 11008, false},
                    {"dX down (2048x11008x4096)", 2048, 11008, 4096, false}};
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  for (auto& s : shapes) {
    // A = W (col-major view), B = X; C = Y (col-major [N, M])
    int M = s.m, N = s.n, K = s.k;
    __nv_bfloat16 *x, *w, *y; CK(cudaMalloc(&x, (size_t)M*K*2)); CK(cudaMalloc(&w, (size_t)N*K*2)); CK(cudaMalloc(&y, (size_t)M*N*2));
    if (getenv("QL_LT_CONSTANT")) { cudaMemset(x, 0x3c, (size_t)M*K*2); cudaMemset(w, 0x3c, (size_t)N*K*2); }
    else { fill_bf16<<<1024, 256>>>(x, (size_t)M*K, 1); fill_bf16<<<1024, 256>>>(w, (size_t)N*K, 2); }
    float alpha = 1, beta = 0;
    // transW: C[N,M] = op(A)[N,K] * B[K,M], A stored col-major [K,N] (row-major W[N,K]) -> op T, lda K; B = X row-major [M,K] = col-major [K,M], ldb K
    // !transW (dX): C[K?]... dX[M,Kd] = G[M,Nd] W[Nd,Kd]: col-major C[Kd,M] = A[Kd,Nd] (W row-major [Nd,Kd] = col-major [Kd,Nd], op N, lda Kd) * B[Nd,M] (G col-major [Nd,M], ldb Nd)
    int cm = N, cn = M, ck = K; cublasOperation_t opA = s.transW ? CUBLAS_OP_T : CUBLAS_OP_N; int lda = s.transW ? K : N, ldb = K, ldc = N;
    auto gemm = [&]() { CK(cublasGemmEx(h, opA, CUBLAS_OP_N, cm, cn, ck, &alpha, w, CUDA_R_16BF, lda, x, CUDA_R_16BF, ldb, &beta, y, CUDA_R_16BF, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)); };
    // median of 7 rounds of 20 launches
    auto timeit = [&](auto f) { for (int i = 0; i < 3; i++) f(); std::vector<float> r;
      for (int round = 0; round < 7; round++) { cudaEventRecord(e0); for (int i = 0; i < 20; i++) f(); cudaEventRecord(e1);
        cudaEventSynchronize(e1); float ms; cudaEventElapsedTime(&ms, e0, e1); r.push_back(ms / 20); }
      std::sort(r.begin(), r.end()); return r[3]; };
    float tg = timeit(gemm);
    cublasLtMatmulDesc_t op; CK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof(opA)));
    cublasLtMatrixLayout_t la, lb, lc;
    CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, s.transW ? ck : cm, s.transW ? cm : ck, lda));
    CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, ck, cn, ldb));
    CK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, cm, cn, ldc));
    cublasLtMatmulPreference_t pref; CK(cublasLtMatmulPreferenceCreate(&pref));
    CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsBytes, sizeof(wsBytes)));
    // as the engine's cublasGemmEx (CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION): no split-K sums in bf16
    uint32_t mask = CUBLASLT_REDUCTION_SCHEME_MASK & ~CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;
    CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &mask, sizeof(mask)));
    cublasLtMatmulHeuristicResult_t res[32]; int found = 0;
    CK(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 32, res, &found));
    float best = 1e9; int bi = -1; float first = 0;
    for (int i = 0; i < found; i++) {
      float t = timeit([&]() { CK(cublasLtMatmul(lt, op, &alpha, w, la, x, lb, &beta, y, lc, y, lc, &res[i].algo, ws, wsBytes, 0)); });
      if (i == 0) first = t;
      if (t < best) { best = t; bi = i; }
    }
    double fl = 2.0 * M * N * K;
    float tg2 = timeit(gemm);   // GemmEx again after the candidates: the machine's drift
    printf("GemmEx again %.1f us\n", tg2 * 1e3);
    printf("%-30s GemmEx %.1f us (%.0f TF/s) | Lt top-1 %.1f us | best of %d: #%d %.1f us (%.0f TF/s) %.3fx\n", s.name, tg*1e3, fl/tg/1e9, first*1e3, found, bi, best*1e3, fl/best/1e9, tg/best);
    cudaFree(x); cudaFree(w); cudaFree(y);
  }
  return 0;
}
