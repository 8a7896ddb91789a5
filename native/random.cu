// random.cu — reproducible normal random numbers without curand, for synthetic benchmark weights.
//
// Tensors: out[n] of bf16 (random_normal_bf16) or float (random_normal_f32).
// Launch:  1-D grid-stride, 256 threads, grid capped by the launcher; any grid >= 1 gives the same values.
// Math:    element i is a pure function of (seed, i): two 32-bit uniforms from a SplitMix64 hash of
//          seed * 2^32 + i (u1 in (0, 1], u2 in [0, 1)), then Box-Muller
//          z = sqrt(-2 ln u1) cos(2 pi u2), out[i] = mean + std * z rounded to the output type.
//          Statistics only (no CPU mirror): the test checks the mean, the std and reproducibility.
#include "activations.cuh"

__device__ __forceinline__ uint64_t splitmix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ float normal_at(uint64_t seed, int64_t i) {
    uint64_t h = splitmix64((seed << 32) ^ (uint64_t)i ^ (seed >> 32) * 0xD6E8FEB86659FD93ull);
    float u1 = ((uint32_t)(h >> 32) + 1.0f) * 2.3283064365386963e-10f;   // (0, 1]
    float u2 = (uint32_t)h * 2.3283064365386963e-10f;                    // [0, 1)
    return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
}

extern "C" __global__ void random_normal_bf16(__nv_bfloat16* out, int64_t n, uint64_t seed, float mean, float std) {
    for (int64_t i = global_thread_index(); i < n; i += grid_stride()) out[i] = f32_to_bf16(mean + std * normal_at(seed, i));
}

extern "C" __global__ void random_normal_f32(float* out, int64_t n, uint64_t seed, float mean, float std) {
    for (int64_t i = global_thread_index(); i < n; i += grid_stride()) out[i] = mean + std * normal_at(seed, i);
}
