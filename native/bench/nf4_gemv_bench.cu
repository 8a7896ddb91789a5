// nf4_gemv_bench.cu — standalone, self-checking microbenchmark of the NF4 decode GEMVs: v5 rows (native/nf4_gemv5.cuh,
// M = 1, exact and bnb numerics), v4 (native/nf4_gemv4.cuh, bitsandbytes inference numerics), v2 / v3 (native/nf4_gemv.cu, exact numerics) against cuBLAS bf16 and a pure
// streaming read of the same bytes (nf4.cu's stream / hybrid kernels too when built with -DQL_BENCH_OLD).
//
//   nvcc -O3 -std=c++17 -arch=sm_90a -I native native/bench/nf4_gemv_bench.cu -lcublas -o /tmp/gb && /tmp/gb
//   (no cuBLAS headers / link library: -I <dir with a stub cublas_v2.h> <dir>/cublas_shim.cpp -ldl, see README.md)
//
// v6 (native/nf4_gemv6.cuh): exact and bnb numerics, M = 1..16, bf16 and f16, plus timing-only none / loads twins.
// -DQL_BENCH_V2_ONLY builds only the v2 / v2a / v2il / v3 variants (native/nf4_gemv.cu; a much shorter compile);
// with -DQL_BENCH_V8_ONLY as well, only v8 and its v2a references.
// Environment: QL_GEMV_ONLY=a,b (only variants whose name contains a or b), QL_GEMV_SHAPES=4096x11008,... (timed
// shapes), QL_GEMV_NOSWEEP=1 (skip the small-shape correctness sweep), QL_GEMV_PROFILE=1 (a few launches for ncu).
//
// v4 variants are checked against the "bnb inference" numerics (weight = round_T(round_T(code) * round_T(absmax)))
// v7 (native/nf4_gemv7.cuh, M = 1) against bitsandbytes' batch-1 numerics: the same weight, each product x * w rounded
// to T, f32 sums (reference: float64 sum of the rounded products);
// in bf16 AND f16 (x, bias, y and compute in T), M = 1..16; v2 / v3 against the exact contract in bf16.
//
// Weights are random, in the exact bitsandbytes layout: packed [(n+1)/2] bytes (value 2i = high nibble of byte i),
// blocks of `blocksize` consecutive flattened values share an absmax (F32), or with double quantization a U8 code per
// block -> fl(fl(nested_code[q] * nested_absmax[block / 256]) + offset). Every variant is checked before it is timed:
//   exact: x rows one-hot (row m = e_{k_m}), so y[m, o] must equal the decoded bf16 weight [o, k_m] bit for bit;
//   random: random x and a bias against a float64 reference, |y - ref| <= 2^-7 |ref| + 2e-5 sum|w x| (f32 order).
// Any failure prints FAIL and the process exits 1 at the end. Timings: CUDA graphs of 20 launches rotating over
// weight copies (> 200 MB, so the 50 MB L2 never holds the weight), median of 15 graph launches.
#include "nf4_gemv.cu"
#include "nf4_gemv8.cuh"
#ifndef QL_BENCH_V2_ONLY
#include "nf4_gemv4.cuh"
#include "nf4_gemv5.cuh"
#include "nf4_gemv6.cuh"
#include "nf4_gemv7.cuh"
#endif
#ifdef QL_BENCH_OLD
#include "nf4.cu"
#endif

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#define CK(x) check_cuda((x), #x, __LINE__)
static void check_cuda(cudaError_t e, const char* what, int line) {
    if (e != cudaSuccess) {
        fprintf(stderr, "CUDA error %s at line %d: %s\n", cudaGetErrorString(e), line, what);
        exit(2);
    }
}
#define CB(x) do { cublasStatus_t s_ = (x); if (s_ != CUBLAS_STATUS_SUCCESS) { fprintf(stderr, "cuBLAS %d at %d\n", (int)s_, __LINE__); exit(2); } } while (0)

static int failures = 0;
static int g_sms = 132;  // set from the device in main()

// ---- random data on the device (hash-based, reproducible)
__device__ __forceinline__ uint32_t hash32(uint64_t i, uint64_t seed) {
    uint64_t z = i * 0x9E3779B97F4A7C15ull + seed * 0xBF58476D1CE4E5B9ull + 0x94D049BB133111EBull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (uint32_t)(z ^ (z >> 31));
}
__global__ void k_fill_bytes(uint8_t* p, size_t n, uint64_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) p[i] = (uint8_t)hash32(i, seed);
}
__global__ void k_fill_uniform(float* p, size_t n, uint64_t seed, float lo, float hi) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = lo + (hi - lo) * (hash32(i, seed) >> 8) * (1.0f / 16777216.0f);
}
__global__ void k_fill_bf16(__nv_bfloat16* p, size_t n, uint64_t seed, float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = __float2bfloat16_rn(scale * (2.0f * (hash32(i, seed) >> 8) * (1.0f / 16777216.0f) - 1.0f));
}
__global__ void k_fill_f16(__half* p, size_t n, uint64_t seed, float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = __float2half_rn(scale * (2.0f * (hash32(i, seed) >> 8) * (1.0f / 16777216.0f) - 1.0f));
}
// T = 16-bit dtype of x: 1 bf16, 2 f16
__global__ void k_onehot(uint16_t* x, int M, int K, const int* ks, int dt) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < M * K; i += gridDim.x * blockDim.x)
        x[i] = (i % K) == ks[i / K] ? (dt == 2 ? 0x3C00 : 0x3F80) : 0;
}

// ---- reference: one thread per (m, o), float64 sum of the exact products; also sum |w x|.
struct DevWeight {
    uint8_t* packed; void* absmax; float* nested_absmax; float* nested_code; float offset;
    int log2_bs; int nested_bs; int nested_shift; int nested;
};
// BNB: round_T(round_T(code) * round_T(absmax)) (v4), CODE: fl(round_T(code) * absmax) (v2a code: the codes alone in
// the mma, each block's float32 sum scaled by its absmax; a one-hot x gives this product rounded to T), else
// round_T(fl(code * absmax)) (v2 / v3); T = f16 if F16.
template <bool BNB, bool F16, bool CODE = false>
__device__ float ref_weight(const DevWeight& w, const float* code16, int64_t e) {
    int64_t block = e >> w.log2_bs;
    float amax;
    if (w.nested) {
        int q = reinterpret_cast<const uint8_t*>(w.absmax)[block];
        amax = __fadd_rn(__fmul_rn(w.nested_code[q], w.nested_absmax[block / w.nested_bs]), w.offset);
    } else {
        amax = reinterpret_cast<const float*>(w.absmax)[block];
    }
    uint32_t byte = w.packed[e >> 1];
    uint32_t q = (e & 1) ? (byte & 15) : (byte >> 4);
    if (CODE) {
        const float c = F16 ? __half2float(__float2half_rn(code16[q])) : __bfloat162float(__float2bfloat16_rn(code16[q]));
        return __fmul_rn(c, amax);
    }
    if (BNB) {
        if (F16) {
            const double c = __half2float(__float2half_rn(code16[q])), a = __half2float(__float2half_rn(amax));
            return __half2float(__double2half(c * a));
        }
        const double c = __bfloat162float(__float2bfloat16_rn(code16[q])), a = __bfloat162float(__float2bfloat16_rn(amax));
        return __bfloat162float(__double2bfloat16(c * a));
    }
    if (F16) return __half2float(__float2half_rn(__fmul_rn(code16[q], amax)));
    return __bfloat162float(__float2bfloat16_rn(__fmul_rn(code16[q], amax)));
}
template <bool F16>
__device__ __forceinline__ float t_to_f32(uint16_t v) {
    if (F16) return __half2float(__ushort_as_half(v));
    return __uint_as_float((uint32_t)v << 16);
}
template <bool F16>
__device__ __forceinline__ float t_round(float v) {
    if (F16) return __half2float(__float2half_rn(v));
    return __bfloat162float(__float2bfloat16_rn(v));
}
// PROD: every product x * w rounded to T (bitsandbytes' batch-1 kernel, v7): x * w is exact in float64 (two 16-bit
// values), so __double2{half,bfloat16} of it is the single rounding HMUL2 performs.
template <bool F16>
__device__ __forceinline__ double round_t_d(double v) {
    if (F16) return (double)__half2float(__double2half(v));
    return (double)__bfloat162float(__double2bfloat16(v));
}
template <bool BNB, bool F16, bool PROD = false, bool CODE = false>
__global__ void k_ref(DevWeight w, const float* code16, const uint16_t* x, int M, int N, int K,
                      const uint16_t* bias, float* ref, float* sabs) {
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= (int64_t)M * N) return;
    int m = (int)(i / N), o = (int)(i % N);
    double acc = 0, sa = 0;
    for (int k = 0; k < K; k++) {
        double p = (double)ref_weight<BNB, F16, CODE>(w, code16, (int64_t)o * K + k) * (double)t_to_f32<F16>(x[(int64_t)m * K + k]);
        if (PROD) p = round_t_d<F16>(p);
        acc += p;
        sa += fabs(p);
    }
    float b = bias ? t_to_f32<F16>(bias[o]) : 0.0f;
    ref[i] = t_round<F16>(__fadd_rn((float)acc, b));
    sabs[i] = (float)sa;
}

// ---- pure streaming read (sum of uint4): the practical ceiling for the same bytes
template <int UNROLL>
__global__ void k_stream_read(const uint4* __restrict__ p, size_t n16, uint32_t* out) {
    uint32_t acc = 0;
    size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    for (; i + (UNROLL - 1) * stride < n16; i += UNROLL * stride) {
        uint4 v[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) v[u] = nf4v2::ld_stream_u4<0>(p + i + u * stride);
#pragma unroll
        for (int u = 0; u < UNROLL; u++) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    for (; i < n16; i += stride) { uint4 v = p[i]; acc ^= v.x ^ v.y ^ v.z ^ v.w; }
    if (acc == 0x12345678u) out[0] = acc;
}

// ---- the weights of one shape
struct Shape { int K, N; };
struct Q4 {
    std::vector<DevWeight> copies;
    float* code16;
    size_t bytes;  // packed + absmax (+ nested absmax) of one copy
    int K, N, blocksize; bool dq;
};
static const float NF4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f,
    0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
    0.7229568362236023f, 1.0f};

static Q4 make_q4(int K, int N, int blocksize, bool dq, int copies, uint64_t seed) {
    Q4 q; q.K = K; q.N = N; q.blocksize = blocksize; q.dq = dq;
    size_t n = (size_t)N * K, packed = (n + 1) / 2, blocks = (n + blocksize - 1) / blocksize, nblocks = (blocks + 255) / 256;
    CK(cudaMalloc(&q.code16, 64));
    CK(cudaMemcpy(q.code16, NF4, 64, cudaMemcpyHostToDevice));
    float* ncode = nullptr;
    if (dq) {
        float h[256];
        for (int i = 0; i < 256; i++) h[i] = i / 255.0f * (i % 3 == 0 ? 0.75f : 1.0f);
        CK(cudaMalloc(&ncode, 1024));
        CK(cudaMemcpy(ncode, h, 1024, cudaMemcpyHostToDevice));
    }
    q.bytes = packed + (dq ? blocks + 4 * nblocks : 4 * blocks);
    for (int c = 0; c < copies; c++) {
        DevWeight w{};
        CK(cudaMalloc(&w.packed, packed + 16));
        k_fill_bytes<<<1024, 256>>>(w.packed, packed, seed * 131 + c);
        w.log2_bs = __builtin_ctz(blocksize);
        if (dq) {
            CK(cudaMalloc(&w.absmax, blocks));
            k_fill_bytes<<<1024, 256>>>((uint8_t*)w.absmax, blocks, seed * 131 + c + 77);
            CK(cudaMalloc(&w.nested_absmax, 4 * nblocks));
            k_fill_uniform<<<256, 256>>>(w.nested_absmax, nblocks, seed * 131 + c + 99, 0.01f, 0.08f);
            w.nested_code = ncode; w.offset = 0.0123f; w.nested_bs = 256; w.nested_shift = 8; w.nested = 1;
        } else {
            CK(cudaMalloc(&w.absmax, 4 * blocks));
            k_fill_uniform<<<1024, 256>>>((float*)w.absmax, blocks, seed * 131 + c + 77, 0.005f, 0.08f);
            w.nested_bs = 1; w.nested_shift = 0;
        }
        q.copies.push_back(w);
    }
    CK(cudaDeviceSynchronize());
    return q;
}
static void free_q4(Q4& q) {
    for (auto& w : q.copies) { cudaFree(w.packed); cudaFree(w.absmax); if (w.nested_absmax) cudaFree(w.nested_absmax); }
    if (q.dq && !q.copies.empty()) cudaFree(q.copies[0].nested_code);
    cudaFree(q.code16);
    q.copies.clear();
}

// ---- variants
// dt: dtype of x, bias, y and the compute: 1 = bf16, 2 = f16 (only variants with f16 = true take 2)
using Launch = std::function<void(const DevWeight&, const float* code16, const void* x, int M, int N, int K,
                                  const void* bias, void* y, cudaStream_t, int dt)>;
struct Variant {
    std::string name;
    Launch launch;          // M <= 16
    bool checked = false;   // false: timing only (wrong results by design)
    std::string facts;      // registers, local memory, blocks per SM, per NT
    bool extra = false;     // only timed on the M = 1 rows of the big sweep
    int max_m = 16;         // checked and timed only for M <= max_m
    bool bnb = false;       // numerics: bnb inference (v4) or the exact contract (v2 / v3)
    bool prod_t = false;    // bnb numerics with every product rounded to T (bnb's batch-1 kernel: v7)
    bool code = false;      // numerics of the code decode (v2a code): ref_weight's CODE
    bool f16 = false;       // also checked with f16 x / compute
    bool all_m = false;     // exact numerics: checked at every M = 1..16 of the sweep (else M = 1, 3, 8, 9, 16)
};

template <int NT, int W, int TILES, int DEPTH, int DEC, int PF, bool ROLLED>
static void launch_v2(const DevWeight& w, const float* code16, const void* x, int M, int N, int K, const void* bias,
                      void* y, cudaStream_t s) {
    dim3 grid((N + 16 * TILES - 1) / (16 * TILES));
    // the 64 KiB wide table: v2() has raised both instantiations' dynamic shared memory limit
    const int smem = nf4v2::wide_decode(DEC) ? nf4v2::WIDE_TABLE_BYTES : 0;
    nf4v2::gemv_kernel<false, NT, W, TILES, DEPTH, DEC, PF, ROLLED><<<grid, W * 32, smem, s>>>(
        w.packed, w.absmax, w.nested_absmax, w.nested_code, w.offset, w.log2_bs, w.nested_bs, w.nested_shift, w.nested,
        code16, (const uint16_t*)x, M, N, K, bias, 1, y, 1, 0);
}

// ROLLED: the chunk loop rolled (nf4_gemv.cu); DEC_PAIR has no m16 form (M <= 8 only, as in the engine).
template <int W, int TILES, int DEPTH, int DEC, int PF, bool ROLLED = false>
static Variant v2(const std::string& name, bool extra = false) {
    Variant v;
    v.name = name;
    v.checked = DEC != nf4v2::DEC_NONE;
    v.extra = extra;
    constexpr int NT2 = DEC == nf4v2::DEC_PAIR ? 1 : 2;
    if (DEC == nf4v2::DEC_PAIR) v.max_m = 8;
    v.bnb = DEC == nf4v2::DEC_BNB;  // checked against bitsandbytes' batch-1 weights (v4's numerics), bf16 only
    v.launch = [](const DevWeight& w, const float* c, const void* x, int M, int N, int K, const void* b, void* y, cudaStream_t s, int) {
        if (M <= 8) launch_v2<1, W, TILES, DEPTH, DEC, PF, ROLLED>(w, c, x, M, N, K, b, y, s);
        else launch_v2<NT2, W, TILES, DEPTH, DEC, PF, ROLLED>(w, c, x, M, N, K, b, y, s);
    };
    char buf[256];
    cudaFuncAttributes a1, a2;
    int b1 = 0, b2 = 0;
    CK(cudaFuncGetAttributes(&a1, nf4v2::gemv_kernel<false, 1, W, TILES, DEPTH, DEC, PF, ROLLED>));
    CK(cudaFuncGetAttributes(&a2, nf4v2::gemv_kernel<false, NT2, W, TILES, DEPTH, DEC, PF, ROLLED>));
    const int dsm = nf4v2::wide_decode(DEC) ? nf4v2::WIDE_TABLE_BYTES : 0;
    if (dsm > 0) {  // once, before any launch (launch_v2 relies on it)
        CK(cudaFuncSetAttribute(nf4v2::gemv_kernel<false, 1, W, TILES, DEPTH, DEC, PF, ROLLED>, cudaFuncAttributeMaxDynamicSharedMemorySize, dsm));
        CK(cudaFuncSetAttribute(nf4v2::gemv_kernel<false, NT2, W, TILES, DEPTH, DEC, PF, ROLLED>, cudaFuncAttributeMaxDynamicSharedMemorySize, dsm));
    }
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b1, nf4v2::gemv_kernel<false, 1, W, TILES, DEPTH, DEC, PF, ROLLED>, W * 32, dsm));
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b2, nf4v2::gemv_kernel<false, NT2, W, TILES, DEPTH, DEC, PF, ROLLED>, W * 32, dsm));
    snprintf(buf, sizeof buf, "m8: %d regs, %zu B local, %zu B smem, %d blocks/SM (%d warps); m16: %d regs, %zu B local, %d blocks/SM (%d warps)",
             a1.numRegs, a1.localSizeBytes, a1.sharedSizeBytes, b1, b1 * W, a2.numRegs, a2.localSizeBytes, b2, b2 * W);
    v.facts = buf;
    return v;
}

// The engine's pair / bnb kernels (nf4v2::gemv_kernel_aligned): the aligned path with DEPTH chunks per ring where
// nf4v2::fast_applies (every timed shape; the sweep's K tails and blocksizes also take the general rolled path).
template <int NT, int W, int DEPTH, int DEC>
static void launch_v2a(const DevWeight& w, const float* code16, const void* x, int M, int N, int K, const void* bias,
                       void* y, cudaStream_t s) {
    const int smem = nf4v2::wide_decode(DEC) ? nf4v2::WIDE_TABLE_BYTES : 0;  // raised in v2a()
    nf4v2::gemv_kernel_aligned<false, NT, W, DEPTH, 2, DEC><<<(N + 15) / 16, W * 32, smem, s>>>(
        w.packed, w.absmax, w.nested_absmax, w.nested_code, w.offset, w.log2_bs, w.nested_bs, w.nested_shift, w.nested,
        code16, (const uint16_t*)x, M, N, K, bias, 1, y, 1, 0);
}

// Timing only: the aligned path reading a tile-interleaved byte layout (nf4v2::load_fast IL): what a repacked weight
// would give. Wrong results by design (the bytes are in the row layout), the same decode work.
template <int DEPTH, int DEC>
__global__ void __launch_bounds__(256, 2) gemv_il_kernel(const uint8_t* __restrict__ packed, const void* __restrict__ absmax,
        const float* __restrict__ nested_absmax, const float* __restrict__ nested_code, float offset, int log2_blocksize,
        int nested_bs, int nested_shift, int nested, const float* __restrict__ code16, const uint16_t* __restrict__ x,
        int M, int N, int K, void* __restrict__ y) {
    nf4v2::Weight w{packed, absmax, nested_absmax, offset, log2_blocksize, nested_bs, nested_shift, nested};
    if (nested) nf4v2::gemv_body_fast<false, false, 1, 8, DEPTH, DEC, true, true>(w, nested_code, code16, x, M, N, K, nullptr, 0, y, 1, blockIdx.x);
    else nf4v2::gemv_body_fast<false, false, 1, 8, DEPTH, DEC, false, true>(w, nested_code, code16, x, M, N, K, nullptr, 0, y, 1, blockIdx.x);
}

template <int DEPTH, int DEC>
static Variant v2il(const std::string& name) {
    Variant v;
    v.name = name;
    v.checked = false;
    v.extra = false;
    v.max_m = 8;
    if (nf4v2::wide_decode(DEC)) CK(cudaFuncSetAttribute(gemv_il_kernel<DEPTH, DEC>, cudaFuncAttributeMaxDynamicSharedMemorySize, nf4v2::WIDE_TABLE_BYTES));
    v.launch = [](const DevWeight& w, const float* c, const void* x, int M, int N, int K, const void* b, void* y, cudaStream_t s, int) {
        if (K % 128 != 0 || N % 16 != 0) return;
        gemv_il_kernel<DEPTH, DEC><<<N / 16, 256, nf4v2::wide_decode(DEC) ? nf4v2::WIDE_TABLE_BYTES : 0, s>>>(
            w.packed, w.absmax, w.nested_absmax, w.nested_code, w.offset, w.log2_bs, w.nested_bs, w.nested_shift, w.nested,
            c, (const uint16_t*)x, M, N, K, y);
    };
    return v;
}

template <int W, int DEPTH, int DEC>
static Variant v2a(const std::string& name) {
    Variant v;
    v.name = name;
    v.checked = DEC != nf4v2::DEC_NONE;
    constexpr int NT2 = 2;  // the pair kernels have m16 forms since session 6 (one Smem per kernel)
    v.bnb = DEC == nf4v2::DEC_BNB;
    v.launch = [](const DevWeight& w, const float* c, const void* x, int M, int N, int K, const void* b, void* y, cudaStream_t s, int) {
        if (M <= 8) launch_v2a<1, W, DEPTH, DEC>(w, c, x, M, N, K, b, y, s);
        else launch_v2a<NT2, W, DEPTH, DEC>(w, c, x, M, N, K, b, y, s);
    };
    auto k1 = nf4v2::gemv_kernel_aligned<false, 1, W, DEPTH, 2, DEC>;
    auto k2 = nf4v2::gemv_kernel_aligned<false, NT2, W, DEPTH, 2, DEC>;
    const int dsm = nf4v2::wide_decode(DEC) ? nf4v2::WIDE_TABLE_BYTES : 0;
    if (dsm > 0) {
        CK(cudaFuncSetAttribute(k1, cudaFuncAttributeMaxDynamicSharedMemorySize, dsm));
        CK(cudaFuncSetAttribute(k2, cudaFuncAttributeMaxDynamicSharedMemorySize, dsm));
    }
    cudaFuncAttributes a1, a2;
    int b1 = 0, b2 = 0;
    CK(cudaFuncGetAttributes(&a1, k1));
    CK(cudaFuncGetAttributes(&a2, k2));
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b1, k1, W * 32, dsm));
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b2, k2, W * 32, dsm));
    char buf[256];
    snprintf(buf, sizeof buf, "m8: %d regs, %zu B local, %zu B smem, %d blocks/SM; m16: %d regs, %zu B local, %d blocks/SM",
             a1.numRegs, a1.localSizeBytes, a1.sharedSizeBytes, b1, a2.numRegs, a2.localSizeBytes, b2);
    v.facts = buf;
    return v;
}

// The code decode (nf4_gemv_code.cuh; = the engine's q4v2code_gemv_* with DEPTH = V2_CODE_DEPTH): NT 1 (m4) for
// M <= 4, NT 2 (m8) for M <= 8; bf16 and f16 (dt); code_applies shapes only (the sweep's checker skips the others, the
// engine gives them the exact kernels).
template <bool F16C, int NT, int DEPTH>
__global__ void __launch_bounds__(256, 2) gemv_code_kernel(V2_ENTRY_PARAMS) {
    V2_ENTRY_WEIGHT;
    nf4v2::gemv_code<F16C, NT, 8, DEPTH>(w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype, blockIdx.x);
}

// Timing only: the code kernel reading a tile-interleaved byte layout (as v2il): what a repacked weight would give.
template <int DEPTH>
__global__ void __launch_bounds__(256, 2) gemv_code_il_kernel(V2_ENTRY_PARAMS) {
    V2_ENTRY_WEIGHT;
    if (nested) nf4v2::gemv_body_code<false, 1, 8, DEPTH, true, true>(w, w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype, blockIdx.x);
    else nf4v2::gemv_body_code<false, 1, 8, DEPTH, false, true>(w, w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype, blockIdx.x);
}

template <int DEPTH>
static Variant v2code_il(const std::string& name) {
    Variant v;
    v.name = name;
    v.max_m = 4;
    CK(cudaFuncSetAttribute(gemv_code_il_kernel<DEPTH>, cudaFuncAttributeMaxDynamicSharedMemorySize, nf4v2::WIDE_TABLE_BYTES));
    v.launch = [](const DevWeight& w, const float* c, const void* x, int M, int N, int K, const void* b, void* y, cudaStream_t s, int dt) {
        if (K % 128 != 0 || N % 16 != 0) return;
        gemv_code_il_kernel<DEPTH><<<N / 16, 256, nf4v2::WIDE_TABLE_BYTES, s>>>(w.packed, w.absmax, w.nested_absmax,
            w.nested_code, w.offset, w.log2_bs, w.nested_bs, w.nested_shift, w.nested, c, (const uint16_t*)x, M, N, K, b, dt, y, dt, 0);
    };
    return v;
}

template <int DEPTH>
static Variant v2code(const std::string& name) {
    Variant v;
    v.name = name;
    v.checked = true;
    v.code = true;
    v.f16 = true;
    v.max_m = 8;
    auto k1 = gemv_code_kernel<false, 1, DEPTH>, k2 = gemv_code_kernel<false, 2, DEPTH>;
    auto h1 = gemv_code_kernel<true, 1, DEPTH>, h2 = gemv_code_kernel<true, 2, DEPTH>;
    for (auto k : {k1, k2, h1, h2}) CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, nf4v2::WIDE_TABLE_BYTES));
    v.launch = [](const DevWeight& w, const float* c, const void* x, int M, int N, int K, const void* b, void* y, cudaStream_t s, int dt) {
        auto k = dt == 2 ? (M <= 4 ? gemv_code_kernel<true, 1, DEPTH> : gemv_code_kernel<true, 2, DEPTH>)
                         : (M <= 4 ? gemv_code_kernel<false, 1, DEPTH> : gemv_code_kernel<false, 2, DEPTH>);
        k<<<(N + 15) / 16, 256, nf4v2::WIDE_TABLE_BYTES, s>>>(w.packed, w.absmax, w.nested_absmax, w.nested_code, w.offset,
            w.log2_bs, w.nested_bs, w.nested_shift, w.nested, c, (const uint16_t*)x, M, N, K, b, dt, y, dt, 0);
    };
    cudaFuncAttributes a1, a2;
    int b1 = 0, b2 = 0;
    CK(cudaFuncGetAttributes(&a1, k1));
    CK(cudaFuncGetAttributes(&a2, k2));
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b1, k1, 256, nf4v2::WIDE_TABLE_BYTES));
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b2, k2, 256, nf4v2::WIDE_TABLE_BYTES));
    char buf[256];
    snprintf(buf, sizeof buf, "m4: %d regs, %zu B local, %zu B smem, %d blocks/SM; m8: %d regs, %zu B local, %d blocks/SM",
             a1.numRegs, a1.localSizeBytes, a1.sharedSizeBytes, b1, a2.numRegs, a2.localSizeBytes, b2);
    v.facts = buf;
    return v;
}

// v8 (nf4_gemv8.cuh, bench only): the aligned pair decode fed by bulk copies into shared memory, persistent grid;
// rows 1..8. Where nf4v8::fast8_applies does not hold it launches the v2a pair kernel.
__global__ void __launch_bounds__(nf4v8::THREADS, nf4v8::BLOCKS_PER_SM) q4v8pair_gemv_bf16_m8(V2_ENTRY_PARAMS) {
    V2_ENTRY_WEIGHT;
    nf4v8::gemv8<false, 1>(double_round, w, nested_code, code16, x, M, N, K, bias, bias_dtype, y, y_dtype);
}

static Variant v8(const std::string& name) {
    Variant v;
    v.name = name;
    v.checked = true;
    v.max_m = 8;
    CK(cudaFuncSetAttribute(q4v8pair_gemv_bf16_m8, cudaFuncAttributeMaxDynamicSharedMemorySize, nf4v8::DYN_SMEM));
    v.launch = [](const DevWeight& w, const float* c, const void* x, int M, int N, int K, const void* b, void* y, cudaStream_t s, int) {
        if (!nf4v8::fast8_applies(K, w.log2_bs, w.nested, w.nested_shift)) {
            launch_v2a<1, 8, 3, nf4v2::DEC_PAIR>(w, c, x, M, N, K, b, y, s);
            return;
        }
        const int grid = std::min((N + 15) / 16, nf4v8::BLOCKS_PER_SM * g_sms);
        q4v8pair_gemv_bf16_m8<<<grid, nf4v8::THREADS, nf4v8::DYN_SMEM, s>>>(
            w.packed, w.absmax, w.nested_absmax, w.nested_code, w.offset, w.log2_bs, w.nested_bs, w.nested_shift, w.nested,
            c, (const uint16_t*)x, M, N, K, b, 1, y, 1, 0);
    };
    cudaFuncAttributes a;
    int blocks = 0;
    CK(cudaFuncGetAttributes(&a, q4v8pair_gemv_bf16_m8));
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, q4v8pair_gemv_bf16_m8, nf4v8::THREADS, nf4v8::DYN_SMEM));
    char buf[256];
    snprintf(buf, sizeof buf, "m8: %d regs, %zu B local, %zu B static + %d B dynamic smem, %d blocks/SM", a.numRegs,
             a.localSizeBytes, a.sharedSizeBytes, nf4v8::DYN_SMEM, blocks);
    v.facts = buf;
    return v;
}

// v3 (nf4_gemv_v3.cuh): persistent grid of min(MB, occupancy) blocks per SM, W warps, ring depth D.
// allM: M == 1 -> MAXM 1, M <= 4 -> MAXM 4 (M > 4 is the mma kernels' ground); otherwise M == 1 only.
template <int W, int MB, int D, int MAXM, int DEC>
static void launch_v3(const DevWeight& w, const float* code16, const void* x, int M, int N, int K, const void* bias,
                      void* y, cudaStream_t s) {
    auto fn = nf4v3::gemv3_kernel<W, MB, D, MAXM, DEC>;
    const int smem = nf4v3::x_smem_bytes(M, K);
    static int cached_smem = -1, cached_bps = 0;  // occupancy per dynamic smem size (queried outside graph capture)
    if (smem != cached_smem) {
        int bps = 0;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&bps, fn, W * 32, smem));
        cached_bps = std::max(1, std::min(bps, MB));
        cached_smem = smem;
    }
    fn<<<g_sms * cached_bps, W * 32, smem, s>>>(
        w.packed, w.absmax, w.nested_absmax, w.nested_code, w.offset, w.log2_bs, w.nested_bs, w.nested_shift, w.nested,
        code16, (const uint16_t*)x, M, N, K, bias, 1, y, 1, 0);
}

template <int W, int MB, int D, int DEC, bool ALLM = false>
static Variant v3(const std::string& name) {
    constexpr bool allM = ALLM;
    Variant v;
    v.name = name;
    v.checked = DEC != nf4v3::DEC_NONE;
    v.extra = false;
    v.max_m = allM ? 4 : 1;
    if constexpr (ALLM) {  // (compile-time: the MAXM 4 kernel only where used)
        v.launch = [](const DevWeight& w, const float* c, const void* x, int M, int N, int K, const void* b, void* y, cudaStream_t s, int) {
            if (M == 1) launch_v3<W, MB, D, 1, DEC>(w, c, x, M, N, K, b, y, s);
            else launch_v3<W, MB, D, 4, DEC>(w, c, x, M, N, K, b, y, s);
        };
    } else {
        v.launch = [](const DevWeight& w, const float* c, const void* x, int M, int N, int K, const void* b, void* y, cudaStream_t s, int) {
            launch_v3<W, MB, D, 1, DEC>(w, c, x, M, N, K, b, y, s);
        };
    }
    char buf[256];
    cudaFuncAttributes a;
    int b0 = 0, b22 = 0;
    CK(cudaFuncGetAttributes(&a, nf4v3::gemv3_kernel<W, MB, D, 1, DEC>));
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b0, nf4v3::gemv3_kernel<W, MB, D, 1, DEC>, W * 32, 0));
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b22, nf4v3::gemv3_kernel<W, MB, D, 1, DEC>, W * 32, 22016));
    snprintf(buf, sizeof buf, "m1: %d regs, %zu B local, %zu B smem + x; fit/SM %d (x in smem, K=11008: %d); launched min(%d, fit) x %d SMs%s",
             a.numRegs, a.localSizeBytes, a.sharedSizeBytes, b0, b22, MB, g_sms, allM ? "; M <= 4 (MAXM 1/4)" : "; M = 1 only");
    v.facts = buf;
    return v;
}

static float* g_partials = nullptr;
static int* g_counters = nullptr;
static int g_smem_optin = 0;  // set in main(): the device's opt-in shared memory per block (v6)

#ifndef QL_BENCH_V2_ONLY
static float* g_scratch4 = nullptr;            // v4 split partials
static const size_t SCRATCH4_BYTES = 256u << 20;

// v4 (nf4_gemv4.cuh): persistent grid, W warps per block, BPS blocks per SM (launch bounds), ring depth D, TL
// 16-row tiles per warp-tile; upb = units per block wanted (balance; 0 = as few splits as x allows); b0 > 0
// overrides SMs x resident blocks (the sweep uses a tiny grid so that blocks run many units across split changes).
template <bool F16C, int NT, int TL, int W, int BPS, int D, int DEC>
static void launch_v4(const DevWeight& w, const float* code16, const void* x, int M, int N, int K, const void* bias,
                      void* y, cudaStream_t s, int upb, int b0o) {
    auto fn = nf4v4::gemv4_kernel<F16C, NT, TL, W, BPS, D, DEC>;
    constexpr int smem = nf4v4::smem_bytes(W, TL, NT, D);
    static int bps = -1;  // per instantiation, queried outside graph capture (the check runs first)
    if (bps < 0) {
        CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&bps, fn, W * 32, smem));
        if (bps < 1) { fprintf(stderr, "v4 kernel does not fit an SM (W=%d smem=%d)\n", W, smem); exit(2); }
    }
    const int b0 = b0o > 0 ? b0o : g_sms * bps;
    const nf4v4::Geometry geo = nf4v4::geometry(M, N, K, TL, W, b0, upb);
    if ((size_t)geo.S * N * 64 > SCRATCH4_BYTES && geo.S > 1) { fprintf(stderr, "v4 scratch too small\n"); exit(2); }
    const int dt = F16C ? 2 : 1;
    fn<<<geo.grid, W * 32, smem, s>>>(w.packed, w.absmax, w.nested_absmax, w.nested_code, w.offset, w.log2_bs,
                                      w.nested_bs, w.nested_shift, w.nested, code16, (const uint16_t*)x, M, N, K, bias,
                                      dt, y, dt, geo.S, geo.cps, g_scratch4, g_counters);
}

template <int TL, int W, int BPS, int D, int DEC, bool F16OK>
static Variant v4(const std::string& name, int upb, int b0o = 0, bool extra = false) {
    Variant v;
    v.name = name;
    v.checked = DEC == nf4v4::DEC_PAIR;
    v.extra = extra;
    v.bnb = true;
    v.f16 = F16OK;
    v.launch = [upb, b0o](const DevWeight& w, const float* c, const void* x, int M, int N, int K, const void* b, void* y,
                          cudaStream_t s, int dt) {
        if constexpr (F16OK) {
            if (dt == 2) {
                if (M <= 8) launch_v4<true, 1, TL, W, BPS, D, DEC>(w, c, x, M, N, K, b, y, s, upb, b0o);
                else launch_v4<true, 2, TL, W, BPS, D, DEC>(w, c, x, M, N, K, b, y, s, upb, b0o);
                return;
            }
        }
        if (M <= 8) launch_v4<false, 1, TL, W, BPS, D, DEC>(w, c, x, M, N, K, b, y, s, upb, b0o);
        else launch_v4<false, 2, TL, W, BPS, D, DEC>(w, c, x, M, N, K, b, y, s, upb, b0o);
    };
    char buf[320];
    cudaFuncAttributes a1, a2;
    int b1 = 0, b2 = 0;
    auto k1 = nf4v4::gemv4_kernel<false, 1, TL, W, BPS, D, DEC>;
    auto k2 = nf4v4::gemv4_kernel<false, 2, TL, W, BPS, D, DEC>;
    constexpr int s1 = nf4v4::smem_bytes(W, TL, 1, D), s2 = nf4v4::smem_bytes(W, TL, 2, D);
    CK(cudaFuncSetAttribute(k1, cudaFuncAttributeMaxDynamicSharedMemorySize, s1));
    CK(cudaFuncSetAttribute(k2, cudaFuncAttributeMaxDynamicSharedMemorySize, s2));
    CK(cudaFuncGetAttributes(&a1, k1));
    CK(cudaFuncGetAttributes(&a2, k2));
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b1, k1, W * 32, s1));
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b2, k2, W * 32, s2));
    nf4v4::Geometry g1 = nf4v4::geometry(1, 11008, 4096, TL, W, g_sms * std::max(b1, 1), upb);
    nf4v4::Geometry g16 = nf4v4::geometry(16, 4096, 11008, TL, W, g_sms * std::max(b2, 1), upb);
    snprintf(buf, sizeof buf, "m8: %d regs, %zu B local, %d B smem, %d blocks/SM (%d warps); m16: %d regs, %zu B local, "
             "%d blocks/SM; upb %d%s; 4096x11008 M=1: S %d cps %d grid %d; 11008x4096 M=16: S %d cps %d grid %d",
             a1.numRegs, a1.localSizeBytes, s1, b1, b1 * W, a2.numRegs, a2.localSizeBytes, b2, upb,
             b0o ? " (tiny grid)" : "", g1.S, g1.cps, g1.grid, g16.S, g16.cps, g16.grid);
    v.facts = buf;
    return v;
}

// v5 "rows" (nf4_gemv5.cuh), M = 1: one row per block iteration, rows grid-stride in address order, a register ring
// of the next D rows' loads; grid = min(BPS, occupancy at T threads) x SMs, at most N blocks. K > 32 x the P = 1
// bound (1024 threads for D = 2, 512 for D = 4) takes the 2-pieces-per-thread D = 2 kernel whatever D is.
// The arguments of the row-sweep kernels (v5, v7: nf4v5::Args); K % 32 == 0 and blocksize >= 32 or the bench stops.
static nf4v5::Args row_sweep_args(const DevWeight& w, const float* code16, const void* x, int N, int K, const void* bias,
                                  void* y, const char* who) {
    if (K % 32 != 0 || w.log2_bs < 5) { fprintf(stderr, "%s needs K %% 32 == 0 and blocksize >= 32 (K=%d)\n", who, K); exit(2); }
    nf4v5::Args a;
    a.packed = w.packed; a.absmax = w.absmax; a.nested_absmax = w.nested_absmax; a.nested_code = w.nested_code;
    a.offset = w.offset; a.log2_bs = w.log2_bs; a.nested_bs = w.nested_bs; a.nested_shift = w.nested_shift;
    a.nested = w.nested; a.code16 = code16; a.x = (const uint16_t*)x; a.N = N; a.K = K;
    a.bias = (const uint16_t*)bias; a.y = (uint16_t*)y;
    return a;
}
template <bool F16, int DEC, int D, int P>
static int v5_blocks_per_sm(int T) {  // occupancy per block size, cached (queried outside graph capture: check/warm first)
    static std::map<int, int> cache;
    auto it = cache.find(T);
    if (it != cache.end()) return it->second;
    int occ = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, nf4v5::gemv5_kernel<F16, DEC, D, P>, T, 0));
    cache[T] = occ;
    return occ;
}
template <bool F16, int DEC, int D, int P>
static void launch_v5_p(const nf4v5::Args& a, int bps, cudaStream_t s) {
    const int T = nf4v5::threads_for(a.K, P);
    const int occ = v5_blocks_per_sm<F16, DEC, D, P>(T);
    if (occ < 1) { fprintf(stderr, "v5 kernel does not fit an SM at %d threads (K=%d)\n", T, a.K); exit(2); }
    const int grid = std::max(1, std::min(a.N, g_sms * std::min(bps, occ)));
    nf4v5::gemv5_kernel<F16, DEC, D, P><<<grid, T, 0, s>>>(a);
}
template <bool F16, int DEC, int D>
static void launch_v5(const DevWeight& w, const float* code16, const void* x, int N, int K, const void* bias, void* y,
                      cudaStream_t s, int bps) {
    const nf4v5::Args a = row_sweep_args(w, code16, x, N, K, bias, y, "v5");
    const int P = nf4v5::pieces_for(K, D);
    if (P == 1) launch_v5_p<F16, DEC, D, 1>(a, bps, s);
    else if (P == 2) launch_v5_p<F16, DEC, 2, 2>(a, bps, s);
    else { fprintf(stderr, "v5: K=%d > 65536 unsupported\n", K); exit(2); }
}
// DEC: nf4v5::DEC_EXACT (exact contract, bf16), DEC_BNB (bnb inference numerics, bf16 + f16), DEC_LOADS (timing only)
template <int DEC, int D>
static Variant v5(const std::string& name, int bps) {
    Variant v;
    v.name = name;
    v.checked = DEC != nf4v5::DEC_LOADS;
    v.extra = false;
    v.max_m = 1;
    v.bnb = DEC == nf4v5::DEC_BNB;
    v.f16 = DEC == nf4v5::DEC_BNB;
    v.launch = [bps](const DevWeight& w, const float* c, const void* x, int M, int N, int K, const void* b, void* y,
                     cudaStream_t s, int dt) {
        if (M != 1) { fprintf(stderr, "v5 is M = 1 only\n"); exit(2); }
        if constexpr (DEC == nf4v5::DEC_BNB) {
            if (dt == 2) { launch_v5<true, DEC, D>(w, c, x, N, K, b, y, s, bps); return; }
        }
        launch_v5<false, DEC, D>(w, c, x, N, K, b, y, s, bps);
    };
    cudaFuncAttributes a1, a2;
    CK(cudaFuncGetAttributes(&a1, nf4v5::gemv5_kernel<false, DEC, D, 1>));
    CK(cudaFuncGetAttributes(&a2, nf4v5::gemv5_kernel<false, DEC, 2, 2>));
    const int Ks[] = {4096, 11008, 8192, 28672};
    std::string occs;
    for (int K : Ks) {
        const int P = nf4v5::pieces_for(K, D);
        const int T = nf4v5::threads_for(K, P);
        int occ = 0;
        if (P == 1) CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, nf4v5::gemv5_kernel<false, DEC, D, 1>, T, 0));
        else CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, nf4v5::gemv5_kernel<false, DEC, 2, 2>, T, 0));
        char b[64];
        snprintf(b, sizeof b, "%sK=%d: P%d %d thr, %d/SM", occs.empty() ? "" : "; ", K, P, T, std::min(bps, occ));
        occs += b;
    }
    char buf[400];
    snprintf(buf, sizeof buf, "P1: %d regs, %zu B local, %zu B smem; P2 (K > 32768, d2): %d regs, %zu B local; "
             "blocks/SM launched (min(%d, fit)) %s", a1.numRegs, a1.localSizeBytes, a1.sharedSizeBytes, a2.numRegs,
             a2.localSizeBytes, bps, occs.c_str());
    v.facts = buf;
    return v;
}

// v7 (nf4_gemv7.cuh), M = 1: v5's row sweep (same grid rule, ring, reduction) with bitsandbytes' batch-1 arithmetic
// (pair-table LDS, HMUL2 by the absmax pair, HMUL2 by the x pair, f32 sums). TAB: nf4v7::TAB_REP (64 KiB per-bank
// replicated table) | TAB_BCAST (one 1 KiB table). The table is dynamic shared memory (64 KiB > the static limit).
template <bool F16, int TAB, int D, int P>
static int v7_blocks_per_sm(int T) {  // occupancy per block size, cached (queried outside graph capture: check/warm first)
    static std::map<int, int> cache;
    auto it = cache.find(T);
    if (it != cache.end()) return it->second;
    auto fn = nf4v7::gemv7_kernel<F16, TAB, D, P>;
    CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, nf4v7::table_bytes(TAB)));
    int occ = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, fn, T, nf4v7::table_bytes(TAB)));
    cache[T] = occ;
    return occ;
}
template <bool F16, int TAB, int D, int P>
static void launch_v7_p(const nf4v5::Args& a, int bps, cudaStream_t s) {
    const int T = nf4v5::threads_for(a.K, P);
    const int occ = v7_blocks_per_sm<F16, TAB, D, P>(T);
    if (occ < 1) { fprintf(stderr, "v7 kernel does not fit an SM at %d threads (K=%d)\n", T, a.K); exit(2); }
    const int grid = std::max(1, std::min(a.N, g_sms * std::min(bps, occ)));
    nf4v7::gemv7_kernel<F16, TAB, D, P><<<grid, T, nf4v7::table_bytes(TAB), s>>>(a);
}
template <bool F16, int TAB, int D>
static void launch_v7(const DevWeight& w, const float* code16, const void* x, int N, int K, const void* bias, void* y,
                      cudaStream_t s, int bps) {
    const nf4v5::Args a = row_sweep_args(w, code16, x, N, K, bias, y, "v7");
    const int P = nf4v5::pieces_for(K, D);
    if (P == 1) launch_v7_p<F16, TAB, D, 1>(a, bps, s);
    else if (P == 2) launch_v7_p<F16, TAB, 2, 2>(a, bps, s);
    else { fprintf(stderr, "v7: K=%d > 65536 unsupported\n", K); exit(2); }
}
template <int TAB, int D>
static Variant v7(const std::string& name, int bps) {
    Variant v;
    v.name = name;
    v.checked = true;
    v.extra = false;
    v.max_m = 1;
    v.bnb = true;
    v.prod_t = true;
    v.f16 = true;
    v.launch = [bps](const DevWeight& w, const float* c, const void* x, int M, int N, int K, const void* b, void* y,
                     cudaStream_t s, int dt) {
        if (M != 1) { fprintf(stderr, "v7 is M = 1 only\n"); exit(2); }
        if (dt == 2) launch_v7<true, TAB, D>(w, c, x, N, K, b, y, s, bps);
        else launch_v7<false, TAB, D>(w, c, x, N, K, b, y, s, bps);
    };
    cudaFuncAttributes a1, a2, a3;
    CK(cudaFuncGetAttributes(&a1, nf4v7::gemv7_kernel<false, TAB, D, 1>));
    CK(cudaFuncGetAttributes(&a3, nf4v7::gemv7_kernel<true, TAB, D, 1>));
    CK(cudaFuncGetAttributes(&a2, nf4v7::gemv7_kernel<false, TAB, 2, 2>));
    const int Ks[] = {4096, 11008, 8192, 28672};
    std::string occs;
    for (int K : Ks) {
        const int P = nf4v5::pieces_for(K, D);
        const int T = nf4v5::threads_for(K, P);
        const int occ = P == 1 ? v7_blocks_per_sm<false, TAB, D, 1>(T) : v7_blocks_per_sm<false, TAB, 2, 2>(T);
        char b[64];
        snprintf(b, sizeof b, "%sK=%d: P%d %d thr, %d/SM", occs.empty() ? "" : "; ", K, P, T, std::min(bps, occ));
        occs += b;
    }
    char buf[400];
    snprintf(buf, sizeof buf, "P1: bf16 %d regs, %zu B local, f16 %d regs, %zu B local, %zu B static + %d B table smem; "
             "P2 (K > 32768, d2): %d regs, %zu B local; blocks/SM launched (min(%d, fit)) %s", a1.numRegs,
             a1.localSizeBytes, a3.numRegs, a3.localSizeBytes, a1.sharedSizeBytes, nf4v7::table_bytes(TAB), a2.numRegs,
             a2.localSizeBytes, bps, occs.c_str());
    v.facts = buf;
    return v;
}

// v6 (nf4_gemv6.cuh): v5's address-order sweep of 16-row tiles with v2's mma arithmetic. Persistent grid of
// min(BPS, occupancy at the launch's shared memory) x SMs blocks (b0o > 0: that many blocks, a tiny grid for checks),
// W warps, D chunks in flight per thread. DEC: exact (v2 contract) | bnb (v4 numerics) | none / loads (timing only).
template <bool F16C, int NT, int W, int BPS, int D, int DEC>
static int v6_blocks_per_sm(int smem) {  // cached per shared-memory size (queried outside graph capture: check/warm first)
    static std::map<int, int> cache;
    auto it = cache.find(smem);
    if (it != cache.end()) return it->second;
    int occ = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, nf4v6::gemv6_kernel<F16C, NT, W, BPS, D, DEC, false>, W * 32, smem));
    cache[smem] = occ;
    return occ;
}
template <bool F16C, int NT, int W, int BPS, int D, int DEC>
static void v6_raise_smem() {
    CK(cudaFuncSetAttribute(nf4v6::gemv6_kernel<F16C, NT, W, BPS, D, DEC, false>,
                            cudaFuncAttributeMaxDynamicSharedMemorySize, g_smem_optin));
}
template <bool F16C, int NT, int W, int BPS, int D, int DEC>
static void launch_v6(const DevWeight& w, const float* code16, const void* x, int M, int N, int K, const void* bias,
                      void* y, cudaStream_t s, int b0o) {
    if (K % 32 != 0 || w.log2_bs < 5) { fprintf(stderr, "v6 needs K %% 32 == 0 and blocksize >= 32 (K=%d)\n", K); exit(2); }
    const int xs = DEC != nf4v6::DEC_LOADS && nf4v6::x_fits(DEC, K, M) ? 1 : 0;
    const int smem = nf4v6::smem_bytes(DEC, W, NT, D, K, M, xs);
    const int occ = v6_blocks_per_sm<F16C, NT, W, BPS, D, DEC>(smem);
    if (occ < 1) { fprintf(stderr, "v6 kernel does not fit an SM (W=%d smem=%d)\n", W, smem); exit(2); }
    const int grid = b0o > 0 ? b0o : g_sms * std::min(BPS, occ);
    const int dt = F16C ? 2 : 1;
    nf4v6::gemv6_kernel<F16C, NT, W, BPS, D, DEC, false><<<grid, W * 32, smem, s>>>(
        w.packed, w.absmax, w.nested_absmax, w.nested_code, w.offset, w.log2_bs, w.nested_bs, w.nested_shift, w.nested,
        code16, (const uint16_t*)x, M, N, K, bias, dt, y, dt, 0, xs);
}
template <int W, int BPS, int D, int DEC>
static Variant v6(const std::string& name, int b0o = 0, bool extra = false) {
    Variant v;
    v.name = name;
    v.checked = DEC == nf4v6::DEC_EXACT || DEC == nf4v6::DEC_BNB;
    v.extra = extra;
    v.bnb = DEC == nf4v6::DEC_BNB;
    v.f16 = v.checked;
    v.all_m = true;
    constexpr bool F16OK = DEC == nf4v6::DEC_EXACT || DEC == nf4v6::DEC_BNB;
    v6_raise_smem<false, 1, W, BPS, D, DEC>();
    v6_raise_smem<false, 2, W, BPS, D, DEC>();
    if constexpr (F16OK) {
        v6_raise_smem<true, 1, W, BPS, D, DEC>();
        v6_raise_smem<true, 2, W, BPS, D, DEC>();
    }
    v.launch = [b0o](const DevWeight& w, const float* c, const void* x, int M, int N, int K, const void* b, void* y,
                     cudaStream_t s, int dt) {
        if constexpr (F16OK) {
            if (dt == 2) {
                if (M <= 8) launch_v6<true, 1, W, BPS, D, DEC>(w, c, x, M, N, K, b, y, s, b0o);
                else launch_v6<true, 2, W, BPS, D, DEC>(w, c, x, M, N, K, b, y, s, b0o);
                return;
            }
        }
        if (M <= 8) launch_v6<false, 1, W, BPS, D, DEC>(w, c, x, M, N, K, b, y, s, b0o);
        else launch_v6<false, 2, W, BPS, D, DEC>(w, c, x, M, N, K, b, y, s, b0o);
    };
    cudaFuncAttributes a1, a2;
    CK(cudaFuncGetAttributes(&a1, nf4v6::gemv6_kernel<false, 1, W, BPS, D, DEC, false>));
    CK(cudaFuncGetAttributes(&a2, nf4v6::gemv6_kernel<false, 2, W, BPS, D, DEC, false>));
    struct { int K, N, M; } probes[] = {{4096, 11008, 1}, {11008, 4096, 1}, {8192, 28672, 1}, {4096, 11008, 16}};
    std::string occs;
    for (auto& p : probes) {
        const int xs = DEC != nf4v6::DEC_LOADS && nf4v6::x_fits(DEC, p.K, p.M) ? 1 : 0;
        const int nt = p.M <= 8 ? 1 : 2;
        const int smem = nf4v6::smem_bytes(DEC, W, nt, D, p.K, p.M, xs);
        const int occ = nt == 1 ? v6_blocks_per_sm<false, 1, W, BPS, D, DEC>(smem) : v6_blocks_per_sm<false, 2, W, BPS, D, DEC>(smem);
        const int tt = (p.N + 15) / 16, grid = g_sms * std::max(1, std::min(BPS, occ));
        char b[128];
        snprintf(b, sizeof b, "%s%dx%d M%d: x %s, %d B smem, %d/SM, %.1f tiles/block", occs.empty() ? "" : "; ", p.K, p.N,
                 p.M, xs ? "smem" : "global", smem, std::min(BPS, occ), (double)tt / grid);
        occs += b;
    }
    char buf[640];
    snprintf(buf, sizeof buf, "m8: %d regs, %zu B local; m16: %d regs, %zu B local%s; %s", a1.numRegs, a1.localSizeBytes,
             a2.numRegs, a2.localSizeBytes, b0o ? " (tiny grid)" : "", occs.c_str());
    v.facts = buf;
    return v;
}

#endif  // QL_BENCH_V2_ONLY

#ifdef QL_BENCH_OLD
// nf4.cu's stream kernel (S as Quant4bitKernels.streamSplits), for comparison with the Java numbers
static Variant old_stream(int reg_period) {
    Variant v;
    v.name = reg_period ? "nf4.cu hybrid:3" : "nf4.cu stream";
    v.checked = true;
    v.extra = true;
    CK(cudaFuncSetAttribute(q4_gemv_stream_bf16_m8, cudaFuncAttributeMaxDynamicSharedMemorySize, STREAM_FIXED_SMEM + 40 * 1024));
    CK(cudaFuncSetAttribute(q4_gemv_stream_bf16_m16, cudaFuncAttributeMaxDynamicSharedMemorySize, STREAM_FIXED_SMEM + 40 * 1024));
    v.launch = [reg_period](const DevWeight& w, const float* c, const void* x, int M, int N, int K, const void* b, void* y, cudaStream_t s, int) {
        int chunks = (K + 127) / 128;
        long panels = (N + 127) / 128;
        int mp = M <= 8 ? 8 : 16;
        int maxc = 40 * 1024 / (mp * 128 * 2);
        long forSmem = (chunks + maxc - 1) / maxc, forFill = (2L * g_sms + panels - 1) / panels;
        int S = (int)std::max(1L, std::min((long)chunks, std::max(forSmem, forFill)));
        int per = (chunks + S - 1) / S;
        int smem = STREAM_FIXED_SMEM + mp * per * 128 * 2;
        auto fn = M <= 8 ? q4_gemv_stream_bf16_m8 : q4_gemv_stream_bf16_m16;
        fn<<<(unsigned)(panels * S), STREAM_THREADS, smem, s>>>(w.packed, w.absmax, w.nested_absmax, w.nested_code, w.offset,
            w.log2_bs, w.nested_bs, w.nested_shift, w.nested, c, (const uint16_t*)x, M, N, K, S, b, 1, y, 1,
            g_partials, g_counters, 0, reg_period);
    };
    return v;
}
#endif

// ---- timing
#include "graph_timer.cuh"
#include "bench_filter.cuh"

// ---- checks: the references of one (numerics, dtype) pair; dt = 1 bf16, 2 f16 (x, bias, y and compute)
struct Checker {
    uint16_t *x_rand, *x_hot, *bias;
    float *ref_rand, *sabs_rand, *ref_hot, *sabs_hot;
    uint16_t* y;
    int M, N, K;
    bool bnb;
    bool prod_t;  // bnb + products rounded to T (v7)
    bool code;    // the code decode's numerics (v2a code)
    int dt;
};
template <bool BNB, bool F16, bool PROD = false, bool CODE = false>
static void run_ref(const Q4& q, const Checker& c) {
    const DevWeight& w = q.copies[0];
    size_t ys = (size_t)c.M * c.N;
    int blocks = (int)((ys + 127) / 128);
    k_ref<BNB, F16, PROD, CODE><<<blocks, 128>>>(w, q.code16, c.x_rand, c.M, q.N, q.K, c.bias, c.ref_rand, c.sabs_rand);
    k_ref<BNB, F16, PROD, CODE><<<blocks, 128>>>(w, q.code16, c.x_hot, c.M, q.N, q.K, nullptr, c.ref_hot, c.sabs_hot);
}
static Checker make_checker(const Q4& q, int M, uint64_t seed, bool bnb = false, int dt = 1, bool prod_t = false,
                            bool code = false) {
    Checker c{}; c.M = M; c.N = q.N; c.K = q.K; c.bnb = bnb || prod_t; c.prod_t = prod_t; c.code = code; c.dt = dt;
    size_t xs = (size_t)M * q.K, ys = (size_t)M * q.N;
    CK(cudaMalloc(&c.x_rand, xs * 2)); CK(cudaMalloc(&c.x_hot, xs * 2)); CK(cudaMalloc(&c.bias, q.N * 2));
    CK(cudaMalloc(&c.ref_rand, ys * 4)); CK(cudaMalloc(&c.sabs_rand, ys * 4));
    CK(cudaMalloc(&c.ref_hot, ys * 4)); CK(cudaMalloc(&c.sabs_hot, ys * 4)); CK(cudaMalloc(&c.y, ys * 2));
    if (dt == 2) {
        k_fill_f16<<<256, 256>>>((__half*)c.x_rand, xs, seed + 5, 1.0f);
        k_fill_f16<<<64, 256>>>((__half*)c.bias, q.N, seed + 6, 0.5f);
    } else {
        k_fill_bf16<<<256, 256>>>((__nv_bfloat16*)c.x_rand, xs, seed + 5, 1.0f);
        k_fill_bf16<<<64, 256>>>((__nv_bfloat16*)c.bias, q.N, seed + 6, 0.5f);
    }
    std::vector<int> ks(M);
    srand((unsigned)seed);
    for (int m = 0; m < M; m++) ks[m] = (int)(((long)rand() * 7919L + m * 131L) % q.K);
    ks[0] = q.K - 1;  // the last k of a row: catches k-tail bugs
    int* dks;
    CK(cudaMalloc(&dks, M * 4));
    CK(cudaMemcpy(dks, ks.data(), M * 4, cudaMemcpyHostToDevice));
    k_onehot<<<256, 256>>>(c.x_hot, M, q.K, dks, dt);
    if (code) { if (dt == 2) run_ref<false, true, false, true>(q, c); else run_ref<false, false, false, true>(q, c); }
    else if (prod_t) { if (dt == 2) run_ref<true, true, true>(q, c); else run_ref<true, false, true>(q, c); }
    else if (bnb) { if (dt == 2) run_ref<true, true>(q, c); else run_ref<true, false>(q, c); }
    else { if (dt == 2) run_ref<false, true>(q, c); else run_ref<false, false>(q, c); }
    CK(cudaDeviceSynchronize());
    cudaFree(dks);
    return c;
}
static void free_checker(Checker& c) {
    cudaFree(c.x_rand); cudaFree(c.x_hot); cudaFree(c.bias); cudaFree(c.ref_rand); cudaFree(c.sabs_rand);
    cudaFree(c.ref_hot); cudaFree(c.sabs_hot); cudaFree(c.y);
}
static float bf(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static float hf(uint16_t h) { __half_raw r; r.x = h; return __half2float(__half(r)); }
static float t_val(uint16_t h, int dt) { return dt == 2 ? hf(h) : bf(h); }

// Returns a short verdict; counts failures. The checker's numerics / dtype must be the variant's.
static std::string check_variant(const Variant& v, const Q4& q, const Checker& c, const char* where) {
    if (!v.checked) return "timing-only";
    if (v.bnb != c.bnb || v.prod_t != c.prod_t || v.code != c.code || (c.dt == 2 && !v.f16)) { fprintf(stderr, "checker / variant mismatch: %s\n", v.name.c_str()); exit(2); }
    size_t ys = (size_t)c.M * c.N;
    std::vector<uint16_t> y(ys);
    std::vector<float> ref(ys), sabs(ys);
    char buf[200];
    const char* dts = c.dt == 2 ? "f16" : "bf16";
    // exact (one-hot x, no bias)
    CK(cudaMemset(c.y, 0xFF, ys * 2));  // poison: NaN
    v.launch(q.copies[0], q.code16, c.x_hot, c.M, c.N, c.K, nullptr, c.y, 0, c.dt);
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(y.data(), c.y, ys * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(ref.data(), c.ref_hot, ys * 4, cudaMemcpyDeviceToHost));
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < ys; i++) if (!(t_val(y[i], c.dt) == ref[i])) { if (!bad) first = i; bad++; }
    if (bad) {
        failures++;
        snprintf(buf, sizeof buf, "FAIL exact %s %zu/%zu (first m=%zu o=%zu: %g vs %g)", dts, bad, ys, first / c.N,
                 first % c.N, t_val(y[first], c.dt), ref[first]);
        printf("  %s [%s] %s\n", v.name.c_str(), where, buf);
        return "FAIL";
    }
    // random x with bias
    CK(cudaMemset(c.y, 0xFF, ys * 2));
    v.launch(q.copies[0], q.code16, c.x_rand, c.M, c.N, c.K, c.bias, c.y, 0, c.dt);
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(y.data(), c.y, ys * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(ref.data(), c.ref_rand, ys * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(sabs.data(), c.sabs_rand, ys * 4, cudaMemcpyDeviceToHost));
    double worst = 0;
    size_t wi = 0;
    const int p = c.dt == 2 ? 10 : 7;  // half an ulp of the output rounding, relative (2^-8 bf16, 2^-11 f16), x2
    // 2e-5 sum|w x|: the f32 sums in another order than the float64 reference. For v7 (products rounded to T) the
    // same bound holds unchanged: its kernels' products are bit-identical to the reference's (both are the exact
    // product rounded once to T), so only the f32 summation order differs, and sabs is the sum of |rounded products|.
    for (size_t i = 0; i < ys; i++) {
        double d = fabs((double)t_val(y[i], c.dt) - ref[i]);
        double tol = std::ldexp(fabs((double)ref[i]), -p) + 2e-5 * sabs[i] + 1e-30;
        double r = d / tol;
        if (std::isnan(r)) r = INFINITY;
        if (r > worst) { worst = r; wi = i; }
    }
    if (!(worst <= 1.0)) {
        failures++;
        snprintf(buf, sizeof buf, "FAIL random %s err/tol %.3g (m=%zu o=%zu: %g vs %g)", dts, worst, wi / c.N, wi % c.N,
                 t_val(y[wi], c.dt), ref[wi]);
        printf("  %s [%s] %s\n", v.name.c_str(), where, buf);
        return "FAIL";
    }
    snprintf(buf, sizeof buf, "ok(%.2f)", worst);
    return buf;
}

static bool selected(const std::string& name) { return bench_selected(name, "QL_GEMV_ONLY"); }

int main(int argc, char** argv) {
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    g_sms = prop.multiProcessorCount;
    g_smem_optin = (int)prop.sharedMemPerBlockOptin;
    int clock_khz = 0;
    cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0);
    printf("%s, %d SMs, %.2f GHz max, L2 %d MB\n", prop.name, g_sms, clock_khz / 1e6, prop.l2CacheSize >> 20);
    CK(cudaMalloc(&g_partials, 64u << 20));
    CK(cudaMalloc(&g_counters, 1 << 20));
    CK(cudaMemset(g_counters, 0, 1 << 20));

    // copy bandwidth (read + write), as CudaNf4Report measures it
    const double copy_bw = copy_bandwidth();
    printf("device-to-device copy: %.0f GB/s (read + write); %%copy below = achieved / that\n", copy_bw / 1e9);

#ifndef QL_BENCH_V2_ONLY
    CK(cudaMalloc(&g_scratch4, SCRATCH4_BYTES));
#endif
    std::vector<Variant> all;
#ifndef QL_BENCH_V2_ONLY
    // v4 (bnb inference numerics). Name: decode (pair | none = no decode, timing only | loads = loads and unit
    // bookkeeping only), W warps per block, B blocks per SM (launch bounds), D chunks in flight per thread, TL tiles
    // per warp-tile, upb units per block wanted (balance) or S1 (as few splits as the x slice allows).
    all.push_back(v4<1, 8, 2, 4, nf4v4::DEC_PAIR, true>("v4 pair w8 b2 d4", 8));       // the candidate default
    all.push_back(v4<1, 8, 2, 4, nf4v4::DEC_PAIR, true>("v4 pair w8 b2 d4 upb4", 4));
    all.push_back(v4<1, 8, 2, 4, nf4v4::DEC_PAIR, true>("v4 pair w8 b2 d4 upb16", 16));
    all.push_back(v4<1, 8, 2, 4, nf4v4::DEC_PAIR, true>("v4 pair w8 b2 d4 S1", 0));
    all.push_back(v4<1, 8, 2, 4, nf4v4::DEC_PAIR, true>("v4 pair w8 b2 d4 tiny-grid", 0, 7, true));  // checks only
    all.push_back(v4<1, 8, 2, 4, nf4v4::DEC_PAIR, true>("v4 pair w8 b2 d4 tiny-grid upb8", 8, 5, true));
    all.push_back(v4<1, 8, 2, 3, nf4v4::DEC_PAIR, false>("v4 pair w8 b2 d3", 8));
    all.push_back(v4<1, 4, 3, 4, nf4v4::DEC_PAIR, false>("v4 pair w4 b3 d4", 8));
    all.push_back(v4<1, 16, 1, 4, nf4v4::DEC_PAIR, false>("v4 pair w16 b1 d4", 8));
    all.push_back(v4<2, 8, 2, 2, nf4v4::DEC_PAIR, false>("v4 pair w8 b2 d2 TL2", 8));
    all.push_back(v4<1, 8, 2, 4, nf4v4::DEC_NONE, false>("v4 none w8 b2 d4", 8));
    all.push_back(v4<1, 8, 2, 4, nf4v4::DEC_LOADS, false>("v4 loads w8 b2 d4", 8));
    // v5 rows (M = 1): numerics exact (v2 contract, bf16) | bnb (v4 numerics, bf16 + f16) | loads (timing only: the
    // same loads, prefetch and reduction, no decode); bN = blocks per SM wanted (capped by occupancy), dN = rows of
    // loads in flight per thread.
    all.push_back(v5<nf4v5::DEC_EXACT, 2>("v5 exact b4 d2", 4));
    all.push_back(v5<nf4v5::DEC_EXACT, 2>("v5 exact b8 d2", 8));
    all.push_back(v5<nf4v5::DEC_EXACT, 2>("v5 exact b16 d2", 16));
    all.push_back(v5<nf4v5::DEC_EXACT, 4>("v5 exact b4 d4", 4));
    all.push_back(v5<nf4v5::DEC_EXACT, 4>("v5 exact b8 d4", 8));
    all.push_back(v5<nf4v5::DEC_EXACT, 4>("v5 exact b16 d4", 16));
    all.push_back(v5<nf4v5::DEC_BNB, 2>("v5 bnb b8 d2", 8));
    all.push_back(v5<nf4v5::DEC_BNB, 4>("v5 bnb b8 d4", 8));
    all.push_back(v5<nf4v5::DEC_BNB, 4>("v5 bnb b16 d4", 16));
    all.push_back(v5<nf4v5::DEC_LOADS, 2>("v5 loads b8 d2", 8));
    all.push_back(v5<nf4v5::DEC_LOADS, 2>("v5 loads b16 d2", 16));
    all.push_back(v5<nf4v5::DEC_LOADS, 4>("v5 loads b4 d4", 4));
    all.push_back(v5<nf4v5::DEC_LOADS, 4>("v5 loads b8 d4", 8));
    all.push_back(v5<nf4v5::DEC_LOADS, 4>("v5 loads b16 d4", 16));
    // v7 (M = 1): v5's row sweep + bitsandbytes' batch-1 arithmetic (products rounded to T, f32 sums), bf16 + f16;
    // rep = per-bank replicated pair table (64 KiB, conflict-free), bcast = one 1 KiB table (bank conflicts).
    all.push_back(v7<nf4v7::TAB_REP, 2>("v7 bnb rep b8 d2", 8));
    all.push_back(v7<nf4v7::TAB_REP, 2>("v7 bnb rep b16 d2", 16));
    all.push_back(v7<nf4v7::TAB_REP, 4>("v7 bnb rep b8 d4", 8));
    all.push_back(v7<nf4v7::TAB_BCAST, 2>("v7 bnb bcast b8 d2", 8));
    all.push_back(v7<nf4v7::TAB_BCAST, 2>("v7 bnb bcast b16 d2", 16));
    all.push_back(v7<nf4v7::TAB_BCAST, 4>("v7 bnb bcast b8 d4", 8));
    // v6 (address-order tile sweep + mma): numerics exact (v2 contract) | bnb (v4 numerics), bf16 + f16, M = 1..16;
    // none = no decode (x + mma on the raw words), loads = loads + tile reductions only (timing only); wN warps per
    // block, bN blocks per SM (launch bounds; capped by occupancy at the launch's shared memory), dN chunks in flight.
    all.push_back(v6<8, 2, 4, nf4v6::DEC_EXACT>("v6 exact w8 b2 d4"));  // = q4v6_gemv_* (Java, -Dqlora4j.nf4.gemv=v6)
    all.push_back(v6<8, 2, 3, nf4v6::DEC_EXACT>("v6 exact w8 b2 d3"));
    all.push_back(v6<4, 4, 4, nf4v6::DEC_EXACT>("v6 exact w4 b4 d4"));
    all.push_back(v6<16, 1, 4, nf4v6::DEC_EXACT>("v6 exact w16 b1 d4"));
    all.push_back(v6<8, 2, 4, nf4v6::DEC_EXACT>("v6 exact w8 b2 d4 tiny-grid", 3, true));  // checks only: many tiles per block
    all.push_back(v6<8, 2, 4, nf4v6::DEC_BNB>("v6 bnb w8 b2 d4"));
    all.push_back(v6<4, 4, 4, nf4v6::DEC_BNB>("v6 bnb w4 b4 d4"));
    all.push_back(v6<8, 2, 4, nf4v6::DEC_BNB>("v6 bnb w8 b2 d4 tiny-grid", 5, true));
    all.push_back(v6<8, 2, 4, nf4v6::DEC_NONE>("v6 none w8 b2 d4 (no decode)"));
    all.push_back(v6<8, 2, 4, nf4v6::DEC_LOADS>("v6 loads w8 b2 d4"));
#endif  // QL_BENCH_V2_ONLY
    all.push_back(v8("v8 pair"));
    all.push_back(v2a<8, 3, nf4v2::DEC_PAIR>("v2a pair w8 d3"));
    all.push_back(v2a<8, 3, nf4v2::DEC_NONE>("v2a none d3 (timing: no decode)"));
    all.push_back(v2a<8, 3, nf4v2::DEC_BNB>("v2a bnb w8 d3"));
    all.push_back(v2code<2>("v2a code d2"));
    all.push_back(v2code<3>("v2a code d3"));
    all.push_back(v2code_il<2>("v2il code d2 (timing: interleaved bytes)"));
    all.push_back(v2il<3, nf4v2::DEC_NONE>("v2il none d3 (timing: interleaved bytes, no decode)"));
#ifndef QL_BENCH_V8_ONLY
    // v2 / v3 (exact numerics): the measured references
    all.push_back(v2<8, 1, 4, nf4v2::DEC_TAB, 0>("v2 tab w8 t1 d4"));  // = q4v2_gemv_* (the Java default for rows 9..16, and v2table)
    all.push_back(v2<8, 1, 4, nf4v2::DEC_NONE, 0>("v2 none w8 t1 d4 (no decode)"));
    all.push_back(v2<8, 1, 4, nf4v2::DEC_PAIR, 0>("v2 pair w8 t1 d4"));  // the engine's pair decode until session 5
    all.push_back(v2<8, 1, 2, nf4v2::DEC_PAIR, 0, true>("v2 pair rolled w8 t1 d2"));  // the pair kernel of session 5 (the general path now)
    all.push_back(v2<8, 1, 1, nf4v2::DEC_PAIR, 0, true>("v2 pair rolled w8 t1 d1"));
    all.push_back(v2<8, 1, 2, nf4v2::DEC_BNB, 0, true>("v2 bnb rolled w8 t1 d2"));    // the bnb kernel of session 5 (the general path now)
    all.push_back(v2<8, 1, 1, nf4v2::DEC_BNB, 0, true>("v2 bnb rolled w8 t1 d1"));
    all.push_back(v2<8, 2, 1, nf4v2::DEC_BNB, 0, true>("v2 bnb rolled w8 t2 d1"));
    all.push_back(v2<8, 2, 2, nf4v2::DEC_BNB, 0, true>("v2 bnb rolled w8 t2 d2"));
    all.push_back(v2<4, 1, 2, nf4v2::DEC_BNB, 0, true>("v2 bnb rolled w4 t1 d2"));
    all.push_back(v2<16, 1, 2, nf4v2::DEC_BNB, 0, true>("v2 bnb rolled w16 t1 d2"));
    // the aligned path (session 6): = q4v2pair_gemv_* / q4v2bnb_gemv_* with V2_FAST_DEPTH 3
    all.push_back(v2a<8, 2, nf4v2::DEC_PAIR>("v2a pair w8 d2"));
    all.push_back(v2a<8, 4, nf4v2::DEC_PAIR>("v2a pair w8 d4"));
    all.push_back(v2a<8, 2, nf4v2::DEC_BNB>("v2a bnb w8 d2"));
    all.push_back(v2a<8, 4, nf4v2::DEC_BNB>("v2a bnb w8 d4"));
    all.push_back(v2a<4, 3, nf4v2::DEC_BNB>("v2a bnb w4 d3"));
    all.push_back(v2a<16, 3, nf4v2::DEC_PAIR>("v2a pair w16 d3"));
    all.push_back(v2il<3, nf4v2::DEC_PAIR>("v2il pair d3 (timing: interleaved bytes)"));
    all.push_back(v2il<3, nf4v2::DEC_BNB>("v2il bnb d3 (timing: interleaved bytes)"));
    all.push_back(v3<8, 3, 4, nf4v3::DEC_TAB, true>("v3 w8 b3 d4"));
#endif  // QL_BENCH_V8_ONLY
#ifdef QL_BENCH_OLD
    all.push_back(old_stream(0));
    all.push_back(old_stream(3));
#endif
    std::vector<Variant> vars;
    for (auto& v : all) if (selected(v.name)) vars.push_back(v);
    // QL_GEMV_PROFILE=1: two launches of each selected variant and the streaming read on 4096x11008 (M=1, no double
    // quantization), for Nsight Compute, e.g.
    //   QL_GEMV_PROFILE=1 QL_GEMV_ONLY="v4 pair w8 b2 d4,v4 none,v4 loads,v2 tab" ncu --section SpeedOfLight \
    //       --section WarpStateStats --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
    //       --section SchedulerStats /tmp/gb
    if (getenv("QL_GEMV_PROFILE")) {
        const int K = 4096, N = 11008;
        Q4 q = make_q4(K, N, 64, 0, 1, 42);
        __nv_bfloat16 *xb, *yb;
        CK(cudaMalloc(&xb, (size_t)16 * K * 2)); CK(cudaMalloc(&yb, (size_t)16 * N * 4));
        k_fill_bf16<<<256, 256>>>(xb, (size_t)16 * K, 4, 1.0f);
        uint32_t* sink;
        CK(cudaMalloc(&sink, 64));
        for (auto& v : vars) {
            if (v.extra) continue;
            for (int r = 0; r < 2; r++) v.launch(q.copies[0], q.code16, xb, 1, N, K, nullptr, yb, 0, 1);
            printf("profiled: %s\n", v.name.c_str());
        }
        for (int r = 0; r < 2; r++)
            k_stream_read<2><<<g_sms * 16, 256>>>((const uint4*)q.copies[0].packed, (size_t)N * K / 32, sink);
        CK(cudaDeviceSynchronize());
        printf("profiled: stream-read (16 blocks/SM, unroll 2)\n");
        return 0;
    }
    printf("\nvariants (facts for the bf16 kernels; m8 = NT 1 for M <= 8, m16 = NT 2):\n");
    for (auto& v : vars) if (!v.facts.empty()) printf("  %-30s %s\n", v.name.c_str(), v.facts.c_str());

    // ---- correctness sweep on small odd shapes: blocksizes, dq, M, K tails (K % 128 != 0), dtypes
    if (!getenv("QL_GEMV_NOSWEEP")) {
        printf("\ncorrectness sweep (exact one-hot + random with bias): v4 M = 1..16 bf16 + f16, v2 / v3 M = 1, 3, 8, 9, 16 bf16, "
               "v5 M = 1 (bnb: bf16 + f16), v6 exact and bnb M = 1..16 bf16 + f16, v7 M = 1 bf16 + f16\n");
        struct SweepShape { int K, N; std::vector<int> bss; bool v5only = false; };
        // the last two: large K for v5 only (one block per row: 896 threads; K > 32768: 2 pieces per thread)
        const SweepShape shapes[] = {{192, 77, {32, 64, 128, 256}}, {320, 33, {32, 64, 128, 256}},
                                     {4160, 1001, {32, 64, 256, 4096}}, {96, 40, {32, 64}}, {2048, 300, {64, 1024}},
                                     {28672, 40, {32, 64, 4096}, true}, {33792, 24, {32, 64}, true}};
        auto in_shape = [](const SweepShape& sh, const Variant& v) {
            return !sh.v5only || v.name.rfind("v5", 0) == 0 || v.name.rfind("v7", 0) == 0;
        };
        const int oldMs[] = {1, 3, 8, 9, 16};
        int cases = 0;
        for (auto& sh : shapes)
            for (int bs : sh.bss)
                for (int dq = 0; dq < 2; dq++) {
                    Q4 q = make_q4(sh.K, sh.N, bs, dq, 1, 1000 + sh.K + bs + dq);
                    for (int M = 1; M <= 16; M++) {
                        const bool oldM = std::find(std::begin(oldMs), std::end(oldMs), M) != std::end(oldMs);
                        // 0: exact bf16, 1: bnb bf16, 2: bnb f16, 3: exact f16, 4 / 5: bnb + products rounded (v7) bf16 / f16,
                        // 6 / 7: the code decode bf16 / f16 (only where nf4v2::code_applies: elsewhere it is the exact kernel)
                        for (int kind = 0; kind < 8; kind++) {
                            const bool prod_t = kind == 4 || kind == 5;
                            const bool code = kind >= 6;
                            const bool bnb = kind == 1 || kind == 2 || prod_t;
                            const int dt = kind == 2 || kind == 3 || kind == 5 || kind == 7 ? 2 : 1;
                            if (code && !nf4v2::code_applies(sh.K, __builtin_ctz(bs), dq, 8)) continue;
                            auto runs = [&](const Variant& v) {
                                return v.checked && v.bnb == bnb && v.prod_t == prod_t && v.code == code && (dt == 1 || v.f16) &&
                                       M <= v.max_m && (bnb || code || oldM || v.all_m) && in_shape(sh, v);
                            };
                            bool any = false;
                            for (auto& v : vars)
                                if (runs(v)) any = true;
                            if (!any) continue;
                            Checker c = make_checker(q, M, 7 + M, bnb, dt, prod_t, code);
                            for (auto& v : vars) {
                                if (!runs(v)) continue;
                                char where[96];
                                snprintf(where, sizeof where, "K=%d N=%d bs=%d dq=%d M=%d %s", sh.K, sh.N, bs, dq, M,
                                         dt == 2 ? "f16" : "bf16");
                                check_variant(v, q, c, where);
                                cases++;
                            }
                            free_checker(c);
                        }
                    }
                    free_q4(q);
                }
        printf("  %d cases, %d failures so far\n", cases, failures);
    }

    cublasHandle_t h;
    CB(cublasCreate(&h));
    void* ws;
    CK(cudaMalloc(&ws, 64 << 20));
    CB(cublasSetWorkspace(h, ws, 64 << 20));
    uint32_t* sink;
    CK(cudaMalloc(&sink, 64));

    std::vector<Shape> shapes = {{4096, 11008}, {11008, 4096}, {8192, 28672}, {4096, 4096}};
    if (const char* only = getenv("QL_GEMV_SHAPES")) {
        shapes.clear();
        std::string list(only);
        size_t p = 0;
        while (p < list.size()) {
            size_t e = list.find(',', p);
            if (e == std::string::npos) e = list.size();
            int K = 0, N = 0;
            if (sscanf(list.substr(p, e - p).c_str(), "%dx%d", &K, &N) == 2) shapes.push_back({K, N});
            p = e + 1;
        }
    }
    const int Ms[] = {1, 2, 4, 8, 16};
    const size_t ROTATE = 200ull << 20;
    printf("\ntimings (bf16; blocksize 64): us = median per launch; %%copy = (packed + absmax bytes) / us / copy bandwidth;\n"
           "%%read = the same GB/s / the best streaming read of the packed bytes; x cuBLAS = cuBLAS bf16 GemmEx us / us\n");
    for (const Shape& sh : shapes) {
        int K = sh.K, N = sh.N;
        // cuBLAS bf16 weight copies and the streaming read ceiling over the NF4 bytes
        size_t wbytes = (size_t)N * K * 2;
        int bcopies = (int)std::max<size_t>(2, std::min<size_t>(16, (ROTATE + wbytes - 1) / wbytes));
        std::vector<__nv_bfloat16*> wb(bcopies);
        for (auto& p : wb) { CK(cudaMalloc(&p, wbytes)); k_fill_bf16<<<1024, 256>>>(p, (size_t)N * K, 3, 0.05f); }
        __nv_bfloat16 *xb, *yb;
        CK(cudaMalloc(&xb, (size_t)16 * K * 2)); CK(cudaMalloc(&yb, (size_t)16 * N * 4));
        k_fill_bf16<<<256, 256>>>(xb, (size_t)16 * K, 4, 1.0f);
        double read_gbs = 0;
        for (int dq = 0; dq < 2; dq++) {
            size_t nbytes = (size_t)N * K / 2;
            int copies = (int)std::max<size_t>(2, std::min<size_t>(16, (ROTATE + nbytes - 1) / nbytes));
            Q4 q = make_q4(K, N, 64, dq, copies, 42 + dq);
            printf("\n== in %d x out %d, blocksize 64, dq %s: %.2f MB per op (packed + absmax), %d weight copies\n",
                   K, N, dq ? "y" : "n", q.bytes / 1e6, copies);
            if (!dq) {
                for (int cfg = 0; cfg < 3; cfg++) {
                    int bps = cfg == 0 ? 4 : cfg == 1 ? 8 : 16;
                    float us = time_graph([&](int c, cudaStream_t s) {
                        size_t n16 = q.bytes / 16;
                        if (cfg < 2) k_stream_read<4><<<g_sms * bps, 256, 0, s>>>((const uint4*)q.copies[c].packed, std::min(n16, (size_t)N * K / 32), sink);
                        else k_stream_read<2><<<g_sms * bps, 256, 0, s>>>((const uint4*)q.copies[c].packed, std::min(n16, (size_t)N * K / 32), sink);
                    }, copies);
                    double bytes = (double)N * K / 2;
                    read_gbs = std::max(read_gbs, bytes / us / 1e3);
                    printf("  stream-read ceiling (%d blocks/SM x 256, unroll %d) over the packed bytes: %8.2f us %6.0f GB/s %5.1f%%copy\n",
                           bps, cfg < 2 ? 4 : 2, us, bytes / us / 1e3, 100.0 * bytes / (us * 1e-6) / copy_bw);
                }
            }
            printf("  %-3s %-30s %8s %6s %6s %6s %9s %8s  %s\n", "M", "variant", "us", "GB/s", "%copy", "%read", "cublas us",
                   "x cuBLAS", "check");
            for (int M : Ms) {
                float tc = time_graph([&](int c, cudaStream_t s) {
                    CB(cublasSetStream(h, s));
                    float alpha = 1.0f, beta = 0.0f;
                    CB(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &alpha, wb[c], CUDA_R_16BF, K, xb, CUDA_R_16BF, K,
                                    &beta, yb, CUDA_R_16BF, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
                }, bcopies);
                Checker chk_exact{}, chk_bnb{}, chk_prod{}, chk_code{};
                bool have_exact = false, have_bnb = false, have_prod = false, have_code = false;
                for (auto& v : vars) {
                    if (v.extra || M > v.max_m) continue;
                    if (v.checked && v.prod_t && !have_prod) { chk_prod = make_checker(q, M, 99 + M, true, 1, true); have_prod = true; }
                    if (v.checked && v.bnb && !v.prod_t && !have_bnb) { chk_bnb = make_checker(q, M, 99 + M, true, 1); have_bnb = true; }
                    if (v.checked && v.code && !have_code) { chk_code = make_checker(q, M, 99 + M, false, 1, false, true); have_code = true; }
                    if (v.checked && !v.bnb && !v.code && !have_exact) { chk_exact = make_checker(q, M, 99 + M, false, 1); have_exact = true; }
                }
                for (auto& v : vars) {
                    if (v.extra || M > v.max_m) continue;
                    char where[64];
                    snprintf(where, sizeof where, "K=%d N=%d dq=%d M=%d", K, N, dq, M);
                    std::string verdict = check_variant(v, q, v.code ? chk_code : v.prod_t ? chk_prod : v.bnb ? chk_bnb : chk_exact, where);
                    float us = time_graph([&](int c, cudaStream_t s) {
                        v.launch(q.copies[c], q.code16, xb, M, N, K, nullptr, yb, s, 1);
                    }, copies);
                    double gbs = q.bytes / us / 1e3;
                    printf("  %-3d %-30s %8.2f %6.0f %5.1f%% %5.1f%% %9.2f %7.2fx  %s\n", M, v.name.c_str(), us, gbs,
                           100.0 * gbs * 1e9 / copy_bw, read_gbs > 0 ? 100.0 * gbs / read_gbs : 0.0, tc, tc / us,
                           verdict.c_str());
                }
                if (have_exact) free_checker(chk_exact);
                if (have_bnb) free_checker(chk_bnb);
                if (have_prod) free_checker(chk_prod);
                if (have_code) free_checker(chk_code);
            }
            free_q4(q);
        }
        for (auto& p : wb) cudaFree(p);
        cudaFree(xb); cudaFree(yb);
    }
    printf("\n%s: %d failure(s)\n", failures ? "FAILED" : "ALL CHECKS PASSED", failures);
    return failures ? 1 : 0;
}
