// dequant_ahead_probe.cu — measures whether dequantizing the next 4-bit weight on a second, lower-priority stream
// (while the current weight's cuBLAS GEMM runs) shortens a Llama-7B layer sequence, against the engine's serial
// order (dequantize, GEMM, dequantize, GEMM, ... on one stream).
//
//   nvcc -O2 -std=c++17 -arch=sm_90a -I native -I native/bench/stub native/bench/dequant_ahead_probe.cu \
//        native/bench/stub/cublas_shim.cpp -ldl -o /tmp/dap && /tmp/dap   (libcublas.so.13/12 opened at run time)
//
// Why it could: a GEMM's last wave leaves most SMs idle (gate/up forward: 688 tiles of 128 x 256 on 132 SMs), and the
// block scheduler places a lower-priority stream's blocks only where the higher-priority stream has none waiting,
// so the next weight's dequantize lands in that tail instead of after it. The GEMMs and dequantizes are the step's
// (M = 2,048 tokens, random data; nf4.cu's q4_dequantize_bf16, blocksize 64, nested absmax); 4 copies of a layer's weights
// rotate so that L2 holds none of them. Times: 32 layers, median of 5 runs.
#include "nf4.cu"
#include "hash_fill.cuh"   // random data: constant data draws less power and runs faster

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
    fprintf(stderr, "CUDA %s at %d: %s\n", cudaGetErrorString(e_), __LINE__, #x); exit(2); } } while (0)
#define CB(x) do { cublasStatus_t s_ = (x); if (s_ != CUBLAS_STATUS_SUCCESS) { \
    fprintf(stderr, "cuBLAS %d at %d: %s\n", (int)s_, __LINE__, #x); exit(2); } } while (0)

static const int T = 2048, COPIES = 4, LAYERS = 32;
#include "q4_probe_weights.cuh"   // Proj, W4, probe_weights, dequant

static const Proj PROJ[7] = {{"q", 4096, 4096}, {"k", 4096, 4096}, {"v", 4096, 4096}, {"o", 4096, 4096},
                             {"gate", 4096, 11008}, {"up", 4096, 11008}, {"down", 11008, 4096}};


// The weight in slices of `chunk` output rows (forward) or input columns (backward; emulated: the slice's values come
// from the weight's first out x chunk values, the same bytes and work), each dequantized into a buffer small enough to
// stay in L2 and multiplied at once: the dequantize's writes and the GEMM's reads of the bf16 weight then hit L2
// instead of DRAM, at the cost of more, smaller GEMMs.
static void chunked(cublasHandle_t h, bool backward, const Proj& p, const W4& w, int chunk, __nv_bfloat16* wbuf,
                    const __nv_bfloat16* x, __nv_bfloat16* y, cudaStream_t s) {
    float one = 1.f, zero = 0.f;
    int total = backward ? p.in : p.out;
    for (int r0 = 0; r0 < total; r0 += chunk) {
        int c = std::min(chunk, total - r0);
        long first = backward ? 0 : (long)r0 * p.in;   // first value of the slice
        W4 part{w.packed + first / 2, w.absmax + first / 64, w.nested_absmax + first / 64 / 256,
                (long)c * (backward ? p.out : p.in)};
        dequant(part, wbuf, s);
        if (!backward) {
            CB(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, c, T, p.in, &one, wbuf, CUDA_R_16BF, p.in, x, CUDA_R_16BF, p.in,
                            &zero, y + r0, CUDA_R_16BF, p.out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        } else {
            CB(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, c, T, p.out, &one, wbuf, CUDA_R_16BF, c, x, CUDA_R_16BF, p.out,
                            &zero, y + r0, CUDA_R_16BF, p.in, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        }
    }
}

int main() {
    int least, greatest;
    CK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    std::vector<W4> ws = probe_weights(PROJ, 7, COPIES);
    size_t maxw = (size_t)11008 * 4096;
    __nv_bfloat16 *wbf[2], *x, *y;
    CK(cudaMalloc(&wbf[0], maxw * 2)); CK(cudaMalloc(&wbf[1], maxw * 2));
    CK(cudaMalloc(&x, (size_t)T * 11008 * 2)); CK(cudaMalloc(&y, (size_t)T * 11008 * 2));
    fill_bf16<<<1024, 256>>>(x, (size_t)T * 11008, 999);
    fill_bf16<<<1024, 256>>>(wbf[0], maxw, 998);   // the floor's GEMMs multiply this (random, as a dequantized weight)
    fill_bf16<<<1024, 256>>>(wbf[1], maxw, 997);

    cudaStream_t mainHi, mainLo, sideLo, sideHi;
    CK(cudaStreamCreateWithPriority(&mainHi, cudaStreamDefault, greatest + 1 <= least ? greatest + 1 : greatest));
    CK(cudaStreamCreateWithPriority(&mainLo, cudaStreamDefault, least));
    CK(cudaStreamCreateWithPriority(&sideLo, cudaStreamDefault, least));
    CK(cudaStreamCreateWithPriority(&sideHi, cudaStreamDefault, greatest));
    cublasHandle_t h;
    CB(cublasCreate(&h));
    CB(cublasSetMathMode(h, (cublasMath_t)(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
    std::vector<cudaEvent_t> dqDone(2), gemmDone(2);
    for (int i = 0; i < 2; i++) {
        CK(cudaEventCreateWithFlags(&dqDone[i], cudaEventDisableTiming));
        CK(cudaEventCreateWithFlags(&gemmDone[i], cudaEventDisableTiming));
    }
    cudaEvent_t t0, t1;
    CK(cudaEventCreate(&t0)); CK(cudaEventCreate(&t1));

    // mode 0: serial on one stream; 1: dequant ahead, side stream lower priority than main; 2: the same priority;
    // 3: side stream higher priority; 4: GEMMs only (no dequantize: the floor); 5-7: L2-sized slices (chunked)
    const char* names[8] = {"serial (engine today)", "ahead, side priority below main", "ahead, same priority",
                            "ahead, side priority above main", "GEMMs only (floor)", "L2 slices of 2048",
                            "L2 slices of 1024", "L2 slices of 3072"};
    for (int backward = 0; backward < 2; backward++) {
        for (int mode = 0; mode < 8; mode++) {
            cudaStream_t m = mode == 1 ? mainHi : mainLo;
            cudaStream_t s = mode == 1 ? sideLo : mode == 2 ? mainHi /* unused */ : sideHi;
            if (mode == 2) CK(cudaStreamCreateWithPriority(&s, cudaStreamDefault, least));
            CB(cublasSetStream(h, m));
            std::vector<float> times;
            for (int rep = 0; rep < 6; rep++) {
                CK(cudaDeviceSynchronize());
                CK(cudaEventRecord(t0, m));
                int seq = 0;
                auto weightAt = [&](int l, int j) {   // j-th GEMM of layer l in this pass's order
                    int p = backward ? 6 - j : j;
                    return std::make_pair(p, &ws[(l % COPIES) * 7 + p]);
                };
                if (mode == 1 || mode == 2 || mode == 3) {
                    auto [p0, w0] = weightAt(0, 0);
                    dequant(*w0, wbf[0], m);
                    CK(cudaEventRecord(dqDone[0], m));
                }
                for (int l = 0; l < LAYERS; l++)
                    for (int j = 0; j < 7; j++, seq++) {
                        auto [p, w] = weightAt(l, j);
                        int buf = seq & 1;
                        if (mode == 0) {
                            dequant(*w, wbf[0], m);
                            probe_gemm(h, backward, PROJ[p], wbf[0], x, y);
                        } else if (mode >= 5) {
                            chunked(h, backward, PROJ[p], *w, mode == 5 ? 2048 : mode == 6 ? 1024 : 3072, wbf[0], x, y, m);
                        } else if (mode == 4) {
                            probe_gemm(h, backward, PROJ[p], wbf[0], x, y);
                        } else {
                            bool last = l == LAYERS - 1 && j == 6;
                            if (!last) {   // the next weight, into the other buffer, once its previous GEMM is done
                                auto [pn, wn] = weightAt(j == 6 ? l + 1 : l, j == 6 ? 0 : j + 1);
                                if (seq >= 1) CK(cudaStreamWaitEvent(s, gemmDone[buf ^ 1]));
                                CK(cudaStreamWaitEvent(s, dqDone[buf]));   // keep the side stream's order simple
                                dequant(*wn, wbf[buf ^ 1], s);
                                CK(cudaEventRecord(dqDone[buf ^ 1], s));
                            }
                            CK(cudaStreamWaitEvent(m, dqDone[buf]));
                            probe_gemm(h, backward, PROJ[p], wbf[buf], x, y);
                            CK(cudaEventRecord(gemmDone[buf], m));
                        }
                    }
                CK(cudaEventRecord(t1, m));
                CK(cudaEventSynchronize(t1));
                float ms;
                CK(cudaEventElapsedTime(&ms, t0, t1));
                if (rep > 0) times.push_back(ms);
            }
            std::sort(times.begin(), times.end());
            printf("%s  %-34s %8.3f ms (32 layers; min %.3f)\n", backward ? "backward" : "forward ", names[mode],
                   times[times.size() / 2], times[0]);
            if (mode == 2) CK(cudaStreamDestroy(s));
        }
    }
    CK(cudaDeviceSynchronize());
    printf("priorities: least %d greatest %d\n", least, greatest);
    return 0;
}
