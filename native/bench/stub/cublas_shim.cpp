// Resolves the few cuBLAS entry points the microbench uses from libcublas.so.13 at run time (no cuBLAS headers or
// link library on the build machine).
#include <dlfcn.h>
#include <cstdio>
#include <cstdlib>
#include "cublas_v2.h"
static void* lib() {
  static void* h = nullptr;
  if (!h) {
    const char* names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so"};
    for (const char* n : names) if ((h = dlopen(n, RTLD_NOW | RTLD_GLOBAL))) break;
    if (!h) { fprintf(stderr, "cannot load libcublas: %s\n", dlerror()); exit(3); }
  }
  return h;
}
template <typename F> static F sym(const char* n) {
  void* p = dlsym(lib(), n);
  if (!p) { fprintf(stderr, "no %s in libcublas\n", n); exit(3); }
  return reinterpret_cast<F>(p);
}
extern "C" {
cublasStatus_t cublasCreate_v2(cublasHandle_t* h) { return sym<cublasStatus_t (*)(cublasHandle_t*)>("cublasCreate_v2")(h); }
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t h, void* w, size_t n) {
  return sym<cublasStatus_t (*)(cublasHandle_t, void*, size_t)>("cublasSetWorkspace_v2")(h, w, n); }
cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t s) {
  return sym<cublasStatus_t (*)(cublasHandle_t, cudaStream_t)>("cublasSetStream_v2")(h, s); }
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m) {
  return sym<cublasStatus_t (*)(cublasHandle_t, cublasMath_t)>("cublasSetMathMode")(h, m); }
cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
    const void* alpha, const void* A, cudaDataType at, int lda, const void* B, cudaDataType bt, int ldb,
    const void* beta, void* C, cudaDataType ct, int ldc, cublasComputeType_t ctype, cublasGemmAlgo_t algo) {
  using F = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
      const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*, cudaDataType, int,
      cublasComputeType_t, cublasGemmAlgo_t);
  return sym<F>("cublasGemmEx")(h, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, C, ct, ldc, ctype, algo);
}
}
