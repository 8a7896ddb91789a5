package dev.qlora4j.backend.cpu;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * Backward passes of RMSNorm (input and accumulated weight gradient), SwiGLU, RoPE and the
 * embedding lookup, each against central finite differences of a float64 forward written here
 * (tolerance: see FiniteDifferences). Hidden sizes are not multiples of the vector width.
 */
class RowOpsBackwardTest {

    private static double rmsNormLoss(double[] x, double[] w, double[] g, int n, int h, double eps) {
        double l = 0;
        for (int r = 0; r < n; r++) {
            double ss = 0;
            for (int j = 0; j < h; j++) ss += x[r * h + j] * x[r * h + j];
            double inv = 1 / Math.sqrt(ss / h + eps);
            for (int j = 0; j < h; j++) l += g[r * h + j] * x[r * h + j] * inv * w[j];
        }
        return l;
    }

    @Test
    void rmsNormBackwardMatchesFiniteDifferences() {
        Random r = TestData.random("rmsNorm backward");
        int n = 5, h = 37;
        float eps = 1e-5f;
        float[] x = TestData.gaussian(r, n * h, 1.0), g = TestData.gaussian(r, n * h, 1.0);
        float[] w = TestData.gaussian(r, h, 1.0);
        Tensor weight = TestData.tensor(w, DType.BF16, h); // a 16-bit norm weight, as checkpoints hold it
        double[] wd = TestData.doubles(weight), xd = FiniteDifferences.toDoubles(x), gd = FiniteDifferences.toDoubles(g);
        double[] fdX = FiniteDifferences.gradient(xd.clone(), xs -> rmsNormLoss(xs, wd, gd, n, h, eps));
        double[] fdW = FiniteDifferences.gradient(wd.clone(), ws -> rmsNormLoss(xd, ws, gd, n, h, eps));
        try (CpuBackend cpu = new CpuBackend(2)) {
            float[] start = TestData.gaussian(r, h, 1.0);
            Tensor gradW = Tensor.of(start.clone(), h);
            float[] gx = cpu.rmsNormBackward(Tensor.of(x, n, h), weight, eps, Tensor.of(g, n, h), gradW).toFloatArray();
            FiniteDifferences.assertGradient(fdX, gx, "rmsNorm grad_x");
            float[] inc = gradW.toFloatArray();
            for (int j = 0; j < h; j++) inc[j] -= start[j];
            FiniteDifferences.assertGradient(fdW, inc, "rmsNorm grad_weight (accumulated)");
            // without a weight gradient the input gradient is the same
            assertArrayEquals(gx, cpu.rmsNormBackward(Tensor.of(x, n, h), weight, eps, Tensor.of(g, n, h), null)
                    .toFloatArray());
        }
    }

    @Test
    void siluMulBackwardMatchesFiniteDifferences() {
        Random r = TestData.random("siluMul backward");
        int n = 3, h = 29;
        float[] gate = TestData.gaussian(r, n * h, 2.0), up = TestData.gaussian(r, n * h, 1.0);
        float[] g = TestData.gaussian(r, n * h, 1.0);
        double[] gd = FiniteDifferences.toDoubles(g), gateD = FiniteDifferences.toDoubles(gate), upD = FiniteDifferences.toDoubles(up);
        java.util.function.BiFunction<double[], double[], Double> loss = (gt, u) -> {
            double l = 0;
            for (int i = 0; i < gt.length; i++) l += gd[i] * gt[i] / (1 + Math.exp(-gt[i])) * u[i];
            return l;
        };
        double[] fdGate = FiniteDifferences.gradient(gateD.clone(), gs -> loss.apply(gs, upD));
        double[] fdUp = FiniteDifferences.gradient(upD.clone(), us -> loss.apply(gateD, us));
        try (CpuBackend cpu = new CpuBackend(2)) {
            Tensor[] grads = cpu.siluMulBackward(Tensor.of(gate, n, h), Tensor.of(up, n, h), Tensor.of(g, n, h));
            FiniteDifferences.assertGradient(fdGate, grads[0].toFloatArray(), "siluMul grad_gate");
            FiniteDifferences.assertGradient(fdUp, grads[1].toFloatArray(), "siluMul grad_up");
        }
    }

    @Test
    void ropeBackwardMatchesFiniteDifferencesOfTheForward() {
        Random r = TestData.random("rope backward");
        int n = 4, heads = 3, headDim = 10, half = headDim / 2;
        float scaling = 1.25f;
        int[] pos = {0, 5, 17, 1000};
        float[] invFreq = new float[half];
        for (int i = 0; i < half; i++) invFreq[i] = (float) Math.pow(10000, -2.0 * i / headDim);
        float[] x = TestData.gaussian(r, n * heads * headDim, 1.0), g = TestData.gaussian(r, n * heads * headDim, 1.0);
        double[] gd = FiniteDifferences.toDoubles(g);
        double[] fd = FiniteDifferences.gradient(FiniteDifferences.toDoubles(x), xs -> {
            double l = 0;
            for (int row = 0; row < n; row++) {
                for (int h = 0; h < heads; h++) {
                    int o = (row * heads + h) * headDim;
                    for (int i = 0; i < half; i++) {
                        double angle = (double) pos[row] * invFreq[i];
                        double c = Math.cos(angle) * scaling, s = Math.sin(angle) * scaling;
                        double a = xs[o + i], b = xs[o + i + half];
                        l += gd[o + i] * (a * c - b * s) + gd[o + i + half] * (b * c + a * s);
                    }
                }
            }
            return l;
        });
        try (CpuBackend cpu = new CpuBackend(2)) {
            Tensor grad = Tensor.of(g.clone(), n, heads * headDim);
            cpu.ropeBackwardInPlace(grad, Tensor.ofInts(pos, n), Tensor.of(invFreq, half), heads, headDim, scaling);
            FiniteDifferences.assertGradient(fd, grad.toFloatArray(), "rope backward");
            // the backward undoes the forward (times scaling^2): a rotation by -angle
            Tensor y = Tensor.of(x.clone(), n, heads * headDim);
            cpu.ropeInPlace(y, Tensor.ofInts(pos, n), Tensor.of(invFreq, half), heads, headDim, 1f);
            cpu.ropeBackwardInPlace(y, Tensor.ofInts(pos, n), Tensor.of(invFreq, half), heads, headDim, 1f);
            TestData.assertClose(FiniteDifferences.toDoubles(x), y.toFloatArray(), 1e-6, 1e-6, "rope then its transpose");
        }
    }

    @Test
    void embeddingBackwardScattersRowsIntoTheTableGradient() {
        Random r = TestData.random("embedding backward");
        int vocab = 11, hidden = 300; // hidden spans two column slices of 256
        int[] ids = {3, 7, 3, 0, 10, 3};
        int n = ids.length;
        float[] table = TestData.gaussian(r, vocab * hidden, 1.0), g = TestData.gaussian(r, n * hidden, 1.0);
        double[] gd = FiniteDifferences.toDoubles(g);
        double[] fd = FiniteDifferences.gradient(FiniteDifferences.toDoubles(table), t -> {
            double l = 0;
            for (int i = 0; i < n; i++) for (int c = 0; c < hidden; c++) l += gd[i * hidden + c] * t[ids[i] * hidden + c];
            return l;
        });
        try (CpuBackend cpu = new CpuBackend(2)) {
            float[] start = TestData.gaussian(r, vocab * hidden, 1.0);
            Tensor gradTable = Tensor.of(start.clone(), vocab, hidden);
            cpu.embeddingBackward(Tensor.ofInts(ids, n), Tensor.of(g, n, hidden), gradTable);
            float[] inc = gradTable.toFloatArray();
            for (int i = 0; i < inc.length; i++) inc[i] -= start[i];
            FiniteDifferences.assertGradient(fd, inc, "embedding grad_table (accumulated)");
            // rows never looked up keep their gradient exactly
            float[] after = gradTable.toFloatArray();
            for (int c = 0; c < hidden; c++) {
                if (after[hidden + c] != start[hidden + c]) throw new AssertionError("row 1 changed at column " + c);
            }
            assertThrows(IllegalArgumentException.class, () -> cpu.embeddingBackward(Tensor.ofInts(new int[] {vocab}, 1),
                    Tensor.of(new float[hidden], 1, hidden), gradTable));
        }
    }
}
