// lora_fold.cu — the two small kernels of the LoRA fold (backend/cuda/CudaLoraFold): a 4-bit base layer and its LoRA
// adapters as ONE GEMM over a longer k,
//
//     y_i = x W_i^T + s_i (x A_i^T) B_i^T  =  [x | H] [W_i | 0 .. s_i B_i .. 0]^T,     H = x [A_0; A_1; ...]^T,
//
// so y is written once by the base GEMM instead of being read and written again by a second, skinny GEMM per
// adapter. X' = [x | H] is [n, in + R] (R = sum of the ranks, padded with zero columns to 64), W'_i = [W_i | block of s_i B_i] is
// [out_i, in + R]: the dequantize writes W_i with a row stride (nf4.cu, q4_dequantize_rows_bf16), these kernels
// fill the rest. Tensors are BF16 except B (the F32 master weight [out, r]).
#include "lora_fold.cuh"

// W'_i's adapter columns (lora_fold.cuh); 1-D grid-stride over rows x (ldw - in) / 8 items.
extern "C" __global__ void lora_fold_b_bf16(__nv_bfloat16* __restrict__ w, int64_t ldw, int rows, int in,
                                            const float* __restrict__ b, int col0, int r, float s) { pdl_enter();
    lora_fold_fill_b(w, ldw, rows, in, b, col0, r, s);
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
