package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/**
 * Launcher of native/random.cu: normal random values as a pure function of (seed, element index), so a
 * tensor is the same on every run and every grid size. {@link #normalAt} is the same function on the CPU.
 */
public final class RandomKernels {
    private RandomKernels() {}

    /** A new device tensor of dtype F32 or BF16 filled with mean + std * N(0, 1) values. */
    public static Tensor normal(CudaContext ctx, DType dtype, long seed, float mean, float std, int... shape) {
        String kernel = switch (dtype) {
            case F32 -> "random_normal_f32";
            case BF16 -> "random_normal_bf16";
            default -> throw new IllegalArgumentException("random weights are F32 or BF16, not " + dtype);
        };
        Tensor t = ctx.empty(dtype, shape);
        long n = t.numel();
        ctx.launch1d(ctx.function("random", kernel), n, KernelArgs.of().ptr(CudaContext.ptr(t)).i64(n).i64(seed)
                .f32(mean).f32(std));
        return t;
    }

    /**
     * The kernel's N(0, 1) value of element i, computed on the CPU (float32 steps as the kernel; the device's
     * logf / cospif may differ from Math.log / Math.cos in the last bit).
     */
    public static float normalAt(long seed, long i) {
        long h = splitmix64((seed << 32) ^ i ^ (seed >>> 32) * 0xD6E8FEB86659FD93L);
        float u1 = ((float) (h >>> 32) + 1.0f) * 2.3283064365386963e-10f;
        float u2 = (float) (h & 0xFFFFFFFFL) * 2.3283064365386963e-10f;
        return (float) Math.sqrt(-2.0f * (float) Math.log(u1)) * (float) Math.cos(Math.PI * (2.0f * u2));
    }

    static long splitmix64(long z) {
        z += 0x9E3779B97F4A7C15L;
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }
}
