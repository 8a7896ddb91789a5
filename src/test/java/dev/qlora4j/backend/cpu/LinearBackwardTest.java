package dev.qlora4j.backend.cpu;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.quant.Int8Weight;
import dev.qlora4j.quant.Quant4bit;
import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import java.lang.foreign.Arena;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * Backward of y = x w^T + b: linearBackwardInput, linearBackwardWeight (accumulating),
 * sumRowsInto (accumulating) against central finite differences of a float64 linear layer, and
 * linearQuantizedBackwardInput against gradOut times the dequantized weight in float64.
 *
 * <p>Shapes: n = 7 rows (a 4-row tile plus a tail), m = 70 outputs (one 64-row inner block plus a
 * tail), k = 150 inputs (a 128-column slice plus a tail not a multiple of the vector width), so
 * every path of MatmulAccumulate runs; a larger case splits the rows over threads as well.
 */
class LinearBackwardTest {
    private static final int N = 7, M = 70, K = 150;

    /** L = sum_ij g[i, j] * (x w^T + b)[i, j] in float64. */
    private static double loss(double[] x, double[] w, double[] b, double[] g, int n, int m, int k) {
        double l = 0;
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < m; j++) {
                double y = b[j];
                for (int c = 0; c < k; c++) y += x[i * k + c] * w[j * k + c];
                l += g[i * m + j] * y;
            }
        }
        return l;
    }

    @Test
    void gradientsMatchFiniteDifferencesForEveryWeightDtype() {
        Random r = TestData.random("linear backward");
        float[] x = TestData.gaussian(r, N * K, 1.0);
        float[] w = TestData.gaussian(r, M * K, 0.1);
        float[] b = TestData.gaussian(r, M, 0.1);
        float[] g = TestData.gaussian(r, N * M, 1.0);
        double[] xd = FiniteDifferences.toDoubles(x), bd = FiniteDifferences.toDoubles(b), gd = FiniteDifferences.toDoubles(g);
        try (CpuBackend cpu = new CpuBackend(2); Arena arena = Arena.ofShared()) {
            for (DType dtype : new DType[] {DType.F32, DType.BF16, DType.F16}) {
                // the weight as a memory-mapped checkpoint would hold it: native memory, 16-bit or f32
                Tensor wt = TestData.nativeView(TestData.tensor(w, dtype, M, K), arena);
                double[] wd = TestData.doubles(wt);
                double[] fdX = FiniteDifferences.gradient(xd.clone(), xs -> loss(xs, wd, bd, gd, N, M, K));
                float[] gradX = cpu.linearBackwardInput(Tensor.of(g, N, M), wt).toFloatArray();
                FiniteDifferences.assertGradient(fdX, gradX, "grad_x, " + dtype + " weight");
            }
        }
    }

    /** Smaller shapes: a finite difference per weight element costs a whole float64 forward. */
    @Test
    void weightAndBiasGradientsAccumulateAndMatchFiniteDifferences() {
        Random r = TestData.random("linear weight backward");
        int n = 5, m = 20, k = 37;
        float[] x = TestData.gaussian(r, n * k, 1.0);
        float[] w = TestData.gaussian(r, m * k, 0.1);
        float[] b = TestData.gaussian(r, m, 0.1);
        float[] g = TestData.gaussian(r, n * m, 1.0);
        double[] xd = FiniteDifferences.toDoubles(x), wd = FiniteDifferences.toDoubles(w);
        double[] bd = FiniteDifferences.toDoubles(b), gd = FiniteDifferences.toDoubles(g);
        double[] fdW = FiniteDifferences.gradient(wd.clone(), ws -> loss(xd, ws, bd, gd, n, m, k));
        double[] fdB = FiniteDifferences.gradient(bd.clone(), bs -> loss(xd, wd, bs, gd, n, m, k));
        try (CpuBackend cpu = new CpuBackend(2)) {
            Tensor freshW = Tensor.zeros(DType.F32, m, k);
            cpu.linearBackwardWeight(Tensor.of(g, n, m), Tensor.of(x, n, k), freshW);
            FiniteDifferences.assertGradient(fdW, freshW.toFloatArray(), "grad_w");
            // accumulate: start from a non-zero gradient and check the increment
            float[] start = TestData.gaussian(r, m * k, 1.0);
            Tensor gradW = Tensor.of(start.clone(), m, k);
            cpu.linearBackwardWeight(Tensor.of(g, n, m), Tensor.of(x, n, k), gradW);
            float[] increment = gradW.toFloatArray();
            for (int i = 0; i < increment.length; i++) increment[i] -= start[i];
            FiniteDifferences.assertGradient(fdW, increment, "grad_w (accumulated)");

            float[] startB = TestData.gaussian(r, m, 1.0);
            Tensor gradB = Tensor.of(startB.clone(), m);
            cpu.sumRowsInto(Tensor.of(g, n, m), gradB);
            float[] gb = gradB.toFloatArray();
            for (int i = 0; i < m; i++) gb[i] -= startB[i];
            FiniteDifferences.assertGradient(fdB, gb, "grad_b (accumulated)");
        }
    }

    /** Many rows: the product is split over row groups and column slices; results equal 1 thread's exactly. */
    @Test
    void largeProductsAreSplitOverThreadsAndStayDeterministic() {
        Random r = TestData.random("linear backward large");
        int n = 260, m = 90, k = 300;
        float[] g = TestData.gaussian(r, n * m, 1.0);
        float[] w = TestData.gaussian(r, m * k, 0.1);
        float[] x = TestData.gaussian(r, n * k, 1.0);
        try (CpuBackend one = new CpuBackend(1); CpuBackend four = new CpuBackend(4)) {
            float[] gx = four.linearBackwardInput(Tensor.of(g, n, m), Tensor.of(w, m, k)).toFloatArray();
            assertArrayEquals(one.linearBackwardInput(Tensor.of(g, n, m), Tensor.of(w, m, k)).toFloatArray(), gx);
            double[] ref = new double[n * k];
            double[] tol = new double[n * k];
            for (int i = 0; i < n; i++) {
                for (int c = 0; c < k; c++) {
                    double s = 0, abs = 0;
                    for (int j = 0; j < m; j++) {
                        s += (double) g[i * m + j] * w[j * k + c];
                        abs += Math.abs((double) g[i * m + j] * w[j * k + c]);
                    }
                    ref[i * k + c] = s;
                    tol[i * k + c] = m * 0x1p-24 * abs; // m float32 FMAs
                }
            }
            TestData.assertWithin(ref, gx, tol, "grad_x large");
            Tensor w1 = Tensor.zeros(DType.F32, m, k), w4 = Tensor.zeros(DType.F32, m, k);
            one.linearBackwardWeight(Tensor.of(g, n, m), Tensor.of(x, n, k), w1);
            four.linearBackwardWeight(Tensor.of(g, n, m), Tensor.of(x, n, k), w4);
            assertArrayEquals(w1.toFloatArray(), w4.toFloatArray(), "grad_w independent of the thread count");
            double[] refW = new double[m * k], tolW = new double[m * k];
            for (int j = 0; j < m; j++) {
                for (int c = 0; c < k; c++) {
                    double s = 0, abs = 0;
                    for (int i = 0; i < n; i++) {
                        s += (double) g[i * m + j] * x[i * k + c];
                        abs += Math.abs((double) g[i * m + j] * x[i * k + c]);
                    }
                    refW[j * k + c] = s;
                    tolW[j * k + c] = n * 0x1p-24 * abs;
                }
            }
            TestData.assertWithin(refW, w4.toFloatArray(), tolW, "grad_w large");
        }
    }

    /** gradOut [n, out] times the reference weight [out, in] in float64, with the float32 accumulation tolerance. */
    private static void assertProduct(float[] g, int n, double[] w, int out, int in, float[] got, String what) {
        double[] ref = new double[n * in];
        double[] tol = new double[n * in];
        for (int i = 0; i < n; i++) {
            for (int c = 0; c < in; c++) {
                double s = 0, abs = 0;
                for (int j = 0; j < out; j++) {
                    double t = g[i * out + j] * w[j * in + c];
                    s += t;
                    abs += Math.abs(t);
                }
                ref[i * in + c] = s;
                tol[i * in + c] = out * 0x1p-24 * abs + 1e-30;
            }
        }
        TestData.assertWithin(ref, got, tol, what);
    }

    @Test
    void quantized4bitBackwardIsGradOutTimesTheDequantizedWeight() {
        Random r = TestData.random("4-bit backward");
        // in = 99 is odd: rows start in the middle of packed bytes and blocks of 64 straddle rows
        int out = 37, in = 99, n = 6;
        float[] w = TestData.gaussian(r, out * in, 0.05);
        float[] g = TestData.gaussian(r, n * out, 1.0);
        try (CpuBackend cpu = new CpuBackend(2)) {
            for (QuantType type : QuantType.values()) {
                for (boolean nested : new boolean[] {false, true}) {
                    for (DType stateDType : new DType[] {DType.F32, DType.BF16}) {
                        QuantState4bit state = Quant4bit.quantize(TestData.tensor(w, stateDType, out, in), type, 64, nested);
                        String what = type + (nested ? " double-quant" : "") + " " + stateDType + " state";
                        QuantizedWeight qw = cpu.prepare4bit(state, DType.F32);
                        float[] got = cpu.linearQuantizedBackwardInput(Tensor.of(g, n, out), qw).toFloatArray();
                        double[] deq = TestData.doubles(Quant4bit.dequantize(state, stateDType));
                        assertProduct(g, n, deq, out, in, got, what);
                    }
                }
            }
            // compute dtype F16: the weight rounded to fp16 as the forward multiplies it
            QuantState4bit state = Quant4bit.quantize(TestData.tensor(w, DType.F32, out, in), QuantType.NF4, 64, true);
            float[] got = cpu.linearQuantizedBackwardInput(Tensor.of(g, n, out), cpu.prepare4bit(state, DType.F16))
                    .toFloatArray();
            assertProduct(g, n, TestData.doubles(Quant4bit.dequantize(state, DType.F16)), out, in, got, "NF4 fp16 compute");
        }
    }

    @Test
    void quantized4bitBackwardEqualsTheDenseBackwardOfTheDequantizedWeightExactly() {
        Random r = TestData.random("4-bit backward large");
        int out = 200, in = 160, n = 9;
        float[] w = TestData.gaussian(r, out * in, 0.05);
        float[] g = TestData.gaussian(r, n * out, 1.0);
        QuantState4bit state = Quant4bit.quantize(w, new int[] {out, in}, QuantType.FP4, 128, true);
        try (CpuBackend cpu = new CpuBackend(2)) {
            // same kernel, same float ops: the dequantized blocks are bit-identical to Quant4bit.dequantize
            float[] dense = cpu.linearBackwardInput(Tensor.of(g, n, out), Quant4bit.dequantize(state, DType.F32)).toFloatArray();
            float[] quant = cpu.linearQuantizedBackwardInput(Tensor.of(g, n, out), cpu.prepare4bit(state, DType.F32))
                    .toFloatArray();
            assertArrayEquals(dense, quant);
        }
    }

    @Test
    void int8BackwardIsGradOutTimesTheDequantizedWeight() {
        Random r = TestData.random("int8 backward");
        int out = 70, in = 133, n = 5;
        float[] w = TestData.gaussian(r, out * in, 0.05);
        float[] g = TestData.gaussian(r, n * out, 1.0);
        Int8Weight q = Int8Weight.quantize(w, out, in);
        double[] deq = FiniteDifferences.toDoubles(q.dequantize());
        try (CpuBackend cpu = new CpuBackend(2)) {
            for (float threshold : new float[] {0f, 6f}) {
                float[] got = cpu.linearQuantizedBackwardInput(Tensor.of(g, n, out), cpu.prepare8bit(q, threshold))
                        .toFloatArray();
                assertProduct(g, n, deq, out, in, got, "int8 threshold " + threshold);
            }
            assertThrows(IllegalArgumentException.class,
                    () -> cpu.linearQuantizedBackwardInput(Tensor.of(g, out, n), cpu.prepare8bit(q, 0f)));
        }
    }
}
