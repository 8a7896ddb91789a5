// stream_read_probe.cu — how fast can a kernel stream an activation-sized BF16 matrix (a LoRA output gradient gy,
// [2,048 tokens x out]) through the SMs, by load strategy? The question behind native/NOTES-lora-gemm.md, session 15:
// the one-pass gh / dB kernel (branch exp/lora-gy-one-pass) requested every byte of its tile up front by cp.async and
// still read gy at ~1.4 TB/s, while siluMul (16-byte loads into registers, many warps) runs at ~3.7 TB/s.
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I native native/bench/stream_read_probe.cu -o /tmp/srp && /tmp/srp
//
// Every variant reads the whole matrix once and folds what it read into one float per block (written out, so no load
// is dead), with as little math as possible: the time is the loads' time. Random data (hash_fill), 4 copies rotated so
// L2 holds none of the next one's bytes; CUDA events, the median of 9 timed runs after 2. Variants:
//   ldg_regs       grid-stride, 4 independent 16-byte loads a thread per step, 256 threads, as many blocks as fit
//   cp_tiles       the one-pass kernel's copies: a block per (128 columns, 256 tokens), four 16 KB sub-tiles requested
//                  up front by cp.async into swizzled shared memory, each waited for (wait_group + __syncthreads) and
//                  read back by ldmatrix (2 blocks an SM at the kernel's 82 KB)
//   cp_ring        persistent blocks (2 an SM) walking the same tiles' sub-tiles through a 3-stage cp.async ring
//   warp_regs      a warp per (64 columns, token chunk): 16 tokens x 64 columns a step, four 16-byte loads a lane into
//                  registers (the next step's issued before this one is used), stored into a 2 KB per-warp swizzled
//                  buffer and read back by ldmatrix (__syncwarp only): the register-fed lead of the notes
#include "hash_fill.cuh"
#include "../mma_sync.cuh"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
    fprintf(stderr, "CUDA %s at %d: %s\n", cudaGetErrorString(e_), __LINE__, #x); exit(2); } } while (0)

static const int T = 2048, COPIES = 4, WARMUP = 2, RUNS = 9;

// ---- ldg_regs ----
__global__ void __launch_bounds__(256) ldg_regs(const int4* __restrict__ p, long n16, float* out) {
    float acc = 0.f;
    const long stride = (long)gridDim.x * blockDim.x;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n16; i += 4 * stride) {
        int4 v[4];
#pragma unroll
        for (int u = 0; u < 4; u++) v[u] = i + u * stride < n16 ? __ldcs(p + i + u * stride) : make_int4(0, 0, 0, 0);
#pragma unroll
        for (int u = 0; u < 4; u++) acc += (float)((v[u].x ^ v[u].y ^ v[u].z ^ v[u].w) & 1);
    }
    if (threadIdx.x == 0) out[blockIdx.x] = acc;
}

// ---- cp_tiles: the one-pass kernel's load structure ----
constexpr int STRIP = 128, SUB = 64, SUBS = 4, CHUNK = SUB * SUBS, TILE_BYTES = SUB * STRIP * 2;
__device__ __forceinline__ uint32_t tile_offset(int row, int chunk) {
    return (uint32_t)(row * (STRIP * 2) + ((chunk ^ (row & 7)) << 4));
}

// Folds one sub-tile (64 rows x 256 bytes, swizzled) read back by ldmatrix into acc: each warp reads 16 rows x 128
// columns, as the gh warps of the one-pass kernel do.
__device__ __forceinline__ float read_back(uint32_t tile, int warp4, int lane) {
    float acc = 0.f;
#pragma unroll
    for (int kk = 0; kk < STRIP / 16; kk++) {
        uint32_t a[4];
        mmas::ldsm_x4(tile + tile_offset(16 * warp4 + (lane % 8) + 8 * ((lane / 8) % 2), 2 * kk + lane / 16), a);
        acc += (float)((a[0] ^ a[1] ^ a[2] ^ a[3]) & 1);
    }
    return acc;
}

__global__ void __launch_bounds__(256) cp_tiles(const __nv_bfloat16* __restrict__ gy, int n, int out, float* res) {
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t s = mmas::smem_addr(smem);
    const int col0 = blockIdx.x * STRIP, tok0 = blockIdx.y * CHUNK, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int c = threadIdx.x % 16, row0 = threadIdx.x / 16;
    const __nv_bfloat16* src = gy + (long)(tok0 + row0) * out + col0 + c * 8;
    uint32_t dst = s + tile_offset(row0, c);
#pragma unroll
    for (int t = 0; t < SUBS; t++) {
#pragma unroll
        for (int j = 0; j < SUB / 16; j++) {
            const bool ok = tok0 + row0 + 16 * (t * (SUB / 16) + j) < n;
            mmas::cp_async16(dst, ok ? src : gy, ok);
            src += 16L * out;
            dst += 16 * STRIP * 2;
        }
        mmas::cp_async_commit();
    }
    float acc = 0.f;
#pragma unroll
    for (int t = 0; t < SUBS; t++) {
        if (t == 0) mmas::cp_async_wait<SUBS - 1>();
        else if (t == 1) mmas::cp_async_wait<SUBS - 2>();
        else if (t == 2) mmas::cp_async_wait<SUBS - 3>();
        else mmas::cp_async_wait<0>();
        __syncthreads();
        acc += read_back(s + t * TILE_BYTES, warp % 4, lane);
    }
    if (threadIdx.x == 0) res[blockIdx.y * gridDim.x + blockIdx.x] = acc;
}

// ---- cp_ring: persistent blocks, the sub-tiles of tile b, b + G, ... through a 3-stage ring ----
constexpr int STAGES = 3;
__global__ void __launch_bounds__(256) cp_ring(const __nv_bfloat16* __restrict__ gy, int n, int out, float* res) {
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t s = mmas::smem_addr(smem);
    const int strips = out / STRIP, chunks = (n + CHUNK - 1) / CHUNK, tiles = strips * chunks;
    const int mine = (tiles - (int)blockIdx.x + (int)gridDim.x - 1) / (int)gridDim.x;   // tiles b, b + G, ...
    const int items = mine * SUBS, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int c = threadIdx.x % 16, row0 = threadIdx.x / 16;
    auto issue = [&](int item) {   // sub-tile item of this block's sequence into stage item % STAGES (empty group past the end)
        if (item < items) {
            const int tile = (int)blockIdx.x + (item / SUBS) * (int)gridDim.x, sub = item % SUBS;
            const int col0 = (tile % strips) * STRIP, tok = (tile / strips) * CHUNK + sub * SUB + row0;
            const __nv_bfloat16* src = gy + (long)tok * out + col0 + c * 8;
            uint32_t dst = s + (item % STAGES) * TILE_BYTES + tile_offset(row0, c);
#pragma unroll
            for (int j = 0; j < SUB / 16; j++) {
                const bool ok = tok + 16 * j < n;
                mmas::cp_async16(dst, ok ? src : gy, ok);
                src += 16L * out;
                dst += 16 * STRIP * 2;
            }
        }
        mmas::cp_async_commit();
    };
    for (int i = 0; i < STAGES - 1; i++) issue(i);
    float acc = 0.f;
    for (int item = 0; item < items; item++) {
        issue(item + STAGES - 1);                  // the stage it fills was read in iteration item - 1 (barrier below)
        mmas::cp_async_wait<STAGES - 1>();
        __syncthreads();
        acc += read_back(s + (item % STAGES) * TILE_BYTES, warp % 4, lane);
        __syncthreads();
    }
    if (threadIdx.x == 0) res[blockIdx.x] = acc;
}

// ---- warp_regs: register-fed per-warp pieces ----
constexpr int WCOLS = 64, WTOK = 16, PIECE_BYTES = WTOK * WCOLS * 2;   // 2 KB
__device__ __forceinline__ uint32_t piece_offset(int row, int chunk) {
    return (uint32_t)(row * (WCOLS * 2) + ((chunk ^ (row & 7)) << 4));
}

// Grid: (out / 512 column groups, token chunks of tpw tokens); 8 warps a block, warp w takes columns 64w.. of its group.
__global__ void __launch_bounds__(256) warp_regs(const __nv_bfloat16* __restrict__ gy, int n, int out, int tpw, float* res) {
    __shared__ __align__(128) unsigned char buf[8 * PIECE_BYTES];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const uint32_t mybuf = mmas::smem_addr(buf) + warp * PIECE_BYTES;
    const int col0 = blockIdx.x * 8 * WCOLS + warp * WCOLS, tok0 = blockIdx.y * tpw;
    if (col0 >= out) return;   // the last group's spare warps (out a multiple of 64); no block barrier below
    const int c = lane % 8, r0 = lane / 8;   // lane loads rows r0 + 4i (i = 0..3), 16-byte chunk c: 8 lanes a 128-byte row
    auto load = [&](int step, int4 (&v)[4]) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int tok = tok0 + step * WTOK + r0 + 4 * i;
            v[i] = tok < n ? __ldcs(reinterpret_cast<const int4*>(gy + (long)tok * out + col0 + c * 8)) : make_int4(0, 0, 0, 0);
        }
    };
    const int steps = (min(tpw, n - tok0) + WTOK - 1) / WTOK;
    int4 cur[4], nxt[4];
    load(0, cur);
    float acc = 0.f;
    for (int step = 0; step < steps; step++) {
        if (step + 1 < steps) load(step + 1, nxt);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(mybuf + piece_offset(r0 + 4 * i, c)),
                         "r"(cur[i].x), "r"(cur[i].y), "r"(cur[i].z), "r"(cur[i].w) : "memory");
        }
        __syncwarp();
#pragma unroll
        for (int kk = 0; kk < WCOLS / 16; kk++) {
            uint32_t a[4];
            mmas::ldsm_x4(mybuf + piece_offset((lane % 8) + 8 * ((lane / 8) % 2), 2 * kk + lane / 16), a);
            acc += (float)((a[0] ^ a[1] ^ a[2] ^ a[3]) & 1);
        }
        __syncwarp();
#pragma unroll
        for (int i = 0; i < 4; i++) cur[i] = nxt[i];
    }
    if (lane == 0) res[(blockIdx.y * gridDim.x + blockIdx.x) * 8 + warp] = acc;
}

// ---- timing ----
template <typename Launch>
static float median_ms(Launch launch) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    std::vector<float> ms;
    for (int r = 0; r < WARMUP + RUNS; r++) {
        CK(cudaEventRecord(a));
        launch(r % COPIES);
        CK(cudaEventRecord(b));
        CK(cudaEventSynchronize(b));
        float t;
        CK(cudaEventElapsedTime(&t, a, b));
        if (r >= WARMUP) ms.push_back(t);
    }
    CK(cudaGetLastError());
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
}

int main() {
    int sms;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const int ring_smem = STAGES * TILE_BYTES;
    CK(cudaFuncSetAttribute(cp_tiles, cudaFuncAttributeMaxDynamicSharedMemorySize, 82 * 1024));
    CK(cudaFuncSetAttribute(cp_ring, cudaFuncAttributeMaxDynamicSharedMemorySize, ring_smem));
    float* res;
    CK(cudaMalloc(&res, 1 << 22));
    printf("%-12s %8s %10s %10s\n", "variant", "out", "us", "TB/s");
    for (int out : {4096, 11008}) {
        const long elems = (long)T * out;
        std::vector<__nv_bfloat16*> gy(COPIES);
        for (int k = 0; k < COPIES; k++) {
            CK(cudaMalloc(&gy[k], elems * 2));
            fill_bf16<<<1024, 256>>>(gy[k], elems, 17 + k);
        }
        CK(cudaDeviceSynchronize());
        const double bytes = elems * 2.0;
        auto report = [&](const char* name, float ms) {
            printf("%-12s %8d %10.2f %10.2f\n", name, out, ms * 1e3, bytes / (ms * 1e-3) / 1e12);
        };
        int per_sm;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, ldg_regs, 256, 0));
        report("ldg_regs", median_ms([&](int k) {
            ldg_regs<<<sms * per_sm, 256>>>(reinterpret_cast<const int4*>(gy[k]), elems / 8, res);
        }));
        // the one-pass kernel's smem at rank 16 (82 KB: 2 blocks an SM) so that occupancy matches
        report("cp_tiles", median_ms([&](int k) {
            cp_tiles<<<dim3(out / STRIP, (T + CHUNK - 1) / CHUNK), 256, 82 * 1024>>>(gy[k], T, out, res);
        }));
        report("cp_ring", median_ms([&](int k) { cp_ring<<<2 * sms, 256, ring_smem>>>(gy[k], T, out, res); }));
        for (int tpw : {64, 128, 256}) {
            char name[32];
            snprintf(name, sizeof name, "warp_regs%d", tpw);
            report(name, median_ms([&](int k) {
                warp_regs<<<dim3(out / (8 * WCOLS) + (out % (8 * WCOLS) != 0), (T + tpw - 1) / tpw), 256>>>(gy[k], T, out,
                                                                                                          tpw, res);
            }));
        }
        for (auto p : gy) CK(cudaFree(p));
    }
    CK(cudaFree(res));
    return 0;
}
