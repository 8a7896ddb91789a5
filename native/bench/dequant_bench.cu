// dequant_bench.cu — standalone, self-checking microbenchmark of nf4.cu's 4-bit dequantize (q4_dequantize_* and
// q4_dequantize_rows_bf16, the weights' bf16 copies for cuBLAS in a training step and the LoRA fold's [W | sB]).
//
//   nvcc -O3 -std=c++17 -arch=sm_90a -I native native/bench/dequant_bench.cu -o /tmp/db && /tmp/db
//   (no cuBLAS needed; tools/gpu-bench-dequant.sh at the repository root does exactly this with logs under $OUT)
//
// What it does:
// 1. checks, bit for bit, that every new variant (nf4.cu's own kernels and the template variants below) writes the
//    same bytes as the OLD kernel body (copied here verbatim from nf4.cu before session 9, namespace old_dq): random
//    packed bytes, random absmax (plain F32 or nested: U8 codes + F32 nested absmax + a random 256-entry nested code +
//    offset), outputs poisoned (0xFF) first, the whole buffer compared (the rows variant's pad columns must stay
//    0xFF). Cases: odd sizes (n % 8 != 0, partial chunks and blocks), blocksizes 32..4096, nested group 256 and a
//    non-power-of-two one, mid f32 / bf16 / f16, outputs bf16 / f16 / f32, tiny grids (warps striding over chunks),
//    and the Llama-7B shapes (bf16, bs 64, nested and not, flat and rows with ldy = cols + 64);
// 2. times, on the Llama-7B shapes (4096x4096, 11008x4096, 4096x11008, bs 64, nested 256 = the engine's
//    case, mid bf16): OLD, every new variant, a pure 1:4 expand of the same bytes (no decode: the access pattern's
//    own ceiling), a write-only memset of the output and a device-to-device copy of the same byte count
//    (read + write). Times: CUDA graphs of 20 launches rotating over copies of weight and output (> 256 MB, so the
//    50 MB L2 holds neither), median of 15 graph launches. TB/s counts bytes read (packed + absmax statistics) plus
//    written (2 B per value).
// Exit code 0 only when every check passed (last line "ALL CHECKS PASSED").
// Environment: QL_DQ_NOCHECK=1 skips the checks; QL_DQ_ONLY=a,b times only variants whose name contains a or b.
#include "nf4.cu"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <ctime>
#include <vector>

#define CK(x) check_cuda((x), #x, __LINE__)
static void check_cuda(cudaError_t e, const char* what, int line) {
    if (e != cudaSuccess) {
        fprintf(stderr, "CUDA error %s at line %d: %s\n", cudaGetErrorString(e), line, what);
        exit(2);
    }
}

// =============================================================================================================
// OLD: nf4.cu's dequantize body as it was before session 9 (grid-stride units of 8 values, 4 units per thread per
// step a grid stride apart, absmax per unit, tables filled before the first load). Verbatim but for the namespace
// and the comments.
namespace old_dq {

// (store_out, used by the n % 8 tail, is nf4.cu's: unchanged, so not repeated here)
template <typename OutT> struct Pack8;  // 8 outputs as one 16-byte (or 2x16-byte) store
template <> struct Pack8<__nv_bfloat16> {
    static __device__ __forceinline__ void store(__nv_bfloat16* y, const float* v) {
        uint4 o;
        __nv_bfloat162 p0 = __floats2bfloat162_rn(v[0], v[1]), p1 = __floats2bfloat162_rn(v[2], v[3]);
        __nv_bfloat162 p2 = __floats2bfloat162_rn(v[4], v[5]), p3 = __floats2bfloat162_rn(v[6], v[7]);
        o.x = *reinterpret_cast<uint32_t*>(&p0); o.y = *reinterpret_cast<uint32_t*>(&p1);
        o.z = *reinterpret_cast<uint32_t*>(&p2); o.w = *reinterpret_cast<uint32_t*>(&p3);
        *reinterpret_cast<uint4*>(y) = o;
    }
};
template <> struct Pack8<__half> {
    static __device__ __forceinline__ void store(__half* y, const float* v) {
        uint4 o;
        __half2 p0 = __floats2half2_rn(v[0], v[1]), p1 = __floats2half2_rn(v[2], v[3]);
        __half2 p2 = __floats2half2_rn(v[4], v[5]), p3 = __floats2half2_rn(v[6], v[7]);
        o.x = *reinterpret_cast<uint32_t*>(&p0); o.y = *reinterpret_cast<uint32_t*>(&p1);
        o.z = *reinterpret_cast<uint32_t*>(&p2); o.w = *reinterpret_cast<uint32_t*>(&p3);
        *reinterpret_cast<uint4*>(y) = o;
    }
};
template <> struct Pack8<float> {
    static __device__ __forceinline__ void store(float* y, const float* v) {
        *reinterpret_cast<float4*>(y) = make_float4(v[0], v[1], v[2], v[3]);
        *reinterpret_cast<float4*>(y + 4) = make_float4(v[4], v[5], v[6], v[7]);
    }
};

struct DqUnit {
    uint32_t q;
    float s;
    uint32_t code;
};

__device__ __forceinline__ DqUnit load_dq_unit(const Q4Weight& w, int64_t u) {
    DqUnit d;
    const int64_t block = (u * 8) >> w.log2_blocksize;
    d.q = __ldg(reinterpret_cast<const uint32_t*>(w.packed) + u);
    if (w.nested) {
        d.code = __ldg(reinterpret_cast<const uint8_t*>(w.absmax) + block);
        d.s = __ldg(w.nested_absmax + (w.nested_shift >= 0 ? (block >> w.nested_shift) : block / w.nested_bs));
    } else {
        d.code = 0;
        d.s = __ldg(reinterpret_cast<const float*>(w.absmax) + block);
    }
    return d;
}

template <typename OutT, bool ROWS = false>
__device__ void dequantize_body(const Q4Weight& w, const float* __restrict__ code16, OutT* __restrict__ y,
                                int64_t n, int mid, int cols = 0, int64_t ldy = 0) {
    constexpr int UNROLL = 4;
    __shared__ float table[16];
    __shared__ float ncode[256];
    if (threadIdx.x < 16) table[threadIdx.x] = code16[threadIdx.x];
    if (w.nested) {
        for (int j = threadIdx.x; j < 256; j += blockDim.x) ncode[j] = w.nested_code[j];
    }
    __syncthreads();
    const int64_t units = n / 8;
    const int64_t stride = grid_stride();
    for (int64_t u0 = global_thread_index(); u0 < units; u0 += UNROLL * stride) {
        DqUnit d[UNROLL];
#pragma unroll
        for (int i = 0; i < UNROLL; i++) {
            if (u0 + i * stride < units) d[i] = load_dq_unit(w, u0 + i * stride);
        }
#pragma unroll
        for (int i = 0; i < UNROLL; i++) {
            const int64_t u = u0 + i * stride;
            if (u >= units) break;
            const float amax = w.nested ? __fadd_rn(__fmul_rn(ncode[d[i].code], d[i].s), w.offset) : d[i].s;
            float v[8];
#pragma unroll
            for (int b = 0; b < 4; b++) {
                const uint32_t byte = (d[i].q >> (8 * b)) & 0xFF;
                v[2 * b] = round_to(__fmul_rn(table[byte >> 4], amax), mid);
                v[2 * b + 1] = round_to(__fmul_rn(table[byte & 15], amax), mid);
            }
            if (ROWS) {
                const uint32_t per_row = static_cast<uint32_t>(cols) / 8, uu = static_cast<uint32_t>(u);
                const uint32_t row = uu / per_row;
                Pack8<OutT>::store(y + row * ldy + (uu - row * per_row) * 8, v);
            } else {
                Pack8<OutT>::store(y + u * 8, v);
            }
        }
    }
    if (!ROWS && global_thread_index() == 0 && units * 8 < n) {
        for (int64_t e = units * 8; e < n; e++) {
            const uint32_t byte = w.packed[e >> 1];
            const uint32_t q = (e & 1) ? (byte & 15) : (byte >> 4);
            store_out<OutT>(y, e, round_to(__fmul_rn(table[q], q4_absmax(w, e >> w.log2_blocksize)), mid));
        }
    }
}

}  // namespace old_dq

template <typename OutT, bool ROWS>
__global__ void __launch_bounds__(256) old_kernel(Q4_WEIGHT_PARAMS, const float* __restrict__ code16, OutT* __restrict__ y,
                                                  int64_t n, int mid, int cols, int64_t ldy) {
    Q4_WEIGHT_MAKE;
    old_dq::dequantize_body<OutT, ROWS>(w, code16, y, n, mid, cols, ldy);
}

// NEW variants: nf4.cu's dequantize_body with other pieces per lane (P), store hint (CS) and blocks per SM (MINB,
// __launch_bounds__' second argument: caps the registers).
template <typename OutT, bool ROWS, int P, bool CS, int MINB>
__global__ void __launch_bounds__(DQ_THREADS, MINB) new_kernel(Q4_WEIGHT_PARAMS, const float* __restrict__ code16,
                                                               OutT* __restrict__ y, int64_t n, int mid, int cols, int64_t ldy) {
    Q4_WEIGHT_MAKE;
    dequantize_body<OutT, ROWS, P, CS>(w, code16, y, n, mid, cols, ldy);
}

// The access pattern alone (timing only): nf4.cu's chunk layout (P = 8), 4 bytes read and 16 bytes written per
// piece, the read word replicated, no absmax, no decode.
__global__ void __launch_bounds__(256) expand_kernel(const uint32_t* __restrict__ packed, uint4* __restrict__ y, int64_t units) {
    constexpr int P = 8;
    const int lane = threadIdx.x & 31;
    const int64_t u0 = (global_thread_index() >> 5) * (32 * P);
    uint32_t q[P];
#pragma unroll
    for (int j = 0; j < P; j++) q[j] = u0 + 32 * j + lane < units ? __ldg(packed + u0 + 32 * j + lane) : 0u;
#pragma unroll
    for (int j = 0; j < P; j++) if (u0 + 32 * j + lane < units) y[u0 + 32 * j + lane] = make_uint4(q[j], q[j] ^ 1u, q[j] ^ 2u, q[j] ^ 3u);
}

// =============================================================================================================
// host side

static int failures = 0;
static int g_sms = 132;

static const float NF4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                              -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                              0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
                              0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

// One 4-bit weight on the device (the kernels' Q4_WEIGHT_PARAMS) + its code table.
struct DevW {
    uint8_t* packed = nullptr;
    void* absmax = nullptr;
    float* nabs = nullptr;
    float* ncode = nullptr;
    float* code16 = nullptr;
    float offset = 0;
    int lbs = 6, nbs = 1, nshift = -1, nested = 0;
    int64_t n = 0;
    size_t read_bytes() const {  // what a dequantize reads (the 1 KiB nested code and 64 B table aside)
        int64_t blocks = (n + (1ll << lbs) - 1) >> lbs;
        size_t b = (size_t)(n + 1) / 2;
        if (nested) b += (size_t)blocks + 4 * (size_t)((blocks + nbs - 1) / nbs);
        else b += 4 * (size_t)blocks;
        return b;
    }
};

static DevW make_weight(std::mt19937_64& rng, int64_t n, int lbs, bool nested, int nbs, bool zero_block) {
    DevW w;
    w.n = n; w.lbs = lbs; w.nested = nested ? 1 : 0;
    w.nbs = nested ? nbs : 1;
    w.nshift = (w.nbs & (w.nbs - 1)) == 0 ? __builtin_ctz(w.nbs) : -1;
    const int64_t blocks = (n + (1ll << lbs) - 1) >> lbs;
    const size_t pbytes = (size_t)(n + 1) / 2;
    std::vector<uint8_t> p((pbytes + 3) & ~size_t(3));
    for (auto& b : p) b = (uint8_t)rng();
    CK(cudaMalloc(&w.packed, p.size()));
    CK(cudaMemcpy(w.packed, p.data(), p.size(), cudaMemcpyHostToDevice));
    std::uniform_real_distribution<float> u01(0.0f, 1.0f);
    if (nested) {
        std::vector<uint8_t> codes(blocks);
        for (auto& c : codes) c = (uint8_t)rng();
        const int64_t groups = (blocks + w.nbs - 1) / w.nbs;
        std::vector<float> na(groups);
        for (auto& a : na) a = 0.001f + 0.2f * u01(rng);
        std::vector<float> nc(256);
        for (auto& c : nc) c = 2.0f * u01(rng) - 1.0f;
        std::sort(nc.begin(), nc.end());
        w.offset = 0.01f + 0.05f * u01(rng);
        CK(cudaMalloc(&w.absmax, blocks));
        CK(cudaMemcpy(w.absmax, codes.data(), blocks, cudaMemcpyHostToDevice));
        CK(cudaMalloc(&w.nabs, groups * 4));
        CK(cudaMemcpy(w.nabs, na.data(), groups * 4, cudaMemcpyHostToDevice));
        CK(cudaMalloc(&w.ncode, 1024));
        CK(cudaMemcpy(w.ncode, nc.data(), 1024, cudaMemcpyHostToDevice));
    } else {
        std::vector<float> a(blocks);
        for (auto& x : a) x = std::exp(4.0f * u01(rng) - 6.0f);
        if (zero_block && blocks > 1) a[1] = 0.0f;
        CK(cudaMalloc(&w.absmax, blocks * 4));
        CK(cudaMemcpy(w.absmax, a.data(), blocks * 4, cudaMemcpyHostToDevice));
    }
    CK(cudaMalloc(&w.code16, 64));
    CK(cudaMemcpy(w.code16, NF4, 64, cudaMemcpyHostToDevice));
    return w;
}

static void free_weight(DevW& w) {
    cudaFree(w.packed); cudaFree(w.absmax); cudaFree(w.nabs); cudaFree(w.ncode); cudaFree(w.code16);
    w = DevW();
}

// A launch of one variant: y of dtype OutT (bf16 unless the variant says), n values, mid, cols / ldy for ROWS;
// grid = 0: the variant's own grid, else that many blocks (tiny-grid checks).
struct Variant {
    std::string name;
    int out;    // dtype code of y
    bool rows;
    bool timed;
    std::function<void(const DevW&, void*, int, int, int64_t, int, cudaStream_t)> launch;
    const void* fn;
};

static int old_grid(int64_t n) {  // Quant4bitKernels.strideGrid(ctx, (n / 8 + 3) / 4, 256) before session 9
    int64_t items = (n / 8 + 3) / 4;
    int64_t blocks = std::max<int64_t>(1, (items + 255) / 256);
    return (int)std::min<int64_t>(blocks, 32ll * g_sms);
}
static int new_grid(int64_t n, int P) {  // Quant4bitKernels.dequantizeGrid: one warp per chunk of 32 P pieces
    int64_t per_block = (int64_t)(DQ_THREADS / 32) * 32 * P;
    return (int)std::max<int64_t>(1, (n / 8 + per_block - 1) / per_block);
}

#define WARGS(w) (w).packed, (w).absmax, (w).nabs, (w).ncode, (w).offset, (w).lbs, (w).nbs, (w).nshift, (w).nested

template <typename OutT, bool ROWS>
static Variant old_variant(const char* name, int out) {
    Variant v{name, out, ROWS, true, nullptr, (const void*)old_kernel<OutT, ROWS>};
    v.launch = [](const DevW& w, void* y, int mid, int cols, int64_t ldy, int grid, cudaStream_t s) {
        old_kernel<OutT, ROWS><<<grid ? grid : old_grid(w.n), 256, 0, s>>>(WARGS(w), w.code16, (OutT*)y, w.n, mid, cols, ldy);
    };
    return v;
}

template <typename OutT, bool ROWS, int P, bool CS, int MINB>
static Variant new_variant(const char* name, int out, bool timed = true) {
    Variant v{name, out, ROWS, timed, nullptr, (const void*)new_kernel<OutT, ROWS, P, CS, MINB>};
    v.launch = [](const DevW& w, void* y, int mid, int cols, int64_t ldy, int grid, cudaStream_t s) {
        new_kernel<OutT, ROWS, P, CS, MINB><<<grid ? grid : new_grid(w.n, P), DQ_THREADS, 0, s>>>(
            WARGS(w), w.code16, (OutT*)y, w.n, mid, cols, ldy);
    };
    return v;
}

// nf4.cu's own extern "C" kernels, launched with the grid Quant4bitKernels gives them
static Variant shipped(int out, bool rows) {
    Variant v{rows ? "NEW nf4.cu rows_bf16" : out == DT_BF16 ? "NEW nf4.cu bf16" : out == DT_F16 ? "NEW nf4.cu f16" : "NEW nf4.cu f32",
              out, rows, true, nullptr, nullptr};
    if (rows) {
        v.fn = (const void*)q4_dequantize_rows_bf16;
        v.launch = [](const DevW& w, void* y, int mid, int cols, int64_t ldy, int grid, cudaStream_t s) {
            q4_dequantize_rows_bf16<<<grid ? grid : new_grid(w.n, DQ_PIECES), DQ_THREADS, 0, s>>>(
                WARGS(w), w.code16, (__nv_bfloat16*)y, w.n, mid, cols, ldy);
        };
    } else if (out == DT_BF16) {
        v.fn = (const void*)q4_dequantize_bf16;
        v.launch = [](const DevW& w, void* y, int mid, int, int64_t, int grid, cudaStream_t s) {
            q4_dequantize_bf16<<<grid ? grid : new_grid(w.n, DQ_PIECES), DQ_THREADS, 0, s>>>(WARGS(w), w.code16, (__nv_bfloat16*)y, w.n, mid);
        };
    } else if (out == DT_F16) {
        v.fn = (const void*)q4_dequantize_f16;
        v.launch = [](const DevW& w, void* y, int mid, int, int64_t, int grid, cudaStream_t s) {
            q4_dequantize_f16<<<grid ? grid : new_grid(w.n, DQ_PIECES), DQ_THREADS, 0, s>>>(WARGS(w), w.code16, (__half*)y, w.n, mid);
        };
    } else {
        v.fn = (const void*)q4_dequantize_f32;
        v.launch = [](const DevW& w, void* y, int mid, int, int64_t, int grid, cudaStream_t s) {
            q4_dequantize_f32<<<grid ? grid : new_grid(w.n, DQ_PIECES), DQ_THREADS, 0, s>>>(WARGS(w), w.code16, (float*)y, w.n, mid);
        };
    }
    return v;
}

static size_t out_size(int dt) { return dt == DT_F32 ? 4 : 2; }

// ---- checks: variant vs OLD, whole buffer, poisoned first
static void check_case(const Variant& v, const Variant& ref, const DevW& w, int mid, int cols, int64_t ldy, int grid,
                       const char* what) {
    const size_t es = out_size(v.out);
    const size_t elems = v.rows ? (size_t)(w.n / cols) * ldy : (size_t)w.n;
    const size_t bytes = elems * es;
    void *ya, *yb;
    CK(cudaMalloc(&ya, bytes));
    CK(cudaMalloc(&yb, bytes));
    CK(cudaMemset(ya, 0xFF, bytes));
    CK(cudaMemset(yb, 0xFF, bytes));
    ref.launch(w, ya, mid, cols, ldy, 0, 0);
    v.launch(w, yb, mid, cols, ldy, grid, 0);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    std::vector<uint8_t> a(bytes), b(bytes);
    CK(cudaMemcpy(a.data(), ya, bytes, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(b.data(), yb, bytes, cudaMemcpyDeviceToHost));
    cudaFree(ya);
    cudaFree(yb);
    if (memcmp(a.data(), b.data(), bytes) != 0) {
        size_t i = 0;
        while (a[i] == b[i]) i++;
        failures++;
        printf("FAIL %-28s %s: byte %zu (element %zu) old 0x%02x new 0x%02x\n", v.name.c_str(), what, i, i / es, a[i], b[i]);
    } else {
        // the values themselves must have been written: at least the first element is not the poison
        bool poison = true;
        for (size_t k = 0; k < es; k++) poison &= a[k] == 0xFF;
        if (poison) { failures++; printf("FAIL %-28s %s: element 0 not written\n", v.name.c_str(), what); }
    }
}

// ---- timing
#include "graph_timer.cuh"
#include "bench_filter.cuh"

static bool selected(const std::string& name) { return bench_selected(name, "QL_DQ_ONLY"); }

int main() {
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    g_sms = prop.multiProcessorCount;
    int clock_khz = 0;
    cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0);
    printf("%s, %d SMs, %.2f GHz max, L2 %d MB\n", prop.name, g_sms, clock_khz / 1e6, prop.l2CacheSize >> 20);

    std::vector<Variant> all;
    all.push_back(shipped(DT_BF16, false));
    all.push_back(shipped(DT_BF16, true));
    all.push_back(shipped(DT_F16, false));
    all.push_back(shipped(DT_F32, false));
    all.push_back(new_variant<__nv_bfloat16, false, 4, false, 1>("new bf16 P4", DT_BF16));
    all.push_back(new_variant<__nv_bfloat16, false, 16, false, 1>("new bf16 P16", DT_BF16));
    all.push_back(new_variant<__nv_bfloat16, false, 8, true, 1>("new bf16 P8 cs", DT_BF16));
    all.push_back(new_variant<__nv_bfloat16, false, 8, false, 6>("new bf16 P8 b6", DT_BF16));
    all.push_back(new_variant<__nv_bfloat16, false, 4, false, 8>("new bf16 P4 b8", DT_BF16));
    all.push_back(new_variant<__nv_bfloat16, true, 4, false, 1>("new rows P4", DT_BF16));
    all.push_back(new_variant<__nv_bfloat16, true, 16, false, 1>("new rows P16", DT_BF16));
    all.push_back(new_variant<__nv_bfloat16, true, 8, true, 1>("new rows P8 cs", DT_BF16));
    all.push_back(new_variant<__nv_bfloat16, true, 8, false, 6>("new rows P8 b6", DT_BF16));
    const Variant old_bf16 = old_variant<__nv_bfloat16, false>("OLD bf16", DT_BF16);
    const Variant old_rows = old_variant<__nv_bfloat16, true>("OLD rows_bf16", DT_BF16);
    const Variant old_f16 = old_variant<__half, false>("OLD f16", DT_F16);
    const Variant old_f32 = old_variant<float, false>("OLD f32", DT_F32);
    auto ref_of = [&](const Variant& v) -> const Variant& {
        return v.rows ? old_rows : v.out == DT_BF16 ? old_bf16 : v.out == DT_F16 ? old_f16 : old_f32;
    };

    printf("\n%-28s %5s %7s %6s %9s\n", "kernel", "regs", "local", "smem", "blocks/SM");
    std::vector<const Variant*> listed{&old_bf16, &old_rows};
    for (auto& v : all) listed.push_back(&v);
    for (const Variant* v : listed) {
        cudaFuncAttributes a;
        CK(cudaFuncGetAttributes(&a, v->fn));
        int bpm = 0;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&bpm, v->fn, 256, 0));
        printf("%-28s %5d %6zuB %5zuB %9d\n", v->name.c_str(), a.numRegs, a.localSizeBytes, a.sharedSizeBytes, bpm);
    }

    std::mt19937_64 rng(0x5eed5eedull ^ (uint64_t)time(nullptr));
    const char* nocheck = getenv("QL_DQ_NOCHECK");
    if (!nocheck || !*nocheck) {
        printf("\nchecks (bit-equal to OLD, whole poisoned buffer):\n");
        int cases = 0;
        // small and odd: flat
        const int64_t flat_n[] = {37 * 91, 8, 9, 300 * 1000, 1025ll * 1027, 2048 * 7 + 5, 16384 * 3 + 8 * 77};
        const int lbss[] = {5, 6, 7, 8, 12};
        for (int64_t n : flat_n)
            for (int lbs : lbss)
                for (int nest = 0; nest < 3; nest++) {  // 0 plain, 1 nested 256, 2 nested 100 (not a power of two)
                    DevW w = make_weight(rng, n, lbs, nest > 0, nest == 2 ? 100 : 256, true);
                    for (auto& v : all) {
                        if (v.rows) continue;
                        for (int mid = 0; mid < 3; mid++) {
                            char what[160];
                            snprintf(what, sizeof what, "n=%lld bs=%d nested=%d mid=%d", (long long)n, 1 << lbs, nest, mid);
                            check_case(v, ref_of(v), w, mid, 0, 0, 0, what);
                            cases++;
                        }
                    }
                    // tiny grids: warps stride over the chunks (the loop's reload path)
                    for (int g : {1, 3}) {
                        char what[160];
                        snprintf(what, sizeof what, "n=%lld bs=%d nested=%d grid=%d", (long long)n, 1 << lbs, nest, g);
                        check_case(all[0], old_bf16, w, DT_BF16, 0, 0, g, what);
                        cases++;
                    }
                    free_weight(w);
                }
        // small and odd: rows (cols % 8 == 0)
        const int rshape[][3] = {{37, 96, 104}, {5, 8, 8}, {3, 8, 72}, {300, 1000, 1064}, {33, 2056, 2120}, {1, 4096, 4160}};
        for (auto& r : rshape)
            for (int lbs : lbss)
                for (int nest = 0; nest < 3; nest++) {
                    DevW w = make_weight(rng, (int64_t)r[0] * r[1], lbs, nest > 0, nest == 2 ? 100 : 256, true);
                    for (auto& v : all) {
                        if (!v.rows) continue;
                        for (int mid = 0; mid < 3; mid++) {
                            char what[160];
                            snprintf(what, sizeof what, "[%d, %d] ldy=%d bs=%d nested=%d mid=%d", r[0], r[1], r[2], 1 << lbs, nest, mid);
                            check_case(v, old_rows, w, mid, r[1], r[2], 0, what);
                            cases++;
                        }
                    }
                    for (int g : {1, 3}) {
                        char what[160];
                        snprintf(what, sizeof what, "[%d, %d] ldy=%d bs=%d nested=%d grid=%d", r[0], r[1], r[2], 1 << lbs, nest, g);
                        check_case(all[1], old_rows, w, DT_BF16, r[1], r[2], g, what);
                        cases++;
                    }
                    free_weight(w);
                }
        // the Llama-7B shapes, bs 64, plain and nested: every bf16 variant, mid bf16 (the engine) and f32
        const int llama[][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
        for (auto& s : llama)
            for (int nest = 0; nest < 2; nest++) {
                DevW w = make_weight(rng, (int64_t)s[0] * s[1], 6, nest, 256, true);
                for (auto& v : all) {
                    if (v.out != DT_BF16 && nest == 0) continue;
                    for (int mid : {DT_BF16, DT_F32}) {
                        if (mid == DT_F32 && v.name.rfind("NEW", 0) != 0) continue;  // mid f32: the shipped kernels
                        char what[160];
                        snprintf(what, sizeof what, "[%d, %d]%s bs=64 nested=%d mid=%d", s[0], s[1], v.rows ? " ldy=cols+64" : "", nest, mid);
                        check_case(v, ref_of(v), w, mid, s[1], (int64_t)s[1] + 64, 0, what);
                        cases++;
                    }
                }
                free_weight(w);
            }
        printf("%d cases, %d failure(s)\n", cases, failures);
    }

    // ---- timing: the Llama-7B shapes, bs 64, nested 256 (and plain for the shipped kernels), mid bf16
    const double copy_bw = copy_bandwidth();
    printf("\n1 GiB device-to-device copy: %.2f TB/s (read + write); %%copy = achieved / that\n", copy_bw / 1e12);
    printf("\n%-28s %-14s %5s %9s %8s %6s %9s\n", "kernel", "shape", "dq", "us", "TB/s", "%copy", "vs OLD");
    const int llama[][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
    for (auto& s : llama) {
        const int64_t n = (int64_t)s[0] * s[1];
        for (int nest = 1; nest >= 0; nest--) {
            // copies of weight + output so the rotation spans > 256 MB
            DevW probe = make_weight(rng, 64, 6, nest, 256, false);
            probe.n = n;
            const size_t rb = probe.read_bytes(), wb = (size_t)n * 2, wb_rows = (size_t)s[0] * (s[1] + 64) * 2;
            free_weight(probe);
            const int copies = (int)std::max<size_t>(2, (256ull << 20) / (rb + wb_rows) + 1);
            std::vector<DevW> ws;
            std::vector<void*> ys;
            for (int c = 0; c < copies; c++) {
                ws.push_back(make_weight(rng, n, 6, nest, 256, false));
                void* y;
                CK(cudaMalloc(&y, wb_rows));
                CK(cudaMemset(y, 0, wb_rows));
                ys.push_back(y);
            }
            char shape[32];
            snprintf(shape, sizeof shape, "%dx%d", s[0], s[1]);
            const double bytes = (double)(rb + wb);
            auto row = [&](const std::string& name, float us, double b, float old_us) {
                char vs[32] = "";
                if (old_us > 0) snprintf(vs, sizeof vs, "%.2fx", old_us / us);
                printf("%-28s %-14s %5s %9.2f %8.3f %5.1f%% %9s\n", name.c_str(), shape, nest ? "y" : "n", us,
                       b / (us * 1e-6) / 1e12, 100.0 * b / (us * 1e-6) / copy_bw, vs);
            };
            float old_flat = 0, old_r = 0;
            for (const Variant* v : {&old_bf16, &old_rows}) {
                if (!selected(v->name) && !selected("OLD")) continue;
                float us = time_graph([&](int c, cudaStream_t st) { v->launch(ws[c], ys[c], DT_BF16, s[1], (int64_t)s[1] + 64, 0, st); }, copies);
                (v->rows ? old_r : old_flat) = us;
                row(v->name, us, bytes, 0);
            }
            for (auto& v : all) {
                if (v.out != DT_BF16 || !v.timed || !selected(v.name)) continue;
                if (nest == 0 && v.name.rfind("NEW", 0) != 0) continue;  // plain absmax: the shipped kernels only
                float us = time_graph([&](int c, cudaStream_t st) { v.launch(ws[c], ys[c], DT_BF16, s[1], (int64_t)s[1] + 64, 0, st); }, copies);
                row(v.name, us, bytes, v.rows ? old_r : old_flat);
            }
            if (nest) {
                const int64_t units = n / 8;
                float us = time_graph([&](int c, cudaStream_t st) {
                    expand_kernel<<<new_grid(n, 8), 256, 0, st>>>((const uint32_t*)ws[c].packed, (uint4*)ys[c], units);
                }, copies);
                row("expand 1:4 (no decode)", us, (double)(n / 2 + n * 2), 0);
                us = time_graph([&](int c, cudaStream_t st) { CK(cudaMemsetAsync(ys[c], c, wb, st)); }, copies);
                row("memset of the output", us, (double)wb, 0);
                // a copy moving the same bytes (read + write = rb + wb): (rb + wb) / 2 bytes, inside the rotation
                const size_t half = (size_t)(bytes / 2) & ~size_t(255);
                us = time_graph([&](int c, cudaStream_t st) {
                    CK(cudaMemcpyAsync(ys[c], ys[(c + 1) % copies], half, cudaMemcpyDeviceToDevice, st));
                }, copies);
                row("D2D copy, same bytes", us, 2.0 * half, 0);
            }
            for (int c = 0; c < copies; c++) { free_weight(ws[c]); cudaFree(ys[c]); }
        }
    }
    printf("\n%s\n", failures == 0 ? "ALL CHECKS PASSED" : "FAILED");
    if (failures) printf("FAILED: %d failure(s)\n", failures);
    return failures == 0 ? 0 : 1;
}
