package dev.qlora4j.backend.cpu;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Half;
import dev.qlora4j.tensor.Tensor;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;

/**
 * A read-only 2-D host matrix [rows, cols] of F32, BF16 or F16 values (a linear weight, an
 * embedding table), read in place from its segment: heap arrays and memory-mapped files alike.
 * Values are widened to float32 per vector or per row slice as the kernels consume them.
 */
final class WeightView {
    final MemorySegment seg;
    final DType dtype;
    final int rows;
    final int cols;

    private WeightView(MemorySegment seg, DType dtype, int rows, int cols) {
        this.seg = seg;
        this.dtype = dtype;
        this.rows = rows;
        this.cols = cols;
    }

    /** Wraps a rank-2 host tensor; what names the tensor in error messages (e.g. "linear weight"). */
    static WeightView of(Tensor t, String what) {
        if (t.rank() != 2) {
            throw new IllegalArgumentException(what + " must be 2-D [rows, cols], got " + Arrays.toString(t.shape()));
        }
        return new WeightView(checkedSegment(t, what), t.dtype(), t.dim(0), t.dim(1));
    }

    /** A rank-1 host tensor [n] viewed as one row. */
    static WeightView ofVector(Tensor t, String what) {
        if (t.rank() != 1) {
            throw new IllegalArgumentException(what + " must be 1-D, got " + Arrays.toString(t.shape()));
        }
        return new WeightView(checkedSegment(t, what), t.dtype(), 1, t.dim(0));
    }

    private static MemorySegment checkedSegment(Tensor t, String what) {
        if (t.dtype() != DType.F32 && t.dtype() != DType.BF16 && t.dtype() != DType.F16) {
            throw new IllegalArgumentException(what + " has dtype " + t.dtype()
                    + "; the CPU backend reads F32, BF16 or F16 weights (cast it first)");
        }
        if (!t.device().isCpu()) {
            throw new IllegalArgumentException(what + " is on " + t.device() + "; the CPU backend needs host tensors");
        }
        return t.segment();
    }

    /** One value at flat element index elem, as float32. */
    float get(long elem) {
        return switch (dtype) {
            case F32 -> seg.getAtIndex(Tensor.F32_LE, elem);
            case BF16 -> Half.bf16ToFloat(seg.getAtIndex(Tensor.I16_LE, elem));
            default -> Half.f16ToFloat(seg.getAtIndex(Tensor.I16_LE, elem));
        };
    }

    /** Rows [r0, r1) widened into dst from dstOff on, row-major with row stride cols. */
    void rowsToFloats(int r0, int r1, float[] dst, int dstOff) {
        elementsToFloats((long) r0 * cols, Math.toIntExact((long) (r1 - r0) * cols), dst, dstOff, null);
    }

    /** Largest scratch elementsToFloats allocates for F16 itself. */
    private static final int F16_SCRATCH = 4096;

    /**
     * count values from flat element index first on, widened into dst[dstOff...]. scratch: a
     * reusable buffer for F16 (any length), or null to allocate one.
     */
    void elementsToFloats(long first, int count, float[] dst, int dstOff, short[] scratch) {
        switch (dtype) {
            case F32 -> MemorySegment.copy(seg, Tensor.F32_LE, first * 4, dst, dstOff, count);
            case BF16 -> HalfVectors.bf16ToFloats(seg, first * 2, dst, dstOff, count);
            default -> HalfVectors.f16ToFloats(seg, first * 2, dst, dstOff, count,
                    scratch != null ? scratch : new short[Math.max(1, Math.min(count, F16_SCRATCH))]);
        }
    }

    /** The whole matrix as a new float32 array (for small tensors: norm weights, biases). */
    float[] toFloats() {
        float[] out = new float[Math.toIntExact((long) rows * cols)];
        rowsToFloats(0, rows, out, 0);
        return out;
    }
}
