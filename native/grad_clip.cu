// grad_clip.cu — torch.nn.utils.clip_grad_norm_ (L2) over many gradients in three launches, with no host sync
// (backend/cuda/CudaGradClip; the CPU twin is optim/GradClip).
//
// Table: one ClipEntry per gradient of n > 0 elements (F32 or BF16), each split into chunks of CLIP_CHUNK
// elements; first_chunk is the prefix sum of the chunk counts, so CUDA block b works on chunk
// (b - first_chunk) of the last entry whose first_chunk <= b (as adamw.cu's multi-tensor launch).
//
//   grad_sumsq_multi   grid = total chunks, 256 threads: partials F64 [chunks] = each chunk's sum of x*x in float64
//                      (thread-strided sums, then a fixed shared-memory tree: the same order on every run).
//   grad_clip_coef     1 block of 256 threads: per gradient (thread t takes gradients t, t + 256, ...) the sum of
//                      its partials in chunk order, its norm rounded to float; the total = sqrt of the sum of the
//                      squared float norms (float64, fixed tree), rounded to float; then, in float as the CPU twin,
//                      coef = max_norm / (total + 1e-6f) clamped to 1 (NaN stays NaN: a NaN scale is applied, as
//                      torch does). out F32 [2] = {total, clamped coef}.
//   grad_scale_multi   grid = total chunks, 256 threads: every element *= coef (read from the device), in float,
//                      rounded once to the gradient's dtype; nothing is written when coef == 1 (as the CPU twin
//                      skips the multiplication).
// Versus the CPU twin: each gradient's float64 sum is added in another order (float64 rounding, ~1e-16 relative),
// so a gradient's float norm, the total and the coefficient can differ in their last float bit in rare cases.
#include "activations.cuh"

struct ClipEntry {
    void* g;                 // F32 or BF16 [n]
    long long n;
    long long first_chunk;
    int dtype;               // 0 = F32, 1 = BF16
    int pad;
};
static_assert(sizeof(ClipEntry) == 32, "ClipEntry layout is fixed: CudaGradClip writes it");

#define CLIP_CHUNK 4096
#define CLIP_THREADS 256

__device__ __forceinline__ int clip_entry_of(const ClipEntry* __restrict__ table, int count, long long b) {
    int lo = 0, hi = count - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (table[mid].first_chunk <= b) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// Fixed-order tree sum of one double per thread (blockDim.x == CLIP_THREADS); the result is valid in thread 0.
__device__ __forceinline__ double clip_block_sum(double v, double* scratch) {
    scratch[threadIdx.x] = v;
    __syncthreads();
    for (int w = CLIP_THREADS / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) scratch[threadIdx.x] += scratch[threadIdx.x + w];
        __syncthreads();
    }
    return scratch[0];
}

extern "C" __global__ void __launch_bounds__(CLIP_THREADS)
grad_sumsq_multi(const ClipEntry* __restrict__ table, int count, double* __restrict__ partials) {
    __shared__ int entry_index;
    __shared__ double scratch[CLIP_THREADS];
    const long long b = blockIdx.x;
    if (threadIdx.x == 0) entry_index = clip_entry_of(table, count, b);
    __syncthreads();
    const ClipEntry e = table[entry_index];
    const long long start = (b - e.first_chunk) * CLIP_CHUNK;
    const long long end = min(e.n, start + CLIP_CHUNK);
    double s = 0;
    if (e.dtype == 0) {
        const float* g = static_cast<const float*>(e.g);
        for (long long i = start + threadIdx.x; i < end; i += CLIP_THREADS) {
            double x = (double)g[i];
            s += x * x;
        }
    } else {
        const __nv_bfloat16* g = static_cast<const __nv_bfloat16*>(e.g);
        for (long long i = start + threadIdx.x; i < end; i += CLIP_THREADS) {
            double x = (double)to_f32(g[i]);
            s += x * x;
        }
    }
    double total = clip_block_sum(s, scratch);
    if (threadIdx.x == 0) partials[b] = total;
}

extern "C" __global__ void __launch_bounds__(CLIP_THREADS)
grad_clip_coef(const ClipEntry* __restrict__ table, int count, const double* __restrict__ partials, float max_norm,
               float* __restrict__ out) {
    __shared__ double scratch[CLIP_THREADS];
    double acc = 0;
    for (int t = threadIdx.x; t < count; t += CLIP_THREADS) {
        const ClipEntry e = table[t];
        const long long chunks = (e.n + CLIP_CHUNK - 1) / CLIP_CHUNK;
        double s = 0;
        for (long long c = 0; c < chunks; c++) s += partials[e.first_chunk + c];
        float norm = (float)sqrt(s);
        acc += (double)norm * (double)norm;
    }
    double sum = clip_block_sum(acc, scratch);
    if (threadIdx.x == 0) {
        float total = (float)sqrt(sum);
        float coef = __fdiv_rn(max_norm, __fadd_rn(total, 1e-6f));
        float clamped = coef >= 1.0f ? 1.0f : coef;   // Math.min(coef, 1f): NaN stays NaN
        out[0] = total;
        out[1] = clamped;
    }
}

extern "C" __global__ void __launch_bounds__(CLIP_THREADS)
grad_scale_multi(const ClipEntry* __restrict__ table, int count, const float* __restrict__ total_and_coef) {
    const float c = total_and_coef[1];
    if (c == 1.0f) return;   // the CPU twin skips the multiplication; NaN != 1: applied
    __shared__ int entry_index;
    const long long b = blockIdx.x;
    if (threadIdx.x == 0) entry_index = clip_entry_of(table, count, b);
    __syncthreads();
    const ClipEntry e = table[entry_index];
    const long long start = (b - e.first_chunk) * CLIP_CHUNK;
    const long long end = min(e.n, start + CLIP_CHUNK);
    if (e.dtype == 0) {
        float* g = static_cast<float*>(e.g);
        for (long long i = start + threadIdx.x; i < end; i += CLIP_THREADS) g[i] = __fmul_rn(g[i], c);
    } else {
        __nv_bfloat16* g = static_cast<__nv_bfloat16*>(e.g);
        for (long long i = start + threadIdx.x; i < end; i += CLIP_THREADS) g[i] = from_f32<__nv_bfloat16>(__fmul_rn(to_f32(g[i]), c));
    }
}
