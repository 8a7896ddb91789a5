package dev.qlora4j.backend.cpu;

import static org.junit.jupiter.api.Assertions.fail;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Random;

/**
 * Random inputs with a printed seed (rerun a failure with -Dqlora4j.test.seed=SEED) and
 * comparisons of float32 results against float64 references.
 */
final class TestData {
    private TestData() {}

    static Random random(String testName) {
        String fixed = System.getProperty("qlora4j.test.seed");
        long seed = fixed != null ? Long.parseLong(fixed) : System.nanoTime();
        System.out.println(testName + " seed=" + seed);
        return new Random(seed);
    }

    static float[] gaussian(Random r, int n, double std) {
        float[] a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float) (r.nextGaussian() * std);
        return a;
    }

    /** data as a host tensor of dtype (rounded to nearest even for 16-bit floats). */
    static Tensor tensor(float[] data, DType dtype, int... shape) {
        return Tensor.fromFloats(data, dtype, shape);
    }

    /**
     * The same bytes as t in native memory at an odd 2-byte offset, the way a tensor sits inside
     * a memory-mapped safetensors file (no alignment guarantee beyond the element size).
     */
    static Tensor nativeView(Tensor t, Arena arena) {
        MemorySegment seg = arena.allocate(t.byteSize() + 2, 8).asSlice(2, t.byteSize());
        MemorySegment.copy(t.segment(), 0, seg, 0, t.byteSize());
        return Tensor.view(seg, t.dtype(), t.shape());
    }

    /** t's exact values as doubles (16-bit floats decode exactly). */
    static double[] doubles(Tensor t) {
        double[] d = new double[Math.toIntExact(t.numel())];
        for (int i = 0; i < d.length; i++) d[i] = t.getFloat(i);
        return d;
    }

    /** Fails unless |got[i] - ref[i]| <= tol[i] for every i, naming the first bad index. */
    static void assertWithin(double[] ref, float[] got, double[] tol, String what) {
        if (ref.length != got.length) fail(what + ": length " + got.length + " != reference " + ref.length);
        for (int i = 0; i < ref.length; i++) {
            double err = Math.abs(got[i] - ref[i]);
            if (!(err <= tol[i])) {
                fail(what + ": index " + i + " got " + got[i] + " expected " + ref[i] + " (error " + err
                        + " > tolerance " + tol[i] + ")");
            }
        }
    }

    /** |got - ref| <= atol + rtol * |ref| elementwise. */
    static void assertClose(double[] ref, float[] got, double atol, double rtol, String what) {
        double[] tol = new double[ref.length];
        for (int i = 0; i < ref.length; i++) tol[i] = atol + rtol * Math.abs(ref[i]);
        assertWithin(ref, got, tol, what);
    }
}
