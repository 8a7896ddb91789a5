// hash_fill.cuh — deterministic pseudo-random device buffers for the standalone probes (a hash of the index and a
// seed, no cuRAND). Random data matters on the H200: constant inputs draw less power, and power-capped GEMMs then
// run 15-20% faster than with real data (bench/RESULTS.md, session 13).
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

__device__ __forceinline__ unsigned hash_fill_bits(size_t i, unsigned seed) {
    unsigned h = (unsigned)i * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    return h;
}

// p[i] = a bf16 in [-1, 1)
__global__ void fill_bf16(__nv_bfloat16* p, size_t n, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = __float2bfloat16((hash_fill_bits(i, seed) & 0xffff) / 32768.f - 1.f);
}

// p[i] = a byte
__global__ void fill_u8(uint8_t* p, size_t n, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = (uint8_t)hash_fill_bits(i, seed);
}
