package dev.qlora4j.backend.cpu;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import java.lang.foreign.Arena;
import java.util.Random;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

/**
 * The elementwise training ops against float64 references: scale, axpyInPlace, mul,
 * sumOfSquares, rowNorms, scaleColumns, transpose, and dropout (mask function, keep rate,
 * scaling, linearity). Lengths are not multiples of the vector width, so the scalar tails run.
 * Tolerance for single float32 operations: half an ulp relative (2^-24, written 1e-7 + 1e-7 * |ref|);
 * for sums of h products: h * 2^-24 relative to the sum of |terms|.
 */
class ElementwiseTrainingOpsTest {
    private static final double ULP = Math.ulp(1f) / 2; // 2^-24, float32 rounding of one operation

    @Test
    void scaleMulAndAxpyMatchFloat64() {
        Random r = TestData.random("scale/mul/axpy");
        int n = 1003;
        float[] a = TestData.gaussian(r, n, 1.0), b = TestData.gaussian(r, n, 1.0);
        try (CpuBackend cpu = new CpuBackend(2)) {
            float[] scaled = cpu.scale(Tensor.of(a, 17, 59), -1.7f).toFloatArray();
            float[] prod = cpu.mul(Tensor.of(a, n), Tensor.of(b, n)).toFloatArray();
            double[] refScaled = new double[n], refProd = new double[n], refAxpy = new double[n];
            for (int i = 0; i < n; i++) {
                refScaled[i] = (double) a[i] * -1.7f;
                refProd[i] = (double) a[i] * b[i];
                refAxpy[i] = a[i] + 0.3f * (double) b[i];
            }
            TestData.assertClose(refScaled, scaled, 0, ULP, "scale");
            TestData.assertClose(refProd, prod, 0, ULP, "mul");
            // b as BF16 in native memory: axpyInPlace reads any float dtype for b.
            try (Arena arena = Arena.ofConfined()) {
                Tensor bBf16 = TestData.nativeView(TestData.tensor(b, DType.BF16, n), arena);
                double[] bRounded = TestData.doubles(bBf16);
                for (int i = 0; i < n; i++) refAxpy[i] = a[i] + 0.3f * bRounded[i];
                Tensor target = Tensor.of(a.clone(), n);
                assertSame(target, cpu.axpyInPlace(target, 0.3f, bBf16));
                // fma(alpha, b, a): one rounding of the exact a + alpha*b, alpha itself a float32.
                TestData.assertClose(refAxpy, target.toFloatArray(), 1e-30, ULP, "axpyInPlace");
            }
        }
    }

    @Test
    void sumOfSquaresIsFloat64AndIndependentOfThreads() {
        Random r = TestData.random("sumOfSquares");
        int n = 3 * ElementwiseOps.SQUARES_BLOCK + 77;
        float[] a = TestData.gaussian(r, n, 3.0);
        double ref = 0;
        for (float v : a) ref += (double) v * v; // squares are exact in float64; sums differ only in order
        try (CpuBackend one = new CpuBackend(1); CpuBackend two = new CpuBackend(2)) {
            double got = two.sumOfSquares(Tensor.of(a, n));
            assertEquals(ref, got, 1e-12 * ref, "sum of squares in float64");
            assertEquals(got, one.sumOfSquares(Tensor.of(a, n)), 0.0, "same result on 1 and 2 threads");
        }
    }

    @Test
    void rowNormsScaleColumnsAndTransposeMatchFloat64() {
        Random r = TestData.random("rowNorms/scaleColumns/transpose");
        int n = 37, m = 45;
        float[] x = TestData.gaussian(r, n * m, 1.0);
        float[] s = TestData.gaussian(r, m, 1.0);
        try (CpuBackend cpu = new CpuBackend(2)) {
            float[] norms = cpu.rowNorms(Tensor.of(x, n, m)).toFloatArray();
            double[] refNorms = new double[n];
            for (int i = 0; i < n; i++) {
                double ss = 0;
                for (int j = 0; j < m; j++) ss += (double) x[i * m + j] * x[i * m + j];
                refNorms[i] = Math.sqrt(ss);
            }
            // a float32 FMA chain of m squares: relative error <= m * 2^-24 on the sum, half that on the sqrt.
            TestData.assertClose(refNorms, norms, 0, m * ULP, "rowNorms");

            Tensor scaled = cpu.scaleColumns(Tensor.of(x, n, m), TestData.tensor(s, DType.F16, m));
            double[] sF16 = TestData.doubles(TestData.tensor(s, DType.F16, m));
            double[] refScaled = new double[n * m];
            for (int i = 0; i < n; i++) for (int j = 0; j < m; j++) refScaled[i * m + j] = x[i * m + j] * sF16[j];
            TestData.assertClose(refScaled, scaled.toFloatArray(), 0, ULP, "scaleColumns");

            Tensor t = cpu.transpose(Tensor.of(x, n, m));
            assertArrayEquals(new int[] {m, n}, t.shape());
            float[] tt = t.toFloatArray();
            for (int i = 0; i < n; i++) for (int j = 0; j < m; j++) assertEquals(x[i * m + j], tt[j * n + i], "transpose");
            // a shape larger than one 32x32 tile and split over threads
            float[] big = TestData.gaussian(r, 70 * 530, 1.0);
            float[] bt = cpu.transpose(Tensor.of(big, 70, 530)).toFloatArray();
            for (int i = 0; i < 70; i++) for (int j = 0; j < 530; j++) assertEquals(big[i * 530 + j], bt[j * 70 + i]);
        }
    }

    /** The documented mask function, written independently: SplittableRandom(seed)'s i-th nextLong is SplitMix64 at counter i. */
    private static boolean[] referenceMask(long seed, int n, float p) {
        SplittableRandom stream = new SplittableRandom(seed);
        long threshold = (long) Math.floor(p * 16777216.0); // p * 2^24 is exact in float32 and float64
        boolean[] keep = new boolean[n];
        for (int i = 0; i < n; i++) keep[i] = (stream.nextLong() >>> 40) >= threshold;
        return keep;
    }

    @Test
    void dropoutMaskIsTheDocumentedSplitMix64Function() {
        long seed = 0x1234_5678_9ABC_DEF0L;
        // Pinned values of the hash (for the CUDA backend's bit-for-bit check): SplitMix64 of seed 0.
        assertEquals(0xE220A8397B1DCDAFL, Dropout.hash(0, 0));
        assertEquals(0x6E789E6AA1B965F4L, Dropout.hash(0, 1));
        int n = 4099;
        float p = 0.3f;
        float[] x = new float[n];
        for (int i = 0; i < n; i++) x[i] = 1 + i % 7;
        boolean[] keep = referenceMask(seed, n, p);
        float scale = 1f / (1f - p);
        try (CpuBackend cpu = new CpuBackend(2)) {
            float[] y = cpu.dropout(Tensor.of(x, 1, n), p, seed).toFloatArray();
            for (int i = 0; i < n; i++) assertEquals(keep[i] ? x[i] * scale : 0f, y[i], "element " + i);
            assertArrayEquals(y, cpu.dropout(Tensor.of(x, 1, n), p, seed).toFloatArray(), "same seed, same mask");
            float[] other = cpu.dropout(Tensor.of(x, 1, n), p, seed + 1).toFloatArray();
            int differ = 0;
            for (int i = 0; i < n; i++) if ((other[i] == 0) != (y[i] == 0)) differ++;
            assertTrue(differ > n / 5, "another seed gives another mask (" + differ + " of " + n + " differ)");
        }
    }

    @Test
    void dropoutKeepsAboutOneMinusPAndScalesSurvivors() {
        int n = 200_000;
        float p = 0.1f;
        float[] x = new float[n];
        java.util.Arrays.fill(x, 2f);
        try (CpuBackend cpu = new CpuBackend(2)) {
            float[] y = cpu.dropout(Tensor.of(x, n), p, 42).toFloatArray();
            int kept = 0;
            for (float v : y) {
                if (v != 0) {
                    kept++;
                    assertEquals(2f * (1f / (1f - p)), v, "survivors are scaled by 1/(1-p)");
                }
            }
            // binomial(n, 0.9): std = sqrt(n * 0.09) = 134; allow 5 std
            assertEquals(n * (1 - p), kept, 5 * Math.sqrt(n * p * (1 - p)), "keep rate ~ 1 - p");
            assertArrayEquals(x, cpu.dropout(Tensor.of(x, n), 0f, 42).toFloatArray(), "p = 0 is the identity");
            for (float v : cpu.dropout(Tensor.of(x, n), 1f, 42).toFloatArray()) assertEquals(0f, v, "p = 1 drops all");
            assertThrows(IllegalArgumentException.class, () -> cpu.dropout(Tensor.of(x, n), 1.5f, 1));
        }
    }

    /**
     * Dropout is linear in x, so its backward is dropout of the gradient with the same seed:
     * the finite-difference gradient of sum(g * dropout(x)) equals dropout(g).
     */
    @Test
    void dropoutBackwardIsDropoutOfTheGradientWithTheSameSeed() {
        Random r = TestData.random("dropout backward");
        int n = 301;
        float p = 0.25f;
        long seed = 7;
        float[] x = TestData.gaussian(r, n, 1.0), g = TestData.gaussian(r, n, 1.0);
        boolean[] keep = referenceMask(seed, n, p);
        double scale = 1f / (1f - p);
        double[] gd = FiniteDifferences.toDoubles(g);
        double[] fd = FiniteDifferences.gradient(FiniteDifferences.toDoubles(x), xs -> {
            double l = 0;
            for (int i = 0; i < n; i++) l += gd[i] * (keep[i] ? xs[i] * scale : 0);
            return l;
        });
        try (CpuBackend cpu = new CpuBackend(2)) {
            float[] back = cpu.dropout(Tensor.of(g, n), p, seed).toFloatArray();
            FiniteDifferences.assertGradient(fd, back, "dropout backward");
        }
    }
}
