package dev.qlora4j.optim;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.lang.foreign.MemorySegment;

/**
 * float[] access to host tensors for the CPU kernels: the backing array itself when the tensor
 * wraps a whole float[] (Tensor.of), otherwise a converted copy that {@link #store} writes back.
 */
final class HostFloats {
    private HostFloats() {}

    static float[] view(Tensor t, String what) {
        if (!t.device().isCpu()) {
            throw new IllegalStateException(what + " is on " + t.device()
                    + ": the optimizers of dev.qlora4j.optim run on host tensors; use the CUDA backend's optimizer for device tensors");
        }
        if (!t.dtype().isFloating()) {
            throw new IllegalArgumentException(what + " has dtype " + t.dtype() + "; trainable tensors must be floating point (F32, BF16, F16)");
        }
        float[] backing = backingArray(t);
        return backing != null ? backing : t.toFloatArray();
    }

    /** Writes {@code a} into {@code t} unless {@code a} is t's own backing array. */
    static void store(Tensor t, float[] a) {
        if (backingArray(t) == a) return;
        if (t.dtype() == DType.F32) {
            MemorySegment.copy(MemorySegment.ofArray(a), 0, t.segment(), 0, (long) a.length * 4);
        } else {
            for (int i = 0; i < a.length; i++) t.setFloat(i, a[i]);
        }
    }

    private static float[] backingArray(Tensor t) {
        if (t.dtype() != DType.F32) return null;
        MemorySegment s = t.segment();
        if (s.heapBase().orElse(null) instanceof float[] arr && s.address() == 0 && arr.length == t.numel()) {
            return arr;
        }
        return null;
    }
}
