// sm_split_probe.cu — measures whether the 4-bit weights' dequantize can hide behind the bf16 GEMMs when the GPU's
// SMs are split between them: the GEMM is planned by cuBLAS for 132 - S SMs (cublasSetSmCountTarget)
// while the next weight's dequantize runs on a lower-priority side stream as S blocks of 1,024 threads (each block
// holds a whole SM's registers, so the S blocks sit on S SMs and leave the rest to the GEMM).
//
//   nvcc -O2 -std=c++17 -arch=sm_90a -I native -I native/bench native/bench/sm_split_probe.cu -lcublas -o /tmp/ssp
//   /tmp/ssp   # the sustained forward comparison (after ~15 s of heating), then the capped dequantize's bandwidth
//   (on the GPU machine, which has the cuBLAS headers). The first, short runs of session 20's call 1 (six passes per
//   mode, forward and backward, cuBLASLt and GemmEx SM targets) are this file at commit 73e1566 (QL_SSP_SHORT=1).
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

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
    fprintf(stderr, "CUDA %s at %d: %s\n", cudaGetErrorString(e_), __LINE__, #x); exit(2); } } while (0)
#define CB(x) do { int s_ = (int)(x); if (s_ != 0) { fprintf(stderr, "cuBLAS %d at %d: %s\n", s_, __LINE__, #x); exit(2); } } while (0)

static const int T = 2048, COPIES = 3, LAYERS = 32, NPROJ = 4;
#include "q4_probe_weights.cuh"   // Proj, W4, probe_weights, dequant

static const Proj PROJ[NPROJ] = {{"qkv", 4096, 12288}, {"o", 4096, 4096}, {"gate/up", 4096, 22016}, {"down", 11008, 4096}};

// The engine's dequantize's values from `blocks` blocks of 1,024 threads striding over the chunks (any grid is correct).
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
static void* g_ws;
static const size_t WS_BYTES = 32u << 20;

int main() {
    int least, greatest, sms;
    CK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    std::vector<W4> ws = probe_weights(PROJ, NPROJ, COPIES);
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
    cudaEvent_t t0, t1;
    CK(cudaEventCreate(&t0)); CK(cudaEventCreate(&t1));

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
                        probe_gemm(g_h, false, PROJ[p], wbf[0], x, y);
                    } else {
                        probe_gemm(g_h, false, PROJ[p], md.dq == 3 ? set[k][p] : wbf[0], x, y);
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
