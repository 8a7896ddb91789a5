package dev.qlora4j.quant;

import dev.qlora4j.tensor.DType;

import java.util.SplittableRandom;

/**
 * Static entry points for JMH benchmarks (the bench classes live in bench/): fixtures built once in a
 * {@code @Setup} method and allocation-free operations to measure.
 *
 * <pre>{@code
 * QuantState4bit w = QuantBench.randomWeight(4096, 4096, QuantType.NF4, 64, true, 1);
 * float[] out = new float[4096 * 4096];
 * QuantBench.dequantize(w, out);                 // dequantize throughput
 * float[] x = QuantBench.randomInput(1, 4096, 2), y = new float[4096];
 * QuantBench.matvec(w, x, y);                    // NF4 matvec (one token)
 * }</pre>
 */
public final class QuantBench {
    private QuantBench() {}

    /** A [rows, cols] weight with N(0, 0.02) values (typical LLM init scale), quantized. */
    public static QuantState4bit randomWeight(int rows, int cols, QuantType type, int blocksize, boolean doubleQuant, long seed) {
        float[] w = gaussian(rows * cols, 0.02, seed);
        return Quant4bit.quantize(w, new int[] {rows, cols}, type, blocksize, doubleQuant);
    }

    /** Input activations [n, k] with N(0, 1) values. */
    public static float[] randomInput(int n, int k, long seed) {
        return gaussian(n * k, 1.0, seed);
    }

    /** Dequantizes w into out (length >= numel), float32, all cores. */
    public static void dequantize(QuantState4bit w, float[] out) {
        Quant4bit.dequantizeInto(w, out);
    }

    /** y [m] = W x for x [k], float32 compute, all cores. */
    public static void matvec(QuantState4bit w, float[] x, float[] y) {
        Nf4Matmul.linearInto(x, 1, w, null, DType.F32, y);
    }

    /** y [n, m] = x [n, k] W^T in the given compute dtype, all cores. */
    public static void linear(QuantState4bit w, float[] x, int n, DType computeDType, float[] y) {
        Nf4Matmul.linearInto(x, n, w, null, computeDType, y);
    }

    static float[] gaussian(int n, double std, long seed) {
        SplittableRandom r = new SplittableRandom(seed);
        float[] v = new float[n];
        for (int i = 0; i < n; i += 2) {
            // Box-Muller from the splittable generator (deterministic per seed)
            double u1 = 1.0 - r.nextDouble();
            double u2 = r.nextDouble();
            double rad = Math.sqrt(-2.0 * Math.log(u1));
            v[i] = (float) (std * rad * Math.cos(2 * Math.PI * u2));
            if (i + 1 < n) v[i + 1] = (float) (std * rad * Math.sin(2 * Math.PI * u2));
        }
        return v;
    }
}
