package dev.qlora4j.backend.cpu;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Half;
import dev.qlora4j.tensor.Tensor;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import jdk.incubator.vector.FloatVector;

/**
 * A read-only 2-D host matrix [rows, cols] of F32, BF16 or F16 values (a linear weight, an
 * embedding table), read in place from its segment: heap arrays and memory-mapped files alike.
 * Values are widened to float32 per vector or per row as the kernels consume them.
 */
final class WeightView {
    final MemorySegment seg;
    final DType dtype;
    final int rows;
    final int cols;
    private final int elemBytes;

    private WeightView(MemorySegment seg, DType dtype, int rows, int cols) {
        this.seg = seg;
        this.dtype = dtype;
        this.rows = rows;
        this.cols = cols;
        this.elemBytes = dtype.byteSize();
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

    /** F.length() values from flat element index elem on, as float32. */
    FloatVector load(long elem) {
        long off = elem * elemBytes;
        return switch (dtype) {
            case F32 -> HalfVectors.f32(seg, off);
            case BF16 -> HalfVectors.bf16(seg, off);
            default -> HalfVectors.f16(seg, off);
        };
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
        long first = (long) r0 * cols;
        int count = Math.toIntExact((long) (r1 - r0) * cols);
        if (dtype == DType.F32) {
            MemorySegment.copy(seg, Tensor.F32_LE, first * 4, dst, dstOff, count);
            return;
        }
        int lanes = HalfVectors.F.length();
        int bound = count - count % lanes;
        int i = 0;
        for (; i < bound; i += lanes) {
            load(first + i).intoArray(dst, dstOff + i);
        }
        for (; i < count; i++) {
            dst[dstOff + i] = get(first + i);
        }
    }

    /** The whole matrix as a new float32 array (for small tensors: norm weights, biases). */
    float[] toFloats() {
        float[] out = new float[Math.toIntExact((long) rows * cols)];
        rowsToFloats(0, rows, out, 0);
        return out;
    }
}
