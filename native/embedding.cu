// embedding.cu — token embedding lookup.
//
// Tensors: ids I32 [n]; table [vocab, hidden] of W (float, bf16 or half: the checkpoint's dtype);
//          out [n, hidden] of T (float for F32 activations, bf16 for BF16).
// Launch:  grid = n blocks (one row each), 256 threads striding over hidden; rows of 16-bit W whose hidden is a
//          multiple of 8 (table and out rows then start 16-byte aligned: allocator blocks) are read 16 bytes per
//          thread and access, the rest element by element. The table may live in page-locked host memory read over
//          the bus (TransformerLM.setEmbeddingInHostMemory): wide reads are what keep that fast.
// Math it mirrors (CpuBackend.embedding): out[r, :] = table[ids[r], :] widened to float32 and rounded
//          once to T (exact when T is float, or when W == T). An id outside [0, vocab) cannot throw on the
//          device: the row is written as zeros and code 1 (id, vocab) goes to the status word, which the
//          backend checks at its next synchronization and turns into an IllegalArgumentException.
#include "activations.cuh"

template <typename T, typename W>
__device__ __forceinline__ void embedding_impl(const int* __restrict__ ids, const W* __restrict__ table,
                                               T* __restrict__ out, int vocab, int hidden, int* status) {
    int row = blockIdx.x;
    int id = ids[row];
    T* dst = out + (int64_t)row * hidden;
    if (id < 0 || id >= vocab) {
        if (threadIdx.x == 0) report_error(status, 1, id, vocab);
        for (int j = threadIdx.x; j < hidden; j += blockDim.x) dst[j] = from_f32<T>(0.f);
        return;
    }
    const W* src = table + (int64_t)id * hidden;
    if constexpr (sizeof(W) == 2) {
        if (hidden % 8 == 0) {
            const int4* src4 = reinterpret_cast<const int4*>(src);
            for (int p = threadIdx.x; p < hidden / 8; p += blockDim.x) {
                Pack16<W> w;
                w.raw = src4[p];
#pragma unroll
                for (int e = 0; e < 8; e++) dst[8 * p + e] = from_f32<T>(to_f32(w.v[e]));
            }
            return;
        }
    }
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) dst[j] = from_f32<T>(to_f32(src[j]));
}

#define QL_EMBEDDING(tn, T)                                                                                      \
    extern "C" __global__ void embedding_fwd_##tn##_wf32(const int* ids, const float* table, T* out, int vocab,   \
                                                         int hidden, int* status) { pdl_enter();                             \
        embedding_impl(ids, table, out, vocab, hidden, status);                                                 \
    }                                                                                                           \
    extern "C" __global__ void embedding_fwd_##tn##_wbf16(const int* ids, const __nv_bfloat16* table, T* out,     \
                                                          int vocab, int hidden, int* status) { pdl_enter();                 \
        embedding_impl(ids, table, out, vocab, hidden, status);                                                 \
    }                                                                                                           \
    extern "C" __global__ void embedding_fwd_##tn##_wf16(const int* ids, const __half* table, T* out, int vocab,  \
                                                         int hidden, int* status) { pdl_enter();                             \
        embedding_impl(ids, table, out, vocab, hidden, status);                                                 \
    }

QL_FOR_ACT(QL_EMBEDDING)
