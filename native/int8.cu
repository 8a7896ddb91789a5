// int8.cu — LLM.int8 linear layer (bitsandbytes' MatMul8bitLt forward with an int8 weight), the CUDA
// side of dev.qlora4j.quant.Int8Matmul, whose numerics these kernels reproduce:
//   a   = x in its own dtype (F32 / BF16 / F16), a16 = fp16(a);
//   threshold > 0: outlier column j when some |a16[i, j]| >= t16 = fp16(threshold);
//   per row: SCA = fmaxf over |a16| of the values with |a16| < t16 (all values when threshold = 0),
//            starting at -0 (sparse) or +0; CA = (|a16| >= threshold && sparse) ? 0 : int8(rint(a16 * (127 / SCA)))
//            (the int conversion of NaN gives 0, the int8 cast wraps like Java's (byte)); outlier columns 0;
//   acc = CA . CB^T in int32 (exact);
//   h = fp16(fma((float(acc) * SCA) * SCB, 6.200012e-05f, bias16)) with the bias fused only for fp16 input,
//       else h = fp16(h + round(in, bias)); out = round(in, h);
//   out += sum over outlier columns c of a[i, c] * round(in, (CB[o, c] * SCB[o]) * (1/127)) (float32 here,
//       float64 on the CPU: equal to float32 accumulation accuracy), rounded to the input dtype.
// Dtype codes: 0 = float32, 1 = bfloat16, 2 = float16. Element counts are 64-bit.
#include "common.cuh"

#define DT_F32 0
#define DT_BF16 1
#define DT_F16 2

__device__ __forceinline__ float i8_load(const void* p, int64_t i, int dtype) {
    if (dtype == DT_BF16) return bf16_to_f32(reinterpret_cast<const __nv_bfloat16*>(p)[i]);
    if (dtype == DT_F16) return f16_to_f32(reinterpret_cast<const __half*>(p)[i]);
    return reinterpret_cast<const float*>(p)[i];
}

__device__ __forceinline__ void i8_store(void* p, int64_t i, int dtype, float v) {
    if (dtype == DT_BF16) reinterpret_cast<__nv_bfloat16*>(p)[i] = f32_to_bf16(v);
    else if (dtype == DT_F16) reinterpret_cast<__half*>(p)[i] = f32_to_f16(v);
    else reinterpret_cast<float*>(p)[i] = v;
}

__device__ __forceinline__ float i8_round(float v, int dtype) {
    if (dtype == DT_BF16) return bf16_to_f32(f32_to_bf16(v));
    if (dtype == DT_F16) return f16_to_f32(f32_to_f16(v));
    return v;
}

__device__ __forceinline__ float as_f16(float v) { return f16_to_f32(f32_to_f16(v)); }

// flags[j] = 1 for outlier columns of x [n, k] (flags zeroed by the launcher). Grid-stride, block 256.
extern "C" __global__ void __launch_bounds__(256) i8_outlier_flags(const void* __restrict__ x, int x_dtype, int64_t n, int k,
                                                                   float t16, uint8_t* __restrict__ flags) {
    int64_t total = n * k;
    for (int64_t i = global_thread_index(); i < total; i += grid_stride()) {
        if (fabsf(as_f16(i8_load(x, i, x_dtype))) >= t16) flags[i % k] = 1;  // benign race: all write 1
    }
}

// cols[0 .. count) = the flagged columns, ascending; count[0] = their number. One block of 1024 threads.
extern "C" __global__ void __launch_bounds__(1024) i8_compact_columns(const uint8_t* __restrict__ flags, int k,
                                                                      int* __restrict__ cols, int* __restrict__ count) {
    __shared__ int warp_sums[32];
    __shared__ int base;
    if (threadIdx.x == 0) base = 0;
    __syncthreads();
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int j0 = 0; j0 < k; j0 += 1024) {
        int j = j0 + threadIdx.x;
        bool f = j < k && flags[j] != 0;
        unsigned ballot = __ballot_sync(0xffffffffu, f);
        if (lane == 0) warp_sums[warp] = __popc(ballot);
        __syncthreads();
        int before = base;
        for (int w = 0; w < warp; w++) before += warp_sums[w];
        if (f) cols[before + __popc(ballot & ((1u << lane) - 1))] = j;
        __syncthreads();
        if (threadIdx.x == 0) {
            int s = 0;
            for (int w = 0; w < 32; w++) s += warp_sums[w];
            base += s;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) count[0] = base;
}

// Row quantization: one block (256 threads) per row i of x [n, k]: sca[i] and ca[i, :]. sparse = threshold > 0.
extern "C" __global__ void __launch_bounds__(256) i8_quantize_rows(const void* __restrict__ x, int x_dtype, int64_t n, int k,
                                                                   float threshold, float t16, int sparse,
                                                                   const uint8_t* __restrict__ flags,
                                                                   int8_t* __restrict__ ca, float* __restrict__ sca) {
    __shared__ float red[8];
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
        const int64_t off = i * k;
        float m = sparse ? -0.0f : 0.0f;
        for (int j = threadIdx.x; j < k; j += blockDim.x) {
            float a = fabsf(as_f16(i8_load(x, off + j, x_dtype)));
            if (!sparse || a < t16) m = fmaxf(m, a);
        }
#pragma unroll
        for (int s = 16; s > 0; s >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, s));
        if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
        __syncthreads();
        float amax = red[0];
        for (int w = 1; w < 8; w++) amax = fmaxf(amax, red[w]);
        __syncthreads();  // red is reused by the next row
        if (threadIdx.x == 0) sca[i] = amax;
        float scale = __fdiv_rn(127.0f, amax);
        for (int j = threadIdx.x; j < k; j += blockDim.x) {
            float v = as_f16(i8_load(x, off + j, x_dtype));
            int8_t q;
            if ((sparse && fabsf(v) >= threshold) || (flags != nullptr && flags[j])) q = 0;
            else q = (int8_t)__float2int_rn(__fmul_rn(v, scale));
            ca[off + j] = q;
        }
    }
}

// acc [n, m] = ca [n, k] . cb [m, k]^T in int32. 64 x 64 output tile per block of 256 threads (4 x 4 each),
// k in steps of 64 bytes staged in shared memory as 32-bit words (zero padding past k), __dp4a products.
#define I8_TILE 64
#define I8_KT 64
#define I8_KW (I8_KT / 4)

__device__ __forceinline__ int load_word(const int8_t* __restrict__ p, int64_t rows, int k, int64_t r, int kk, bool aligned) {
    if (r >= rows) return 0;
    const int8_t* row = p + r * (int64_t)k;
    if (aligned && kk + 4 <= k) return *reinterpret_cast<const int*>(row + kk);
    int v = 0;
#pragma unroll
    for (int b = 0; b < 4; b++) {
        int idx = kk + b;
        int byte = idx < k ? (int)(uint8_t)row[idx] : 0;
        v |= byte << (8 * b);
    }
    return v;
}

extern "C" __global__ void __launch_bounds__(256) i8_gemm_dp4a(const int8_t* __restrict__ ca, const int8_t* __restrict__ cb,
                                                               int* __restrict__ acc, int n, int m, int k) {
    __shared__ int As[I8_TILE][I8_KW + 1];
    __shared__ int Bs[I8_TILE][I8_KW + 1];
    int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    int64_t row0 = (int64_t)blockIdx.y * I8_TILE, col0 = (int64_t)blockIdx.x * I8_TILE;
    bool aligned = (k & 3) == 0;
    int sum[4][4] = {};
    for (int k0 = 0; k0 < k; k0 += I8_KT) {
        for (int e = threadIdx.x; e < I8_TILE * I8_KW; e += 256) {
            int r = e / I8_KW, w = e % I8_KW;
            As[r][w] = load_word(ca, n, k, row0 + r, k0 + 4 * w, aligned);
            Bs[r][w] = load_word(cb, m, k, col0 + r, k0 + 4 * w, aligned);
        }
        __syncthreads();
#pragma unroll
        for (int w = 0; w < I8_KW; w++) {
            int a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; i++) { a[i] = As[ty + 16 * i][w]; b[i] = Bs[tx + 16 * i][w]; }
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) sum[i][j] = __dp4a(a[i], b[j], sum[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int64_t r = row0 + ty + 16 * i;
        if (r >= n) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int64_t c = col0 + tx + 16 * j;
            if (c < m) acc[r * m + c] = sum[i][j];
        }
    }
}

// out [n, m] (input dtype) = the int8_mm_dequant epilogue of acc. Grid-stride, block 256.
extern "C" __global__ void __launch_bounds__(256) i8_dequant(const int* __restrict__ acc, const float* __restrict__ sca,
                                                             const float* __restrict__ scb, const void* __restrict__ bias,
                                                             int bias_dtype, int in_dtype, void* __restrict__ out,
                                                             int64_t n, int m) {
    const float MM_DEQUANT_CONST = 6.200012e-05f;
    int64_t total = n * m;
    for (int64_t idx = global_thread_index(); idx < total; idx += grid_stride()) {
        int64_t i = idx / m;
        int o = (int)(idx - i * m);
        float p = __fmul_rn(__fmul_rn((float)acc[idx], sca[i]), scb[o]);
        bool has_bias = bias != nullptr;
        float b = has_bias ? i8_round(i8_load(bias, o, bias_dtype), in_dtype) : 0.0f;
        bool fused = has_bias && in_dtype == DT_F16;
        float h = as_f16(fmaf(p, MM_DEQUANT_CONST, fused ? b : 0.0f));
        if (has_bias && !fused) h = as_f16(__fadd_rn(h, b));
        i8_store(out, idx, in_dtype, i8_round(h, in_dtype));
    }
}

// out[i, o] = round(in, out[i, o] + sum_c x[i, cols[c]] * round(in, (cb[o, cols[c]] * scb[o]) * (1/127))).
// Launched only when the host knows count > 0 might hold; reads count from device memory. Grid-stride, block 256.
extern "C" __global__ void __launch_bounds__(256) i8_outlier_add(const void* __restrict__ x, int in_dtype,
                                                                 const int* __restrict__ cols, const int* __restrict__ count,
                                                                 const int8_t* __restrict__ cb, const float* __restrict__ scb,
                                                                 void* __restrict__ out, int64_t n, int m, int k) {
    const float INV_127 = 1.0f / 127.0f;
    int ncols = count[0];
    if (ncols == 0) return;
    int64_t total = n * m;
    for (int64_t idx = global_thread_index(); idx < total; idx += grid_stride()) {
        int64_t i = idx / m;
        int o = (int)(idx - i * m);
        float s = i8_load(out, idx, in_dtype);
        for (int c = 0; c < ncols; c++) {
            int j = cols[c];
            float wv = i8_round(__fmul_rn(__fmul_rn((float)cb[(int64_t)o * k + j], scb[o]), INV_127), in_dtype);
            s = fmaf(i8_load(x, i * k + j, in_dtype), wv, s);
        }
        i8_store(out, idx, in_dtype, i8_round(s, in_dtype));
    }
}

// w [m, k] in out_dtype = round(out, (cb * scb[row]) * (1/127)) (Int8Weight.dequantize, then the cast). Grid-stride.
extern "C" __global__ void __launch_bounds__(256) i8_dequantize_weight(const int8_t* __restrict__ cb, const float* __restrict__ scb,
                                                                       void* __restrict__ w, int out_dtype, int64_t m, int k) {
    const float INV_127 = 1.0f / 127.0f;
    int64_t total = m * k;
    for (int64_t idx = global_thread_index(); idx < total; idx += grid_stride()) {
        int64_t r = idx / k;
        i8_store(w, idx, out_dtype, __fmul_rn(__fmul_rn((float)cb[idx], scb[r]), INV_127));
    }
}
