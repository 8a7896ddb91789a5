// rmsnorm.cuh — the normalising pass shared by rmsnorm.cu and fused.cu (add + RMSNorm), so both round exactly as
// backend/cpu/RowOps.rmsNorm does: inv = (float)(1 / sqrt((double)(mean + eps))) from the block's float32 sum of
// squares; out = (x * inv) * weight, rounded once to T. vec = 1: rows of 16-byte packs (h a multiple of the pack,
// rows 16-byte aligned), else element by element. Each thread reads the same packs in its first pass (the caller's)
// and here, so a row written by the first pass is read back by the thread that wrote it.
#pragma once
#include "activations.cuh"

__device__ __forceinline__ float rmsnorm_inverse(float sum_of_squares, int h, float eps, float* scratch) {
    float mean = block_sum(sum_of_squares, scratch) / (float)h;
    return (float)(1.0 / sqrt((double)(mean + eps)));
}

template <typename T, typename W>
__device__ __forceinline__ void rmsnorm_write_row(const T* row, const W* __restrict__ w, T* __restrict__ dst, int h,
                                                  float inv, int vec) {
    constexpr int V = Pack16<T>::N;
    if (vec) {
        const int4* r4 = reinterpret_cast<const int4*>(row);
        int4* d4 = reinterpret_cast<int4*>(dst);
        for (int p = threadIdx.x; p < h / V; p += blockDim.x) {
            Pack16<T> a, z;
            a.raw = r4[p];
#pragma unroll
            for (int i = 0; i < V; i++) z.v[i] = from_f32<T>((to_f32(a.v[i]) * inv) * to_f32(w[p * V + i]));
            d4[p] = z.raw;
        }
    } else {
        for (int j = threadIdx.x; j < h; j += blockDim.x) dst[j] = from_f32<T>((to_f32(row[j]) * inv) * to_f32(w[j]));
    }
}

// Columns [h, ldo) of an output row written as zeros: a norm writing into the first h columns of a wider buffer (the
// LoRA fold's [x | H], backend/cuda/CudaLoraFold: H's columns start cleared, the fold's GEMM fills the adapters').
// vec: in 16-byte packs (h and ldo multiples of the pack, rows 16-byte aligned), else element by element.
template <typename T>
__device__ __forceinline__ void rmsnorm_zero_tail(T* __restrict__ dst, int h, int64_t ldo, int vec) {
    if (ldo <= h) return;
    if (vec) {
        constexpr int V = Pack16<T>::N;
        int4* d4 = reinterpret_cast<int4*>(dst);
        for (int64_t p = h / V + threadIdx.x; p < ldo / V; p += blockDim.x) d4[p] = make_int4(0, 0, 0, 0);
    } else {
        for (int64_t j = h + threadIdx.x; j < ldo; j += blockDim.x) dst[j] = from_f32<T>(0.f);
    }
}

