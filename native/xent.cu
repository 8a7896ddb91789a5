// xent.cu — per-row cross-entropy of logits against targets.
//
// Tensors: logits [n, vocab] of T (float or bf16), targets I32 [n], loss float [n].
// Launch:  grid = n blocks (one row each), block = 256 threads, 32 floats of static shared memory.
// Math it mirrors (backend/cpu/RowOps.crossEntropy, PyTorch's cross_entropy in float32):
//          max = max_j x_j; sum = sum_j exp(x_j - max) in float32; loss = (max - x_t) + (float)log(sum);
//          target -100 (ignore_index) gives 0. A target outside [0, vocab) gives NaN and code 3
//          (target, vocab) in the status word (the backend throws at its next synchronization).
//          Partial sums are combined in another order than the CPU's: float32 rounding only.
#include "activations.cuh"

template <typename T>
__device__ __forceinline__ void xent_impl(const T* __restrict__ logits, const int* __restrict__ targets,
                                          float* __restrict__ loss, int vocab, int* status) {
    __shared__ float scratch[32];
    int r = blockIdx.x;
    int t = targets[r];
    if (t == -100) {
        if (threadIdx.x == 0) loss[r] = 0.f;
        return;
    }
    if (t < 0 || t >= vocab) {
        if (threadIdx.x == 0) {
            report_error(status, 3, t, vocab);
            loss[r] = __int_as_float(0x7fc00000);
        }
        return;
    }
    const T* row = logits + (int64_t)r * vocab;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) m = fmaxf(m, to_f32(row[j]));
    m = block_max(m, scratch);
    float s = 0.f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) s += expf(to_f32(row[j]) - m);
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) loss[r] = (m - to_f32(row[t])) + (float)log((double)s);
}

#define QL_XENT(tn, T)                                                                                           \
    extern "C" __global__ void xent_fwd_##tn(const T* logits, const int* targets, float* loss, int vocab, int* status) { \
        xent_impl<T>(logits, targets, loss, vocab, status);                                                     \
    }

QL_FOR_ACT(QL_XENT)
