// cast.cu — element-wise dtype conversions and a fill, the first kernel family.
//
// Tensors: x and y are contiguous 1-D views of any tensor with n elements (shape does not matter
//          for an element-wise op): x[n] of the source dtype, y[n] of the target dtype.
// Launch:  1-D grid-stride; block = 256 threads, grid = min(ceil(n / 256), 32 * SM count) blocks,
//          no dynamic shared memory. Any grid >= 1 is correct (the loop covers all n elements).
// Math it mirrors (the CPU reference, dev.qlora4j.tensor.Half):
//   cast_f32_to_bf16  y[i] = Half.floatToBf16(x[i])   round to nearest even, overflow -> inf
//   cast_bf16_to_f32  y[i] = Half.bf16ToFloat(x[i])   exact (bits << 16)
//   cast_f32_to_f16   y[i] = Half.floatToF16(x[i])    round to nearest even, subnormals kept
//   cast_f16_to_f32   y[i] = Half.f16ToFloat(x[i])    exact
//   fill_f32          y[i] = value                    (tests poison outputs with NaN before a launch)
// Results are bit-exact against the CPU for every non-NaN input; a NaN input gives a NaN output
// (the hardware writes the canonical NaN, the CPU keeps payload bits, so NaN bits may differ).
#include "common.cuh"

extern "C" __global__ void cast_f32_to_bf16(const float* __restrict__ x, __nv_bfloat16* __restrict__ y, int64_t n) { pdl_enter();
    for (int64_t i = global_thread_index(); i < n; i += grid_stride()) {
        y[i] = f32_to_bf16(x[i]);
    }
}

extern "C" __global__ void cast_bf16_to_f32(const __nv_bfloat16* __restrict__ x, float* __restrict__ y, int64_t n) { pdl_enter();
    for (int64_t i = global_thread_index(); i < n; i += grid_stride()) {
        y[i] = bf16_to_f32(x[i]);
    }
}

extern "C" __global__ void cast_f32_to_f16(const float* __restrict__ x, __half* __restrict__ y, int64_t n) { pdl_enter();
    for (int64_t i = global_thread_index(); i < n; i += grid_stride()) {
        y[i] = f32_to_f16(x[i]);
    }
}

extern "C" __global__ void cast_f16_to_f32(const __half* __restrict__ x, float* __restrict__ y, int64_t n) { pdl_enter();
    for (int64_t i = global_thread_index(); i < n; i += grid_stride()) {
        y[i] = f16_to_f32(x[i]);
    }
}

extern "C" __global__ void fill_f32(float* __restrict__ y, float value, int64_t n) { pdl_enter();
    for (int64_t i = global_thread_index(); i < n; i += grid_stride()) {
        y[i] = value;
    }
}
