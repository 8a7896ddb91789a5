// lora_fold.cu — the two small kernels of the LoRA fold (backend/cuda/CudaLoraFold): a 4-bit base layer and its LoRA
// adapters as ONE GEMM over a longer k,
//
//     y_i = x W_i^T + s_i (x A_i^T) B_i^T  =  [x | H] [W_i | 0 .. s_i B_i .. 0]^T,     H = x [A_0; A_1; ...]^T,
//
// so y is written once by the base GEMM instead of being read and written again by a second, skinny GEMM per
// adapter. X' = [x | H] is [n, in + R] (R = sum of the ranks, padded with zero columns to 64), W'_i = [W_i | block of s_i B_i] is
// [out_i, in + R]: the dequantize writes W_i with a row stride (nf4.cu, q4_dequantize_rows_bf16), these kernels
// fill the rest. Tensors are BF16 except B (the F32 master weight [out, r]).
#include "common.cuh"

// Columns [in, ldw) of every row of w (BF16 [rows, ldw]): s * b[row, c - col0] rounded once to BF16 for
// c - in in [col0, col0 + r), else 0 (the other adapters' blocks and the padding: their H columns must not
// reach this output). Eight columns (one 16-byte store) per item: (ldw - in) and in are multiples of 8 and w is
// 16-byte aligned (the launcher checks). 1-D grid-stride over rows x (ldw - in) / 8 items.
extern "C" __global__ void lora_fold_b_bf16(__nv_bfloat16* __restrict__ w, int64_t ldw, int rows, int in,
                                            const float* __restrict__ b, int col0, int r, float s) { pdl_enter();
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

// dst[row, c] = src[row, c] for c < cols and 0 for c in [cols, zero_to), rows of BF16 with row strides ldd and lds
// (elements): x into X' with H's columns cleared, or H out of X'. In 16-byte chunks: cols, zero_to, ldd, lds are
// multiples of 8 and both pointers 16-byte aligned (the launcher checks). 1-D grid-stride over the chunks.
extern "C" __global__ void copy_columns_bf16(__nv_bfloat16* __restrict__ dst, int64_t ldd,
                                             const __nv_bfloat16* __restrict__ src, int64_t lds, int rows, int cols,
                                             int zero_to) { pdl_enter();
    const int chunks = zero_to / 8;
    const int64_t total = static_cast<int64_t>(rows) * chunks;
    for (int64_t i = global_thread_index(); i < total; i += grid_stride()) {
        const int64_t row = i / chunks;
        const int c = static_cast<int>(i - row * chunks) * 8;
        const uint4 v = c < cols ? *reinterpret_cast<const uint4*>(src + row * lds + c) : make_uint4(0u, 0u, 0u, 0u);
        *reinterpret_cast<uint4*>(dst + row * ldd + c) = v;
    }
}
