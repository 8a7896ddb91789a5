// graph_timer.cuh — the benches' timing: time_graph, the median over 15 replays of a CUDA graph of 20 launches of op (op(i, stream)
// takes copy i % copies of its buffers, so back-to-back launches do not hit the same cache lines), in microseconds
// per launch; copy_bandwidth, the ceiling. Include after defining CK(call) (check a cudaError_t).
#pragma once
#include <cuda_runtime.h>
#include <algorithm>
#include <functional>
#include <vector>

static float time_graph(const std::function<void(int, cudaStream_t)>& op, int copies) {
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    const int L = 20;
    op(0, s);  // warm (module load, attributes) outside the capture
    CK(cudaStreamSynchronize(s));
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < L; i++) op(i % copies, s);
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int i = 0; i < 3; i++) CK(cudaGraphLaunch(ge, s));
    std::vector<float> ts;
    for (int r = 0; r < 15; r++) {
        CK(cudaEventRecord(e0, s));
        CK(cudaGraphLaunch(ge, s));
        CK(cudaEventRecord(e1, s));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        ts.push_back(ms * 1000.0f / L);
    }
    CK(cudaGetLastError());
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaStreamDestroy(s);
    std::sort(ts.begin(), ts.end());
    return ts[ts.size() / 2];
}

// Device-to-device copy bandwidth (bytes read + written per second): the best of 5 copies of 1 GiB, the ceiling the
// benches' %copy columns divide by (as CudaNf4Report measures it).
static double copy_bandwidth() {
    const size_t n = 1ull << 30;
    void *a, *b;
    CK(cudaMalloc(&a, n)); CK(cudaMalloc(&b, n));
    CK(cudaMemset(a, 1, n));
    cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
    CK(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
    float best = 1e9;
    for (int r = 0; r < 5; r++) {
        cudaEventRecord(e0); cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice); cudaEventRecord(e1);
        cudaEventSynchronize(e1);
        float ms; cudaEventElapsedTime(&ms, e0, e1); best = std::min(best, ms);
    }
    cudaEventDestroy(e0); cudaEventDestroy(e1);
    cudaFree(a); cudaFree(b);
    return 2.0 * n / (best * 1e-3);
}
