// sampling.cu — the greedy token of each row of a decode step's logits, on the GPU, so that a decode step sends back
// one token id per row instead of its logits (infer/Generator's greedy path; backend/cuda/SamplingKernels).
//
//   argmax_rows_<t>   logits [B, V] (T = float, bf16 or half) -> token [B] (int32): the index of the row's largest
//                     logit, as infer/Sampler.argmax scans it (the first index on ties; a logit that is NaN never wins,
//                     except that a NaN first logit gives 0), with up to four excluded ids (e0..e3, the first n_excluded
//                     of them) read as -infinity first, as Sampler's EOS suppression before min_new_tokens. next_ids
//                     [B] (or null) gets the same ids: the next decode step's input, so a replayed graph can run on
//                     without the host (CudaDecodeGraph's pipelined greedy steps). grid B blocks, ARGMAX_THREADS threads.
//
// Why the scan's answer comes out of a tree: for non-NaN values "larger, then smaller index" is a total order, so any
// reduction order picks the first index of the maximum, which is what a left-to-right scan with `>` keeps; NaN logits
// are skipped (the scan never moves to one, and never sits on one unless it is the first).
#include "activations.cuh"

constexpr int ARGMAX_THREADS = 512;
constexpr int ARGMAX_EMPTY = 0x7FFFFFFF;  // index of "no candidate yet"

// Whether (v, i) beats (bv, bi) (bi == ARGMAX_EMPTY: none yet).
__device__ __forceinline__ bool argmax_beats(float v, int i, float bv, int bi) {
    return bi == ARGMAX_EMPTY || v > bv || (v == bv && i < bi);
}

// The best (bv, bi) of the warp's lanes, into lane 0.
__device__ __forceinline__ void argmax_warp(float& bv, int& bi) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_down_sync(0xFFFFFFFFu, bv, o);
        const int oi = __shfl_down_sync(0xFFFFFFFFu, bi, o);
        if (oi != ARGMAX_EMPTY && argmax_beats(ov, oi, bv, bi)) {
            bv = ov;
            bi = oi;
        }
    }
}

template <typename T>
__device__ __forceinline__ void argmax_row(const T* __restrict__ logits, int vocab, int n_excluded, int e0, int e1,
                                           int e2, int e3, int* __restrict__ token, int* __restrict__ next_ids) {
    __shared__ float s_v[32];
    __shared__ int s_i[32];
    const T* row = logits + (int64_t)blockIdx.x * vocab;
    auto value = [&](int i) {
        const bool out = (n_excluded > 0 && i == e0) || (n_excluded > 1 && i == e1) || (n_excluded > 2 && i == e2)
                         || (n_excluded > 3 && i == e3);
        return out ? -INFINITY : to_f32(row[i]);
    };
    if (isnan(value(0))) {  // the scan starts on index 0 and never leaves a NaN
        if (threadIdx.x == 0) {
            token[blockIdx.x] = 0;
            if (next_ids) next_ids[blockIdx.x] = 0;
        }
        return;
    }
    float bv = -INFINITY;
    int bi = ARGMAX_EMPTY;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float v = value(i);
        if (!isnan(v) && argmax_beats(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
    }
    argmax_warp(bv, bi);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (lane == 0) {
        s_v[warp] = bv;
        s_i[warp] = bi;
    }
    __syncthreads();
    if (warp == 0) {
        bv = lane < warps ? s_v[lane] : -INFINITY;
        bi = lane < warps ? s_i[lane] : ARGMAX_EMPTY;
        argmax_warp(bv, bi);
        if (lane == 0) {  // never empty: index 0 is a candidate (its value is not NaN)
            token[blockIdx.x] = bi;
            if (next_ids) next_ids[blockIdx.x] = bi;
        }
    }
}

#define QL_ARGMAX(tn, T)                                                                                          \
    extern "C" __global__ void __launch_bounds__(ARGMAX_THREADS) argmax_rows_##tn(                               \
        const T* __restrict__ logits, int vocab, int n_excluded, int e0, int e1, int e2, int e3,                 \
        int* __restrict__ token, int* __restrict__ next_ids) {                                                    \
        argmax_row<T>(logits, vocab, n_excluded, e0, e1, e2, e3, token, next_ids);                                \
    }
QL_ARGMAX(f32, float)
QL_ARGMAX(bf16, __nv_bfloat16)
QL_ARGMAX(f16, __half)
