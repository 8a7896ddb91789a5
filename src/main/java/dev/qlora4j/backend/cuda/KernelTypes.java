package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.Cublas;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Arrays;

/**
 * The dtype parts of kernel names and the checks every launcher shares. Kernels are named
 * {@code <op>_<fwd>_<act>} with act "f32" or "bf16" (the activation dtype), plus {@code _w<w>} where a
 * weight of its own dtype is read (w = "f32", "bf16" or "f16"): e.g. {@code rmsnorm_fwd_bf16_wf32}.
 */
final class KernelTypes {
    private KernelTypes() {}

    /** "f32" or "bf16": the activation dtypes the kernels are built for. */
    static String act(DType t) {
        return switch (t) {
            case F32 -> "f32";
            case BF16 -> "bf16";
            default -> throw new IllegalArgumentException("CUDA activations are F32 or BF16, not " + t);
        };
    }

    /** "wf32", "wbf16" or "wf16": weight dtypes the kernels read. */
    static String weight(Tensor w, String what) {
        return switch (w.dtype()) {
            case F32 -> "wf32";
            case BF16 -> "wbf16";
            case F16 -> "wf16";
            default -> throw new IllegalArgumentException(what + " has dtype " + w.dtype()
                    + "; the CUDA backend reads F32, BF16 or F16 weights (cast it first)");
        };
    }

    static Cublas.DataType cublas(DType t) {
        return switch (t) {
            case F32 -> Cublas.DataType.F32;
            case BF16 -> Cublas.DataType.BF16;
            case F16 -> Cublas.DataType.F16;
            default -> throw new IllegalArgumentException("cuBLAS multiplies F32, BF16 or F16 matrices, not " + t);
        };
    }

    static void requireDevice(Tensor t, String what) {
        if (!t.device().isCuda() || !(t.storage() instanceof CudaStorage)) {
            throw new IllegalArgumentException(what + " " + t + " is not in GPU memory: upload it with the CUDA backend first");
        }
    }

    static void requireRank(Tensor t, int rank, String what) {
        if (t.rank() != rank) {
            throw new IllegalArgumentException(what + " must have rank " + rank + ", got shape " + Arrays.toString(t.shape()));
        }
    }

    static void requireSameShape(Tensor a, Tensor b, String op) {
        if (!Arrays.equals(a.shape(), b.shape())) {
            throw new IllegalArgumentException(op + ": shapes differ: " + Arrays.toString(a.shape()) + " vs "
                    + Arrays.toString(b.shape()));
        }
    }

    /** Index tensors (ids, positions, rows, targets, padStart): I32, rank 1, on the device. */
    static void requireIndices(Tensor t, String what) {
        requireDevice(t, what);
        if (t.dtype() != DType.I32) {
            throw new IllegalArgumentException(what + " must be an I32 index tensor on the GPU, got " + t.dtype()
                    + Arrays.toString(t.shape()) + " (upload an int[] with Tensor.ofInts)");
        }
        requireRank(t, 1, what);
    }

    /** Vectorized kernels load 16 bytes at a time: every tensor must start 16-byte aligned (allocator blocks do). */
    static long aligned16(Tensor t) {
        long p = CudaContext.ptr(t);
        if ((p & 15) != 0) {
            throw new IllegalArgumentException(t + " starts at 0x" + Long.toHexString(p)
                    + ", not 16-byte aligned: CUDA kernels need tensors that start at an allocator block");
        }
        return p;
    }

    static String shape(Tensor t) { return Arrays.toString(t.shape()); }
}
