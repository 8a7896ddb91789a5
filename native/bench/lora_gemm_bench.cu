// lora_gemm_bench.cu — standalone, self-checking microbenchmark of native/lora_gemm.cu against cuBLAS on the LoRA
// products of a Llama-7B training step (native/NOTES-lora-gemm.md), tokens = 2048.
//
//   nvcc -O3 -std=c++17 -arch=sm_90a -I native -I native/bench/stub native/bench/lora_gemm_bench.cu \
//        native/bench/stub/cublas_shim.cpp -ldl -o /tmp/lgb && /tmp/lgb
//
// Every case is a row-major product C [m, n] = alpha op(A) op(B) + beta C (the call the Java code gives cuBLAS);
// plan() mirrors backend/cuda/LoraGemmPlan (layout, swap, splits). Per case:
//   check: 512 sampled elements of C against a float64 reference of the same BF16 operands:
//          |c - ref| <= tol_rel |ref| + 2e-5 sum_k |a b| (+ |beta c0| 2^-24), tol_rel = 2^-8 for BF16 C (one rounding),
//          2^-20 for F32 C; and two runs of our kernel bit-identical (determinism);
//   time:  CUDA graph of 20 launches rotating over copies of the operands (> 256 MB, so L2 never holds the big one),
//          median of 11 graph launches; prints us, TB/s (bytes of A + B + C read / written), %copy, speedup.
// Environment: QL_LG_SPLITS=x (multiply the planned splits by x, e.g. 0.5 / 2, for tuning), QL_LG_ONLY=substr.
// Exit code 0 only if every check passed.
#include "lora_gemm.cu"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#define CK(x) check_cuda((x), #x, __LINE__)
static void check_cuda(cudaError_t e, const char* what, int line) {
    if (e != cudaSuccess) {
        fprintf(stderr, "CUDA error %s at line %d: %s\n", cudaGetErrorString(e), line, what);
        exit(2);
    }
}
#define CB(x) do { cublasStatus_t s_ = (x); if (s_ != CUBLAS_STATUS_SUCCESS) { fprintf(stderr, "cuBLAS %d at %d\n", (int)s_, __LINE__); exit(2); } } while (0)

static int failures = 0;
static int g_sms = 132;
static double g_split_scale = 1.0;

struct Case {
    std::string name;
    bool transA, transB;
    int m, n, k;
    long lda, ldb, ldc;
    bool cF32;
    float alpha, beta;
};

struct Plan {
    const void* fn;
    bool swapped;
    int rows, cols, depth, splits, blocks, shared;
    long ldcM, ldcN;
};

#define KERNELS(L) {(const void*)lora_gemm_##L##_n16, (const void*)lora_gemm_##L##_n32, (const void*)lora_gemm_##L##_n48, (const void*)lora_gemm_##L##_n64}

// Mirrors LoraGemmPlan.of (keep the two in step).
static bool plan(const Case& c, Plan& p) {
    if (c.lda % 8 || c.ldb % 8) return false;
    int layout;   // 0 am_bn, 1 am_bk, 2 ak_bk
    p.swapped = false;
    if (!c.transA && c.n <= 64) {
        if (c.k % 8 || c.n % 8) return false;
        layout = c.transB ? 0 : 1;
        p.rows = c.m; p.cols = c.n; p.ldcM = c.ldc; p.ldcN = 1;
    } else if (c.transA && !c.transB && c.n <= 64) {
        if (c.m % 8 || c.n % 8) return false;
        layout = 2; p.rows = c.m; p.cols = c.n; p.ldcM = c.ldc; p.ldcN = 1;
    } else if (c.transA && !c.transB && c.m <= 64) {
        if (c.m % 8 || c.n % 8) return false;
        layout = 2; p.swapped = true; p.rows = c.n; p.cols = c.m; p.ldcM = 1; p.ldcN = c.ldc;
    } else {
        return false;
    }
    static const void* fns[3][4] = {KERNELS(am_bn), KERNELS(am_bk), KERNELS(ak_bk)};
    int np = (p.cols + 15) / 16 * 16;
    p.fn = fns[layout][np / 16 - 1];
    int row64 = (64 / 8 + 1) * 16;
    int stage = 64 * row64 + (layout == 0 ? np * row64 : 64 * (np / 8 + 1) * 16);
    p.shared = 4 * stage;
    int per_sm = std::max(1, std::min(4, 228 * 1024 / (p.shared + 1024)));
    int row_blocks = (p.rows + 63) / 64, tiles = (c.k + 63) / 64;
    int s = std::max(1, std::min(std::min(g_sms * per_sm / row_blocks, tiles / 2), 32));
    if (g_split_scale != 1.0) s = std::max(1, std::min(tiles, (int)std::lround(s * g_split_scale)));
    p.splits = s;
    p.depth = c.k;
    p.blocks = row_blocks * s;
    CK(cudaFuncSetAttribute(p.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, p.shared));
    return true;
}

static void launch_ours(const Case& c, const Plan& p, const void* a, const void* b, void* cc, float* partials, int* counters,
                        cudaStream_t st) {
    const void* A = p.swapped ? b : a;
    const void* B = p.swapped ? a : b;
    int64_t lda = p.swapped ? c.ldb : c.lda, ldb = p.swapped ? c.lda : c.ldb, ldcm = p.ldcM, ldcn = p.ldcN;
    int cf = c.cF32 ? 1 : 0;
    float alpha = c.alpha, beta = c.beta;
    int M = p.rows, N = p.cols, K = p.depth, S = p.splits;
    void* args[] = {&A, &lda, &B, &ldb, &cc, &ldcm, &ldcn, &cf, &alpha, &beta, &M, &N, &K, &S, &partials, &counters};
    CK(cudaLaunchKernel(p.fn, dim3(p.blocks), dim3(128), args, p.shared, st));
}

static void launch_cublas(cublasHandle_t h, const Case& c, const void* a, const void* b, void* cc) {
    // row-major C = op(A) op(B)  <=>  column-major C^T = op(B)^T op(A)^T: B first, sizes (n, m, k)
    CB(cublasGemmEx(h, c.transB ? CUBLAS_OP_T : CUBLAS_OP_N, c.transA ? CUBLAS_OP_T : CUBLAS_OP_N, c.n, c.m, c.k, &c.alpha,
                    b, CUDA_R_16BF, (int)c.ldb, a, CUDA_R_16BF, (int)c.lda, &c.beta, cc, c.cF32 ? CUDA_R_32F : CUDA_R_16BF,
                    (int)c.ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

static float bf2f(uint16_t v) { uint32_t u = (uint32_t)v << 16; float f; memcpy(&f, &u, 4); return f; }
static uint16_t f2bf(float f) {   // round to nearest even (no NaNs here)
    uint32_t u; memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

static double cval(const std::vector<unsigned char>& c, bool f32, size_t idx) {
    if (f32) { float f; memcpy(&f, c.data() + 4 * idx, 4); return f; }
    uint16_t v; memcpy(&v, c.data() + 2 * idx, 2); return bf2f(v);
}

static void run_case(const Case& c, cublasHandle_t h, cudaStream_t st, float* partials, int* counters, double copy_bw,
                     bool timed) {
    Plan p;
    if (!plan(c, p)) { printf("%-28s no plan (cuBLAS keeps it)\n", c.name.c_str()); return; }
    const size_t aElems = (size_t)(c.transA ? c.k : c.m) * c.lda, bElems = (size_t)(c.transB ? c.n : c.k) * c.ldb;
    const size_t cElems = (size_t)c.m * c.ldc, cBytes = cElems * (c.cF32 ? 4 : 2);
    std::mt19937 rng(1234 + c.m * 7 + c.n * 13 + c.k);
    std::normal_distribution<float> nd(0.f, 1.f);
    std::vector<uint16_t> ha(aElems), hb(bElems);
    for (auto& v : ha) v = f2bf(nd(rng));
    for (auto& v : hb) v = f2bf(nd(rng) * 0.1f);
    std::vector<unsigned char> hc0(cBytes);
    for (size_t i = 0; i < cElems; i++) {
        float f = nd(rng);
        if (c.cF32) memcpy(hc0.data() + 4 * i, &f, 4);
        else { uint16_t v = f2bf(f); memcpy(hc0.data() + 2 * i, &v, 2); }
    }
    // copies of the operands for the timing rotation: > 256 MB in all
    const size_t aBytes = aElems * 2, bBytes = bElems * 2;
    const size_t setBytes = aBytes + bBytes + cBytes;
    const int copies = timed ? (int)std::max<size_t>(2, std::min<size_t>(20, (256u << 20) / setBytes + 1)) : 1;
    std::vector<void*> da(copies), db(copies), dc(copies);
    for (int i = 0; i < copies; i++) {
        CK(cudaMalloc(&da[i], aBytes)); CK(cudaMalloc(&db[i], bBytes)); CK(cudaMalloc(&dc[i], cBytes));
        CK(cudaMemcpy(da[i], ha.data(), aBytes, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(db[i], hb.data(), bBytes, cudaMemcpyHostToDevice));
    }
    // --- check: ours twice (bit-identical), cuBLAS once, sampled elements against float64
    std::vector<unsigned char> r1(cBytes), r2(cBytes), rc(cBytes);
    auto run = [&](bool ours, std::vector<unsigned char>& out) {
        CK(cudaMemcpy(dc[0], hc0.data(), cBytes, cudaMemcpyHostToDevice));
        if (ours) launch_ours(c, p, da[0], db[0], dc[0], partials, counters, st);
        else launch_cublas(h, c, da[0], db[0], dc[0]);
        CK(cudaStreamSynchronize(st));
        CK(cudaMemcpy(out.data(), dc[0], cBytes, cudaMemcpyDeviceToHost));
    };
    run(true, r1);
    run(true, r2);
    run(false, rc);
    bool det = memcmp(r1.data(), r2.data(), cBytes) == 0;
    double worst = 0, worstCublas = 0;
    std::uniform_int_distribution<int> ri(0, c.m - 1), rj(0, c.n - 1);
    for (int s = 0; s < 512; s++) {
        int i = s == 0 ? c.m - 1 : ri(rng), j = s == 0 ? c.n - 1 : rj(rng);
        double ref = 0, mag = 0;
        for (int kk = 0; kk < c.k; kk++) {
            double av = bf2f(c.transA ? ha[(size_t)kk * c.lda + i] : ha[(size_t)i * c.lda + kk]);
            double bv = bf2f(c.transB ? hb[(size_t)j * c.ldb + kk] : hb[(size_t)kk * c.ldb + j]);
            ref += av * bv; mag += fabs(av * bv);
        }
        size_t idx = (size_t)i * c.ldc + j;
        double c0 = cval(hc0, c.cF32, idx);
        ref = c.alpha * ref + c.beta * c0;
        double tol = (c.cF32 ? std::ldexp(1.0, -20) : std::ldexp(1.0, -8)) * fabs(ref) + 2e-5 * fabs(c.alpha) * mag
                     + std::ldexp(fabs(c.beta * c0), -24) + 1e-30;
        worst = std::max(worst, fabs(cval(r1, c.cF32, idx) - ref) / tol);
        worstCublas = std::max(worstCublas, fabs(cval(rc, c.cF32, idx) - ref) / tol);
    }
    // elements outside the product (ldc > n padding) must be untouched
    bool untouched = true;
    for (int i = 0; i < c.m && untouched; i += std::max(1, c.m / 64))
        for (long j = c.n; j < c.ldc; j++) {
            size_t idx = (size_t)i * c.ldc + j;
            if (cval(r1, c.cF32, idx) != cval(hc0, c.cF32, idx)) { untouched = false; break; }
        }
    bool ok = det && worst <= 1.0 && untouched;
    if (!ok) failures++;
    printf("%-30s %s S=%-2d grid=%-4d %s err/tol ours %.3f cublas %.3f%s%s", c.name.c_str(),
           p.swapped ? "swap" : "    ", p.splits, p.blocks, ok ? "ok  " : "FAIL", worst, worstCublas,
           det ? "" : " NONDETERMINISTIC", untouched ? "" : " WROTE-PADDING");
    if (timed) {
        auto time = [&](bool ours) {
            cudaGraph_t g;
            cudaGraphExec_t ge;
            CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
            for (int i = 0; i < 20; i++) {
                int cp = i % copies;
                if (ours) launch_ours(c, p, da[cp], db[cp], dc[cp], partials, counters, st);
                else launch_cublas(h, c, da[cp], db[cp], dc[cp]);
            }
            CK(cudaStreamEndCapture(st, &g));
            CK(cudaGraphInstantiate(&ge, g, 0));
            cudaEvent_t e0, e1;
            CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
            std::vector<float> ts;
            for (int r = 0; r < 12; r++) {
                CK(cudaEventRecord(e0, st));
                CK(cudaGraphLaunch(ge, st));
                CK(cudaEventRecord(e1, st));
                CK(cudaEventSynchronize(e1));
                float ms; CK(cudaEventElapsedTime(&ms, e0, e1));
                if (r > 0) ts.push_back(ms);
            }
            std::sort(ts.begin(), ts.end());
            CK(cudaGraphExecDestroy(ge)); CK(cudaGraphDestroy(g));
            CK(cudaEventDestroy(e0)); CK(cudaEventDestroy(e1));
            return ts[ts.size() / 2] * 1000.0 / 20;   // us per launch
        };
        double us = time(true), usC = time(false);
        // bytes the product must move: A and B read, C written (and read when beta != 0), only the n used columns
        double bytes = (double)c.m * c.k * 2 + (double)c.k * c.n * 2 + (double)c.m * c.n * (c.cF32 ? 4 : 2) * (c.beta != 0 ? 2 : 1);
        printf(" | ours %7.2f us %5.2f TB/s %3.0f%%copy | cuBLAS %7.2f us %5.2f TB/s | x%.2f", us, bytes / us * 1e-6,
               100.0 * bytes / us * 1e-6 / copy_bw, usC, bytes / usC * 1e-6, usC / us);
    }
    printf("\n");
    for (int i = 0; i < copies; i++) { CK(cudaFree(da[i])); CK(cudaFree(db[i])); CK(cudaFree(dc[i])); }
}

// Row-major products as the Java call sites issue them (backend/cuda/CudaLora, CudaLoraGroup, CudaLoraFold).
static Case tall_gh(const char* nm, int tokens, int out, int r, int ldc) {     // gh = s gy B: gy [n, out], B [out, r]
    return {nm, false, false, tokens, r, out, out, r, ldc, false, 2.0f, 0.f};
}
static Case tall_h(const char* nm, int tokens, int in, int r, int ldc) {       // h = x A^T: x [n, in], A [r, in]
    return {nm, false, true, tokens, r, in, in, in, ldc, false, 1.0f, 0.f};
}
static Case red_dB(const char* nm, int tokens, int out, int r, int ldh) {     // dB += s gy^T h: gy [n, out], h [n, ldh]
    return {nm, true, false, out, r, tokens, out, ldh, r, true, 2.0f, 1.f};
}
static Case red_dA(const char* nm, int tokens, int in, int r, float beta) {  // dA (+)= gh^T x: gh [n, r], x [n, in]
    return {nm, true, false, r, in, tokens, r, in, in, true, 1.0f, beta};
}

int main() {
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    g_sms = prop.multiProcessorCount;
    if (const char* s = getenv("QL_LG_SPLITS")) g_split_scale = atof(s);
    const char* only = getenv("QL_LG_ONLY");
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cublasHandle_t h;
    CB(cublasCreate(&h));
    CB(cublasSetStream(h, st));
    void* ws; CK(cudaMalloc(&ws, 64 << 20)); CB(cublasSetWorkspace(h, ws, 64 << 20));
    float* partials; CK(cudaMalloc(&partials, 64 << 20));
    int* counters; CK(cudaMalloc(&counters, 65536 * 4)); CK(cudaMemset(counters, 0, 65536 * 4));

    // copy bandwidth: read + write of 512 MB
    double copy_bw;
    {
        size_t n = 512u << 20;
        void *x, *y; CK(cudaMalloc(&x, n)); CK(cudaMalloc(&y, n));
        cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
        CK(cudaMemcpyAsync(y, x, n, cudaMemcpyDeviceToDevice, st));
        CK(cudaEventRecord(e0, st));
        for (int i = 0; i < 5; i++) CK(cudaMemcpyAsync(y, x, n, cudaMemcpyDeviceToDevice, st));
        CK(cudaEventRecord(e1, st)); CK(cudaEventSynchronize(e1));
        float ms; CK(cudaEventElapsedTime(&ms, e0, e1));
        copy_bw = 2.0 * n * 5 / (ms * 1e-3) * 1e-12;
        CK(cudaFree(x)); CK(cudaFree(y));
    }
    printf("device %s, %d SMs, D2D copy %.2f TB/s (read + write), split scale %.2f\n", prop.name, g_sms, copy_bw, g_split_scale);

    const int T = 2048;
    std::vector<Case> timed = {
        tall_gh("gh q (out 4096, r16)", T, 4096, 16, 48),
        tall_gh("gh gate (out 11008, r16)", T, 11008, 16, 32),
        tall_gh("gh o/down-single 4096", T, 4096, 16, 16),
        tall_h("h o (in 4096, r16)", T, 4096, 16, 16),
        tall_h("h down (in 11008, r16)", T, 11008, 16, 16),
        tall_h("H fold qkv (R48)", T, 4096, 48, 4096 + 64),
        tall_h("H fold gate/up (R32)", T, 4096, 32, 4096 + 64),
        tall_h("h r64", T, 4096, 64, 64),
        red_dB("dB q (out 4096, kept H48)", T, 4096, 16, 48),
        red_dB("dB gate (out 11008, H32)", T, 11008, 16, 32),
        red_dB("dB o (4096, r16)", T, 4096, 16, 16),
        red_dB("dB r64", T, 4096, 64, 64),
        red_dA("dA group qkv (R48, beta 0)", T, 4096, 48, 0.f),
        red_dA("dA group gate/up (R32)", T, 4096, 32, 0.f),
        red_dA("dA o (in 4096, r16)", T, 4096, 16, 1.f),
        red_dA("dA down (in 11008, r16)", T, 11008, 16, 1.f),
    };
    std::vector<Case> odd = {
        tall_gh("odd gh m1000 k520 r8", 1000, 520, 8, 8),
        tall_gh("odd gh m77 k4104 r24", 77, 4104, 24, 40),
        tall_h("odd h m1001 k136 r40", 1001, 136, 40, 40),
        tall_h("odd h m2048 k11008 r56", 2048, 11008, 56, 64),
        red_dB("odd dB out 1000 n999 r8", 999, 1000, 8, 16),
        red_dB("odd dB out 4104 n33 r48", 33, 4104, 48, 48),
        red_dA("odd dA in 1048 n1001 r24", 1001, 1048, 24, 1.f),
        red_dA("odd dA in 520 n2047 r64", 2047, 520, 64, 0.f),
        tall_h("odd h m5 k64 r16", 5, 64, 16, 16),
    };
    printf("-- odd shapes (checks only)\n");
    for (auto& c : odd) if (!only || c.name.find(only) != std::string::npos) run_case(c, h, st, partials, counters, copy_bw, false);
    printf("-- Llama-7B step shapes, tokens %d\n", T);
    for (auto& c : timed) if (!only || c.name.find(only) != std::string::npos) run_case(c, h, st, partials, counters, copy_bw, true);
    if (failures == 0) printf("ALL CHECKS PASSED\n");
    else printf("FAILED: %d failure(s)\n", failures);
    return failures == 0 ? 0 : 1;
}
