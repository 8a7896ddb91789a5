// sm_split_probe.cu — measures whether the 4-bit weights' dequantize can hide behind the bf16 GEMMs when the GPU's
// SMs are split between them: the GEMM is planned by cuBLASLt for 132 - S SMs (CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET)
// while the next weight's dequantize runs on a lower-priority side stream as S blocks of 1,024 threads (each block
// holds a whole SM's registers, so the S blocks sit on S SMs and leave the rest to the GEMM).
//
//   nvcc -O2 -std=c++17 -arch=sm_90a -I native -I native/bench native/bench/sm_split_probe.cu -lcublasLt -lcublas -o /tmp/ssp
//   /tmp/ssp                  # the sustained forward comparison (after ~15 s of heating), then the capped dequantize's bandwidth
//   QL_SSP_SHORT=1 /tmp/ssp   # also the first, short runs: six 32-layer passes per mode, forward and backward
//   (on the GPU machine, which has the cuBLAS headers)
//
// Measured (H200, bench/RESULTS.md session 20): not a lever. A dequantize confined to S SMs is issue-bound at ~50 GB/s
// an SM (0.41 TB/s on 8, 0.80 on 16), and the GEMMs planned for fewer SMs lose about what they give up even at the
// board's power cap; the best sustained split (GEMMs for 116 SMs, the next layer's dequantize on 16) took 43.7 ms a
// forward pass against 44.5 serial and 41.1 for the GEMMs alone, before any of the engine's own overlap (PDL).
//
// Why it could pay where dequant_ahead_probe.cu's second stream did not (bench/RESULTS.md, session 12): there the
// GEMM's blocks held every SM and the dequantize only ran in the gaps between GEMMs, so the pass still paid the
// dequantizes' ~4-5 ms. A compute-bound GEMM on 124 of 132 SMs costs ~6% more (~2.3 ms of a 38 ms pass); a
// dequantize on the other 8 SMs needs ~0.45 TB/s to keep up, far from the copy bandwidth. The layer sequence is the
// engine's (joined q/k/v and gate/up GEMMs, M = 2,048 tokens, forward y = x W^T and backward dx = gy W), random data,
// 3 copies of a layer's weights rotating so that L2 holds none of them; 32 layers, median of 5 runs.
#include "nf4.cu"
#include "hash_fill.cuh"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <vector>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
    fprintf(stderr, "CUDA %s at %d: %s\n", cudaGetErrorString(e_), __LINE__, #x); exit(2); } } while (0)
#define CB(x) do { int s_ = (int)(x); if (s_ != 0) { fprintf(stderr, "cuBLAS %d at %d: %s\n", s_, __LINE__, #x); exit(2); } } while (0)

static const int T = 2048, COPIES = 3, LAYERS = 32, NPROJ = 4;
struct Proj { const char* name; int in, out; };
static const Proj PROJ[NPROJ] = {{"qkv", 4096, 12288}, {"o", 4096, 4096}, {"gate/up", 4096, 22016}, {"down", 11008, 4096}};

struct W4 { uint8_t* packed; uint8_t* absmax; float* nested_absmax; long n; };
static float *g_ncode, *g_code16;

// The engine's dequantize (256 threads, a grid covering every chunk once).
static void dequant(const W4& w, __nv_bfloat16* y, cudaStream_t s) {
    int grid = (int)((w.n + 16383) / 16384);
    q4_dequantize_bf16<<<grid, DQ_THREADS, 0, s>>>(w.packed, w.absmax, w.nested_absmax, g_ncode, 0.01f, 6, 256, 8, 1,
                                                   g_code16, y, w.n, 1);
}

// The same values from `blocks` blocks of 1,024 threads striding over the chunks (any grid is correct).
extern "C" __global__ void __launch_bounds__(1024, 1) dq_wide(Q4_WEIGHT_PARAMS, const float* __restrict__ code16,
                                                              __nv_bfloat16* __restrict__ y, int64_t n, int mid) {
    Q4_WEIGHT_MAKE;
    dequantize_body<__nv_bfloat16>(w, code16, y, n, mid);
}
static void dequant_capped(const W4& w, __nv_bfloat16* y, int blocks, cudaStream_t s) {
    dq_wide<<<blocks, 1024, 0, s>>>(w.packed, w.absmax, w.nested_absmax, g_ncode, 0.01f, 6, 256, 8, 1, g_code16, y,
                                    w.n, 1);
}

static cublasHandle_t g_h;
static cublasLtHandle_t g_lt;
static void* g_ws;
static const size_t WS_BYTES = 32u << 20;

// forward: y [T, out] = x [T, in] W^T; backward: dx [T, in] = gy [T, out] W (column-major views as the engine's calls)
static void gemm_ex(bool backward, const Proj& p, const __nv_bfloat16* w, const __nv_bfloat16* x, __nv_bfloat16* y) {
    float one = 1.f, zero = 0.f;
    if (!backward) {
        CB(cublasGemmEx(g_h, CUBLAS_OP_T, CUBLAS_OP_N, p.out, T, p.in, &one, w, CUDA_R_16BF, p.in, x, CUDA_R_16BF, p.in,
                        &zero, y, CUDA_R_16BF, p.out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    } else {
        CB(cublasGemmEx(g_h, CUBLAS_OP_N, CUBLAS_OP_N, p.in, T, p.out, &one, w, CUDA_R_16BF, p.in, x, CUDA_R_16BF, p.out,
                        &zero, y, CUDA_R_16BF, p.in, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
}

struct LtPlan { cublasLtMatmulDesc_t op; cublasLtMatrixLayout_t a, b, c; cublasLtMatmulAlgo_t algo; };
static std::map<int, LtPlan> g_plans;   // key: (sm target, backward, projection)

static const LtPlan& plan(bool backward, int p, int smTarget) {
    int key = smTarget * 16 + backward * 8 + p;
    auto it = g_plans.find(key);
    if (it != g_plans.end()) return it->second;
    const Proj& pr = PROJ[p];
    LtPlan l;
    CB(cublasLtMatmulDescCreate(&l.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t opA = backward ? CUBLAS_OP_N : CUBLAS_OP_T;
    CB(cublasLtMatmulDescSetAttribute(l.op, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof(opA)));
    if (smTarget > 0) CB(cublasLtMatmulDescSetAttribute(l.op, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &smTarget, sizeof(smTarget)));
    int m = backward ? pr.in : pr.out, k = backward ? pr.out : pr.in;
    CB(cublasLtMatrixLayoutCreate(&l.a, CUDA_R_16BF, pr.in, pr.out, pr.in));   // W: col-major [in, out]
    CB(cublasLtMatrixLayoutCreate(&l.b, CUDA_R_16BF, k, T, k));
    CB(cublasLtMatrixLayoutCreate(&l.c, CUDA_R_16BF, m, T, m));
    cublasLtMatmulPreference_t pref;
    CB(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = WS_BYTES;
    CB(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    uint32_t mask = CUBLASLT_REDUCTION_SCHEME_MASK & ~CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;   // as the engine's math mode
    CB(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &mask, sizeof(mask)));
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    CB(cublasLtMatmulAlgoGetHeuristic(g_lt, l.op, l.a, l.b, l.c, l.c, pref, 1, &res, &found));
    if (found < 1) { fprintf(stderr, "no algo for %s target %d\n", pr.name, smTarget); exit(2); }
    l.algo = res.algo;
    return g_plans[key] = l;
}

static void gemm_lt(bool backward, int p, int smTarget, const __nv_bfloat16* w, const __nv_bfloat16* x, __nv_bfloat16* y,
                    cudaStream_t s) {
    const LtPlan& l = plan(backward, p, smTarget);
    float one = 1.f, zero = 0.f;
    CB(cublasLtMatmul(g_lt, l.op, &one, w, l.a, x, l.b, &zero, y, l.c, y, l.c, &l.algo, g_ws, WS_BYTES, s));
}

int main() {
    int least, greatest, sms;
    CK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    std::vector<W4> ws(COPIES * NPROJ);
    for (int c = 0; c < COPIES; c++)
        for (int i = 0; i < NPROJ; i++) {
            W4& w = ws[c * NPROJ + i];
            w.n = (long)PROJ[i].in * PROJ[i].out;
            CK(cudaMalloc(&w.packed, w.n / 2));
            CK(cudaMalloc(&w.absmax, w.n / 64));
            CK(cudaMalloc(&w.nested_absmax, (w.n / 64 / 256 + 1) * 4));
            fill_u8<<<1024, 256>>>(w.packed, w.n / 2, 7 * c + i);
            fill_u8<<<1024, 256>>>(w.absmax, w.n / 64, 100 + 7 * c + i);
            std::vector<float> na(w.n / 64 / 256 + 1, 0.02f);
            CK(cudaMemcpy(w.nested_absmax, na.data(), na.size() * 4, cudaMemcpyHostToDevice));
        }
    std::vector<float> code(16), ncode(256);
    for (int i = 0; i < 16; i++) code[i] = (i - 7.5f) / 8.f;
    for (int i = 0; i < 256; i++) ncode[i] = (i - 127.5f) / 128.f;
    CK(cudaMalloc(&g_code16, 64)); CK(cudaMalloc(&g_ncode, 1024));
    CK(cudaMemcpy(g_code16, code.data(), 64, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(g_ncode, ncode.data(), 1024, cudaMemcpyHostToDevice));
    size_t maxw = (size_t)22016 * 4096;
    __nv_bfloat16 *wbf[2], *x, *y;
    CK(cudaMalloc(&wbf[0], maxw * 2)); CK(cudaMalloc(&wbf[1], maxw * 2));
    CK(cudaMalloc(&x, (size_t)T * 22016 * 2)); CK(cudaMalloc(&y, (size_t)T * 22016 * 2));
    fill_bf16<<<1024, 256>>>(x, (size_t)T * 22016, 999);
    fill_bf16<<<1024, 256>>>(wbf[0], maxw, 998);
    fill_bf16<<<1024, 256>>>(wbf[1], maxw, 997);
    CK(cudaMalloc(&g_ws, WS_BYTES));

    // the capped dequantize gives the same bits as the engine's
    {
        const W4& w = ws[NPROJ + 2];
        dequant(w, wbf[0], 0);
        dequant_capped(w, wbf[1], 8, 0);
        CK(cudaDeviceSynchronize());
        std::vector<uint16_t> a(1 << 20), b(1 << 20);
        size_t off = (size_t)w.n - a.size();
        CK(cudaMemcpy(a.data(), wbf[0] + off, a.size() * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(b.data(), wbf[1] + off, b.size() * 2, cudaMemcpyDeviceToHost));
        printf("capped dequantize %s the engine's (last 1M values)\n", a == b ? "equals" : "DIFFERS FROM");
        fill_bf16<<<1024, 256>>>(wbf[0], maxw, 998);
        fill_bf16<<<1024, 256>>>(wbf[1], maxw, 997);
    }

    cudaStream_t mainS, sideS;
    CK(cudaStreamCreateWithPriority(&mainS, cudaStreamNonBlocking, greatest));
    CK(cudaStreamCreateWithPriority(&sideS, cudaStreamNonBlocking, least));
    CB(cublasCreate(&g_h));
    CB(cublasSetMathMode(g_h, (cublasMath_t)(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
    CB(cublasSetWorkspace(g_h, g_ws, WS_BYTES));
    CB(cublasSetStream(g_h, mainS));
    CB(cublasLtCreate(&g_lt));
    cudaEvent_t dqDone[2], gemmDone[2], t0, t1;
    for (int i = 0; i < 2; i++) {
        CK(cudaEventCreateWithFlags(&dqDone[i], cudaEventDisableTiming));
        CK(cudaEventCreateWithFlags(&gemmDone[i], cudaEventDisableTiming));
    }
    CK(cudaEventCreate(&t0)); CK(cudaEventCreate(&t1));

    // A mode: how the GEMMs run (GemmEx, or Lt planned for `target` SMs, 0 = all) and where the dequantizes go
    // (none: the floor; serial: before each GEMM on the main stream; ahead: the next weight's on the side stream,
    // as `capped` blocks of 1,024 threads, or the engine's full grid when capped = 0).
    // GemmEx with a target: the handle's cublasSetSmCountTarget (the engine's call with one more setting).
    struct Mode { const char* name; bool lt; int target; int dq; int capped; };   // dq: 0 none, 1 serial, 2 ahead
    std::vector<Mode> modes = {
        {"GemmEx, serial dequantize (engine)", false, 0, 1, 0},
        {"GemmEx, GEMMs only (floor)", false, 0, 0, 0},
        {"Lt all SMs, serial dequantize", true, 0, 1, 0},
        {"Lt all SMs, GEMMs only", true, 0, 0, 0},
        {"GemmEx, ahead on 8 capped blocks", false, 0, 2, 8},
        {"Lt all SMs, ahead on 8 capped blocks", true, 0, 2, 8},
    };
    static char names[24][80];
    int splits[] = {4, 8, 12, 16};
    for (int i = 0; i < 4; i++) {
        int S = splits[i];
        snprintf(names[2 * i], 80, "Lt %d SMs, GEMMs only", sms - S);
        snprintf(names[2 * i + 1], 80, "Lt %d SMs, ahead on %d capped blocks", sms - S, S);
        modes.push_back({names[2 * i], true, sms - S, 0, 0});
        modes.push_back({names[2 * i + 1], true, sms - S, 2, S});
    }
    snprintf(names[8], 80, "Lt %d SMs, ahead on 16 capped blocks", sms - 8);
    modes.push_back({names[8], true, sms - 8, 2, 16});
    for (int i = 0; i < 3; i++) {
        int S = splits[i];
        snprintf(names[9 + 2 * i], 80, "GemmEx target %d, GEMMs only", sms - S);
        snprintf(names[10 + 2 * i], 80, "GemmEx target %d, ahead on %d capped", sms - S, S);
        modes.push_back({names[9 + 2 * i], false, sms - S, 0, 0});
        modes.push_back({names[10 + 2 * i], false, sms - S, 2, S});
    }

    for (int backward = 0; backward < (getenv("QL_SSP_SHORT") ? 2 : 0); backward++) {
        for (const Mode& md : modes) {
            CB(cublasSetSmCountTarget(g_h, md.lt ? 0 : md.target));
            std::vector<float> times;
            auto weightAt = [&](int l, int j) { int p = backward ? NPROJ - 1 - j : j; return std::make_pair(p, &ws[(l % COPIES) * NPROJ + p]); };
            auto run_gemm = [&](int p, const __nv_bfloat16* w) {
                if (md.lt) gemm_lt(backward, p, md.target, w, x, y, mainS);
                else gemm_ex(backward, PROJ[p], w, x, y);
            };
            auto run_dq = [&](const W4& w, __nv_bfloat16* dst, cudaStream_t s) {
                if (md.capped > 0) dequant_capped(w, dst, md.capped, s);
                else dequant(w, dst, s);
            };
            for (int rep = 0; rep < 6; rep++) {
                CK(cudaDeviceSynchronize());
                CK(cudaEventRecord(t0, mainS));
                CK(cudaStreamWaitEvent(sideS, t0));
                int seq = 0;
                if (md.dq == 2) {
                    auto [p0, w0] = weightAt(0, 0);
                    dequant(*w0, wbf[0], mainS);
                    CK(cudaEventRecord(dqDone[0], mainS));
                }
                for (int l = 0; l < LAYERS; l++)
                    for (int j = 0; j < NPROJ; j++, seq++) {
                        auto [p, w] = weightAt(l, j);
                        int buf = seq & 1;
                        if (md.dq == 0) {
                            run_gemm(p, wbf[0]);
                        } else if (md.dq == 1) {
                            dequant(*w, wbf[0], mainS);
                            run_gemm(p, wbf[0]);
                        } else {
                            bool last = l == LAYERS - 1 && j == NPROJ - 1;
                            if (!last) {
                                auto [pn, wn] = weightAt(j == NPROJ - 1 ? l + 1 : l, j == NPROJ - 1 ? 0 : j + 1);
                                if (seq >= 1) CK(cudaStreamWaitEvent(sideS, gemmDone[buf ^ 1]));
                                CK(cudaStreamWaitEvent(sideS, dqDone[buf]));
                                run_dq(*wn, wbf[buf ^ 1], sideS);
                                CK(cudaEventRecord(dqDone[buf ^ 1], sideS));
                            }
                            CK(cudaStreamWaitEvent(mainS, dqDone[buf]));
                            run_gemm(p, wbf[buf]);
                            CK(cudaEventRecord(gemmDone[buf], mainS));
                        }
                    }
                CK(cudaEventRecord(t1, mainS));
                CK(cudaEventSynchronize(t1));
                float ms;
                CK(cudaEventElapsedTime(&ms, t0, t1));
                if (rep > 0) times.push_back(ms);
            }
            std::sort(times.begin(), times.end());
            printf("%s  %-40s %8.3f ms (32 layers; min %.3f)\n", backward ? "backward" : "forward ", md.name,
                   times[times.size() / 2], times[0]);
            fflush(stdout);
        }
    }
    // Sustained (the training step runs at the board's power cap: ~690 W, SM clocks 1.4-1.7 GHz, bench/RESULTS.md
    // session 20): the forward pass's 32 layers again and again, the modes taking turns pass by pass after ~15 s of
    // heating, so every mode sees the same power state. "layer ahead": the side stream dequantizes all four weights
    // of layer l + 1 (on `capped` blocks of 1,024 threads, or the engine's full grid at the lowest priority when 0)
    // into the other of two buffer sets while the main stream multiplies layer l's.
    {
        struct SMode { const char* name; int target; int dq; int capped; };   // dq: 0 none, 1 serial, 3 layer ahead
        char nm[8][64];
        std::vector<SMode> sm = {{"serial (engine)", 0, 1, 0}, {"GEMMs only", 0, 0, 0}, {"layer ahead, full grid", 0, 3, 0}};
        int ss[] = {8, 16};
        for (int i = 0; i < 2; i++) {
            snprintf(nm[3 * i], 64, "target %d, GEMMs only", sms - ss[i]);
            snprintf(nm[3 * i + 1], 64, "target %d, layer ahead on %d", sms - ss[i], ss[i]);
            sm.push_back({nm[3 * i], sms - ss[i], 0, 0});
            sm.push_back({nm[3 * i + 1], sms - ss[i], 3, ss[i]});
        }
        snprintf(nm[7], 64, "all SMs, layer ahead on 16");
        sm.push_back({nm[7], 0, 3, 16});
        __nv_bfloat16* set[2][NPROJ];
        for (int k = 0; k < 2; k++)
            for (int p = 0; p < NPROJ; p++) CK(cudaMalloc(&set[k][p], (size_t)PROJ[p].in * PROJ[p].out * 2));
        cudaEvent_t lDq[2], lGemm[2];
        for (int i = 0; i < 2; i++) {
            CK(cudaEventCreateWithFlags(&lDq[i], cudaEventDisableTiming));
            CK(cudaEventCreateWithFlags(&lGemm[i], cudaEventDisableTiming));
        }
        auto pass = [&](const SMode& md) {
            CB(cublasSetSmCountTarget(g_h, md.target));
            CK(cudaDeviceSynchronize());
            CK(cudaEventRecord(t0, mainS));
            CK(cudaStreamWaitEvent(sideS, t0));
            if (md.dq == 3) {
                for (int p = 0; p < NPROJ; p++) dequant(ws[p], set[0][p], mainS);
                CK(cudaEventRecord(lDq[0], mainS));
            }
            for (int l = 0; l < LAYERS; l++) {
                int k = l & 1;
                if (md.dq == 3 && l + 1 < LAYERS) {   // the next layer's weights into the other set, beside this layer
                    if (l >= 1) CK(cudaStreamWaitEvent(sideS, lGemm[k ^ 1]));
                    for (int p = 0; p < NPROJ; p++) {
                        const W4& w = ws[((l + 1) % COPIES) * NPROJ + p];
                        if (md.capped > 0) dequant_capped(w, set[k ^ 1][p], md.capped, sideS);
                        else dequant(w, set[k ^ 1][p], sideS);
                    }
                    CK(cudaEventRecord(lDq[k ^ 1], sideS));
                }
                if (md.dq == 3) CK(cudaStreamWaitEvent(mainS, lDq[k]));
                for (int p = 0; p < NPROJ; p++) {
                    if (md.dq == 1) {
                        dequant(ws[(l % COPIES) * NPROJ + p], wbf[0], mainS);
                        gemm_ex(false, PROJ[p], wbf[0], x, y);
                    } else {
                        gemm_ex(false, PROJ[p], md.dq == 3 ? set[k][p] : wbf[0], x, y);
                    }
                }
                if (md.dq == 3) CK(cudaEventRecord(lGemm[k], mainS));
            }
            CK(cudaEventRecord(t1, mainS));
            CK(cudaEventSynchronize(t1));
            float ms;
            CK(cudaEventElapsedTime(&ms, t0, t1));
            return ms;
        };
        for (int i = 0; i < 300; i++) pass(sm[0]);   // ~15 s at the power cap
        std::vector<std::vector<float>> t(sm.size());
        for (int round = 0; round < 12; round++)
            for (size_t i = 0; i < sm.size(); i++) t[i].push_back(pass(sm[i]));
        for (size_t i = 0; i < sm.size(); i++) {
            std::sort(t[i].begin(), t[i].end());
            printf("sustained forward  %-36s %8.3f ms (median of 12; min %.3f)\n", sm[i].name, t[i][6], t[i][0]);
        }
        CB(cublasSetSmCountTarget(g_h, 0));
        fflush(stdout);
    }
    // one capped dequantize alone: its bandwidth on S SMs
    for (int S : {4, 8, 16, 132}) {
        const W4& w = ws[2];
        for (int i = 0; i < 3; i++) dequant_capped(w, wbf[0], S, mainS);
        CK(cudaEventRecord(t0, mainS));
        for (int i = 0; i < 10; i++) dequant_capped(w, wbf[0], S, mainS);
        CK(cudaEventRecord(t1, mainS));
        CK(cudaEventSynchronize(t1));
        float ms;
        CK(cudaEventElapsedTime(&ms, t0, t1));
        double bytes = w.n / 2.0 + w.n / 64.0 + w.n * 2.0;
        printf("capped dequantize of gate/up on %3d blocks: %.1f us, %.2f TB/s\n", S, ms * 100, bytes / (ms / 10 * 1e-3) / 1e12);
    }
    CK(cudaDeviceSynchronize());
    return 0;
}
