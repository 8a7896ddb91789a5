package dev.qlora4j.backend.cpu;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;

/**
 * Access to activation tensors as float arrays, and the shape checks every op shares. CPU
 * activations are F32 tensors backed by a heap float[] (Tensor.of / Tensor.zeros), which the
 * kernels use directly; anything else (native F32, 16-bit floats) is read into a copy.
 */
final class Activations {
    private Activations() {}

    /** The heap float[] behind t when t is F32 and spans the whole array from index 0, else null. */
    static float[] backingArray(Tensor t) {
        if (t.dtype() != DType.F32 || !t.device().isCpu()) return null;
        MemorySegment seg = t.segment();
        if (seg.address() != 0) return null;
        return seg.heapBase()
                .filter(float[].class::isInstance)
                .map(float[].class::cast)
                .filter(a -> a.length == t.numel())
                .orElse(null);
    }

    /** t's values as float32: its own array when possible (do not write to it), else a copy. */
    static float[] read(Tensor t, String what) {
        requireHostFloat(t, what);
        float[] direct = backingArray(t);
        return direct != null ? direct : t.toFloatArray();
    }

    /** Writes values back into t (a no-op when values is t's own array). */
    static void writeBack(Tensor t, float[] values) {
        if (backingArray(t) == values) return;
        MemorySegment.copy(values, 0, t.segment(), Tensor.F32_LE, 0, values.length);
    }

    static void requireHostFloat(Tensor t, String what) {
        if (!t.device().isCpu()) {
            throw new IllegalArgumentException(what + " is on " + t.device() + "; the CPU backend needs host tensors");
        }
        if (!t.dtype().isFloating()) {
            throw new IllegalArgumentException(what + " must be a floating-point tensor, got " + t.dtype()
                    + Arrays.toString(t.shape()));
        }
    }

    /** Tensors that ops write into in place must be F32 (the CPU activation dtype). */
    static void requireF32(Tensor t, String what) {
        requireHostFloat(t, what);
        if (t.dtype() != DType.F32) {
            throw new IllegalArgumentException(what + " must be F32 (the CPU backend's activation dtype), got "
                    + t.dtype() + Arrays.toString(t.shape()));
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

    /** Index tensors (token ids, positions, rows, targets) as ints; I32 expected, I64 accepted. */
    static int[] readIndices(Tensor t, String what) {
        if (!t.device().isCpu()) {
            throw new IllegalArgumentException(what + " is on " + t.device() + "; the CPU backend needs host tensors");
        }
        if (t.dtype() != DType.I32 && t.dtype() != DType.I64) {
            throw new IllegalArgumentException(what + " must be an I32 index tensor, got " + t.dtype()
                    + Arrays.toString(t.shape()));
        }
        requireRank(t, 1, what);
        return t.toIntArray();
    }

    static String shape(Tensor t) {
        return Arrays.toString(t.shape());
    }
}
