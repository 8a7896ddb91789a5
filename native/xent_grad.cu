// xent_grad.cu — fused cross-entropy forward and backward (backend/cpu/CrossEntropyGrad).
//
// Tensors: logits [n, vocab] of T, targets I32 [n] -> loss F32 [n], grad [n, vocab] of T.
// Launch:  grid = n blocks (one row each), 256 threads.
// Math:    as xent.cu: max, sum = sum exp(x - max) in float32, loss = (max - x_t) + (float)log(sum);
//          grad_j = exp(x_j - max) * ((1 / sum) * scale) - (j == t ? scale : 0). Target -100: loss 0, grad 0.
//          A target outside [0, vocab): NaN loss and grad, status code 3.
#include "activations.cuh"

template <typename T>
__device__ __forceinline__ void xent_grad_impl(const T* __restrict__ logits, const int* __restrict__ targets,
                                               float* __restrict__ loss, T* __restrict__ grad, int vocab, float scale,
                                               int* status) {
    __shared__ float scratch[32];
    int r = blockIdx.x;
    int t = targets[r];
    const T* row = logits + (int64_t)r * vocab;
    T* grow = grad + (int64_t)r * vocab;
    if (t == -100 || t < 0 || t >= vocab) {
        bool bad = t != -100;
        float fill = bad ? __int_as_float(0x7fc00000) : 0.f;
        if (threadIdx.x == 0) {
            if (bad) report_error(status, 3, t, vocab);
            loss[r] = fill;
        }
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) grow[j] = from_f32<T>(fill);
        return;
    }
    float m = -INFINITY;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) m = fmaxf(m, to_f32(row[j]));
    m = block_max(m, scratch);
    float s = 0.f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) s += expf(to_f32(row[j]) - m);
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) loss[r] = (m - to_f32(row[t])) + (float)log((double)s);
    float factor = (1.f / s) * scale;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        float p = expf(to_f32(row[j]) - m) * factor;
        grow[j] = from_f32<T>(j == t ? p - scale : p);
    }
}

#define QL_XENT_GRAD(tn, T)                                                                                      \
    extern "C" __global__ void xent_grad_##tn(const T* logits, const int* targets, float* loss, T* grad, int vocab, \
                                              float scale, int* status) {                                       \
        xent_grad_impl<T>(logits, targets, loss, grad, vocab, scale, status);                                   \
    }

QL_FOR_ACT(QL_XENT_GRAD)
