package dev.qlora4j.quant;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Half;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.*;

/**
 * Fused 4-bit linear vs a float64 reference on the dequantized weight. Tolerance: float32 accumulation of k
 * products, |error| <= 4 * k * 2^-24 * sum_j |x_j w_j| (a loose form of the standard dot-product bound).
 */
class Nf4MatmulTest {
    static double[] reference(float[] x, int n, float[] w, int m, int k, float[] bias) {
        double[] y = new double[n * m];
        for (int i = 0; i < n; i++) {
            for (int o = 0; o < m; o++) {
                double s = bias == null ? 0 : bias[o];
                for (int j = 0; j < k; j++) s += (double) x[i * k + j] * w[o * k + j];
                y[i * m + o] = s;
            }
        }
        return y;
    }

    static double absDot(float[] x, int i, float[] w, int o, int k) {
        double s = 0;
        for (int j = 0; j < k; j++) s += Math.abs((double) x[i * k + j] * w[o * k + j]);
        return s;
    }

    @Test
    void matchesFloat64ReferenceForOddShapesAndBothTypes() {
        int[][] shapes = {{48, 200}, {31, 99}, {7, 4096}}; // k not a multiple of the blocksize, odd k (odd row starts)
        for (int[] sh : shapes) {
            int m = sh[0], k = sh[1];
            float[] wv = QuantBench.gaussian(m * k, 0.02, m + k);
            for (QuantType t : QuantType.values()) {
                for (boolean dq : new boolean[] {false, true}) {
                    QuantState4bit w = Quant4bit.quantize(wv, new int[] {m, k}, t, 64, dq);
                    float[] wd = Quant4bit.dequantizeToF32(w);
                    for (int n : new int[] {1, 6}) { // 6 = one group of four rows plus two single rows
                        float[] x = QuantBench.randomInput(n, k, n * 31L + k);
                        float[] bias = QuantBench.gaussian(m, 0.1, 3);
                        float[] y = Nf4Matmul.linear(x, n, w, bias);
                        double[] ref = reference(x, n, wd, m, k, bias);
                        for (int i = 0; i < n; i++) {
                            for (int o = 0; o < m; o++) {
                                double tol = 4.0 * k * Math.ulp(1f) / 2 * (absDot(x, i, wd, o, k) + Math.abs(bias[o])) + 1e-30;
                                assertEquals(ref[i * m + o], y[i * m + o], tol, t + " " + m + "x" + k + " n=" + n + " [" + i + "," + o + "]");
                            }
                        }
                    }
                }
            }
        }
    }

    @Test
    void matvecEqualsLinearWithOneRow() {
        QuantState4bit w = QuantBench.randomWeight(64, 320, QuantType.NF4, 64, true, 8);
        float[] x = QuantBench.randomInput(1, 320, 9);
        assertArrayEquals(Nf4Matmul.linear(x, 1, w, null), Nf4Matmul.matvec(w, x));
        float[] y = new float[64];
        QuantBench.matvec(w, x, y);
        assertArrayEquals(Nf4Matmul.matvec(w, x), y);
    }

    @Test
    void bf16ComputeRoundsInputsWeightsAndOutput() {
        int m = 20, k = 130, n = 5;
        float[] wv = QuantBench.gaussian(m * k, 0.05, 4);
        // weight stored as bf16 before quantization, as in a bf16 model; compute dtype bf16 (QLoRA)
        QuantState4bit w = Quant4bit.quantize(Tensor.fromFloats(wv, DType.BF16, m, k), QuantType.NF4, 64, true);
        float[] x = QuantBench.randomInput(n, k, 5);
        float[] bias = QuantBench.gaussian(m, 0.1, 6);
        float[] y = Nf4Matmul.linear(x, n, w, bias, DType.BF16);
        float[] wd = Quant4bit.dequantize(w, DType.BF16).toFloatArray(); // dequantize_4bit(..) in the state dtype
        float[] xb = new float[x.length];
        for (int i = 0; i < x.length; i++) xb[i] = Half.roundBf16(x[i]);
        float[] bb = new float[m];
        for (int o = 0; o < m; o++) bb[o] = Half.roundBf16(bias[o]);
        double[] ref = reference(xb, n, wd, m, k, bb);
        for (int i = 0; i < n * m; i++) {
            assertEquals(y[i], Half.roundBf16(y[i]), 0f, "output is a bf16 value");
            // one bf16 ulp for the final rounding plus float32 accumulation
            double tol = Math.ulp(Half.roundBf16((float) ref[i])) * 65536 + 1e-6; // bf16 has 16 fewer mantissa bits
            assertEquals(ref[i], y[i], tol, "element " + i);
        }
        // with f32 compute the same weight still passes through bf16 (the state dtype), inputs do not
        float[] y32 = Nf4Matmul.linear(x, n, w, bias, DType.F32);
        double[] ref32 = reference(x, n, wd, m, k, bias);
        for (int i = 0; i < n * m; i++) assertEquals(ref32[i], y32[i], 1e-5);
    }

    @Test
    void shapeErrors() {
        QuantState4bit w = QuantBench.randomWeight(4, 64, QuantType.NF4, 64, false, 1);
        assertThrows(IllegalArgumentException.class, () -> Nf4Matmul.linear(new float[63], 1, w, null));
        assertThrows(IllegalArgumentException.class, () -> Nf4Matmul.linear(new float[64], 1, w, new float[3]));
        assertThrows(IllegalArgumentException.class, () -> Nf4Matmul.linear(new float[64], 1, w, null, DType.I8));
        QuantState4bit v = Quant4bit.quantize(new float[64], new int[] {64}, QuantType.NF4, 64, false);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Nf4Matmul.linear(new float[64], 1, v, null));
        assertTrue(e.getMessage().contains("2-D"), e.getMessage());
    }
}
