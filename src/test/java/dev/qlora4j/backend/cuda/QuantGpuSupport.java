package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.qlora4j.cuda.CudaDriver;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Half;
import dev.qlora4j.tensor.Tensor;

import java.util.Random;

/** Shared setup of the quantization GPU tests: a context (skip without a GPU), poisoned outputs, tolerances. */
final class QuantGpuSupport {
    private QuantGpuSupport() {}

    /** A context on device 0; skips the test when no GPU is usable. */
    static CudaContext context() {
        assumeTrue(CudaDriver.isAvailable(), () -> "no GPU: " + CudaDriver.unavailableReason());
        return new CudaContext(CudaDriver.get(), 0);
    }

    /** An uninitialized device tensor filled with 0xFF bytes: NaN in F32, BF16 and F16, -1 in integers. */
    static Tensor poisoned(CudaContext ctx, DType dtype, int... shape) {
        Tensor t = ctx.empty(dtype, shape);
        ctx.driver().memsetD8Async(CudaContext.ptr(t), (byte) 0xFF, Math.max(1, t.byteSize()), ctx.stream());
        return t;
    }

    /** Host values rounded to dtype (the values a tensor of that dtype holds). */
    static float[] roundedTo(DType dtype, float[] v) {
        float[] r = new float[v.length];
        for (int i = 0; i < v.length; i++) r[i] = round(dtype, v[i]);
        return r;
    }

    static float round(DType d, float v) {
        return switch (d) {
            case BF16 -> Half.roundBf16(v);
            case F16 -> Half.roundF16(v);
            default -> v;
        };
    }

    /** The spacing of dtype's values near v (one unit in the last place of the rounded value). */
    static double quantum(DType d, double v) {
        float f = (float) Math.abs(v);
        return switch (d) {
            case BF16 -> Math.ulp(Half.roundBf16(f)) * 65536.0;
            case F16 -> Math.max(Math.ulp(Half.roundF16(f)) * 8192.0, Math.pow(2, -24));
            default -> Math.ulp(f);
        };
    }

    /** Gaussian values with a spread of magnitudes across rows (so blocks have different absmax). */
    static float[] randomWeights(Random rnd, int rows, int cols) {
        float[] w = new float[rows * cols];
        for (int r = 0; r < rows; r++) {
            double scale = Math.exp(rnd.nextGaussian());
            for (int c = 0; c < cols; c++) w[r * cols + c] = (float) (rnd.nextGaussian() * scale * 0.05);
        }
        return w;
    }

    static float[] gaussian(Random rnd, int n, double scale) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float) (rnd.nextGaussian() * scale);
        return v;
    }

    /** A device tensor of dtype holding v rounded to dtype. */
    static Tensor upload(CudaContext ctx, float[] v, DType dtype, int... shape) {
        return ctx.upload(Tensor.fromFloats(v, dtype, shape));
    }

    static byte[] bytes(Tensor host) {
        return host.segment().asSlice(0, host.byteSize()).toArray(java.lang.foreign.ValueLayout.JAVA_BYTE);
    }
}
