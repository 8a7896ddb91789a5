// lora_fold.cuh — the adapter's columns of the LoRA fold's weight W'_i = [W_i | 0 .. s_i B_i .. 0]
// (backend/cuda/CudaLoraFold), shared by lora_fold.cu's lora_fold_b_bf16 and nf4.cu's q4_dequantize_fold_bf16.
#pragma once
#include "common.cuh"

// Columns [in, ldw) of every row of w (BF16 [rows, ldw]): s * b[row, c - col0] rounded once to BF16 for
// c - in in [col0, col0 + r), else 0 (the other adapters' blocks and the padding: their H columns must not
// reach this output). Eight columns (one 16-byte store) per item: (ldw - in) and in are multiples of 8 and w is
// 16-byte aligned (the launchers check). Grid-stride over rows x (ldw - in) / 8 items.
__device__ __forceinline__ void lora_fold_fill_b(__nv_bfloat16* __restrict__ w, int64_t ldw, int rows, int in,
                                                 const float* __restrict__ b, int col0, int r, float s) {
    const int chunks = static_cast<int>(ldw - in) / 8;
    const int64_t total = static_cast<int64_t>(rows) * chunks;
    for (int64_t i = global_thread_index(); i < total; i += grid_stride()) {
        const int row = static_cast<int>(i / chunks), c0 = static_cast<int>(i - static_cast<int64_t>(row) * chunks) * 8;
        __align__(16) __nv_bfloat16 v[8];
#pragma unroll
        for (int e = 0; e < 8; e++) {
            const int j = c0 + e - col0;
            v[e] = f32_to_bf16(j >= 0 && j < r ? s * b[static_cast<int64_t>(row) * r + j] : 0.f);
        }
        *reinterpret_cast<uint4*>(w + row * ldw + in + c0) = *reinterpret_cast<const uint4*>(v);
    }
}
