package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.qlora4j.cuda.CudaDriver;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;

/** Shared helpers of the CUDA backend's tests: GPU skip, poisoning, fresh random data, error measures. */
final class CudaCoreTestSupport {
    private CudaCoreTestSupport() {}

    /** A backend on cuda:0 (graphs off unless asked); skips the test without a GPU. */
    static CudaBackend backend(DType activations, boolean graphs) {
        assumeTrue(CudaBackend.isAvailable(), () -> "no GPU: " + CudaDriver.unavailableReason());
        return CudaBackend.create(0, activations, graphs);
    }

    /** A fresh random generator; its seed is printed so that a failure can be replayed. */
    static Random random(String what) {
        long seed = System.nanoTime();
        System.out.println(what + ": seed " + seed);
        return new Random(seed);
    }

    static float[] gaussian(Random r, int n, double std) {
        float[] a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float) (r.nextGaussian() * std);
        return a;
    }

    /** Host values rounded to dtype (what the GPU will hold), as a host tensor of dtype. */
    static Tensor host(float[] values, DType dtype, int... shape) {
        return Tensor.fromFloats(values, dtype, shape);
    }

    /**
     * Fills the allocator's cached blocks of the size class of dtype[shape] with NaN bytes (0xFF: NaN in
     * F32, BF16 and F16), several deep, so the op's next outputs of that size land in poisoned memory and any
     * element it fails to write shows up as NaN.
     */
    static void poison(CudaBackend b, DType dtype, int... shape) {
        CudaContext ctx = b.context();
        List<Tensor> blocks = new ArrayList<>();
        for (int i = 0; i < 4; i++) {
            Tensor t = ctx.empty(dtype, shape);
            ctx.driver().memsetD8Async(CudaContext.ptr(t), (byte) 0xFF, t.byteSize(), ctx.stream());
            blocks.add(t);
        }
        blocks.forEach(Tensor::close);
    }

    /** ||a - ref|| / ||ref|| in float64; fails on any NaN in a. */
    static double relError(float[] a, float[] ref, String what) {
        assertEquals(ref.length, a.length, what + ": element count");
        double num = 0, den = 0;
        for (int i = 0; i < ref.length; i++) {
            if (Float.isNaN(a[i]) && !Float.isNaN(ref[i])) fail(what + ": element " + i + " is NaN (not written?)");
            double d = (double) a[i] - ref[i];
            num += d * d;
            den += (double) ref[i] * ref[i];
        }
        return den == 0 ? Math.sqrt(num) : Math.sqrt(num / den);
    }

    static void assertClose(float[] a, float[] ref, double tol, String what) {
        double e = relError(a, ref, what);
        System.out.printf("%s: rel error %.3g (tolerance %.1g)%n", what, e, tol);
        assertTrue(e <= tol, what + ": rel error " + e + " > " + tol);
    }

    static void assertBitEqual(float[] a, float[] ref, String what) {
        assertEquals(ref.length, a.length, what + ": element count");
        for (int i = 0; i < ref.length; i++) {
            if (Float.floatToIntBits(a[i]) != Float.floatToIntBits(ref[i])) {
                fail(what + ": element " + i + " is " + a[i] + ", expected " + ref[i] + " " + Arrays.toString(
                        Arrays.copyOfRange(ref, Math.max(0, i - 2), Math.min(ref.length, i + 3))));
            }
        }
    }

    /** A device tensor's values as floats (any float dtype). */
    static float[] values(CudaBackend b, Tensor t) {
        return b.toHost(t).toFloatArray();
    }
}
