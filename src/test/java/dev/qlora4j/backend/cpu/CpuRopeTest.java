package dev.qlora4j.backend.cpu;

import dev.qlora4j.tensor.Tensor;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * ropeInPlace against a float64 reference. As in HF, the angle is the float32 product
 * position * invFreq (the reference forms it the same way, then works in float64). Tolerance
 * 1e-6 * (|x_i| + |x_{i+d/2}|) * scaling: cos and sin are rounded to float32 and each output
 * is two products and a sum in float32 (about 4 roundings of 2^-24 each).
 */
class CpuRopeTest {
    @Test
    void rotatesHalvesOfEveryHeadLikeHfRotateHalf() {
        Random r = TestData.random("rope");
        int n = 6, heads = 3, headDim = 16, half = headDim / 2;
        float[] invFreq = new float[half];
        for (int i = 0; i < half; i++) invFreq[i] = (float) (1.0 / Math.pow(10000, 2.0 * i / headDim));
        int[] positions = {0, 1, 5, 17, 1000, 4095};
        for (float scaling : new float[] {1.0f, 0.7f}) {
            float[] x = TestData.gaussian(r, n * heads * headDim, 1.0);
            double[] ref = new double[x.length];
            double[] tol = new double[x.length];
            for (int row = 0; row < n; row++) {
                for (int h = 0; h < heads; h++) {
                    int o = row * heads * headDim + h * headDim;
                    for (int i = 0; i < half; i++) {
                        double angle = (float) positions[row] * invFreq[i];
                        double c = Math.cos(angle) * scaling, s = Math.sin(angle) * scaling;
                        double a = x[o + i], b = x[o + i + half];
                        ref[o + i] = a * c - b * s;
                        ref[o + i + half] = b * c + a * s;
                        tol[o + i] = tol[o + i + half] = 1e-6 * (Math.abs(a) + Math.abs(b)) * scaling;
                    }
                }
            }
            Tensor t = Tensor.of(x, n, heads * headDim);
            try (CpuBackend cpu = new CpuBackend(2)) {
                cpu.ropeInPlace(t, Tensor.ofInts(positions, n), Tensor.of(invFreq, half), heads, headDim, scaling);
            }
            TestData.assertWithin(ref, t.toFloatArray(), tol, "rope scaling " + scaling);
        }
    }
}
