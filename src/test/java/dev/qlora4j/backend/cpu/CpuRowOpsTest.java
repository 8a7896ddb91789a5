package dev.qlora4j.backend.cpu;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import java.lang.foreign.Arena;
import java.util.Random;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/** rmsNorm, siluMul, add, addInPlace, embedding and gatherRows against float64 references. */
class CpuRowOpsTest {
    private static CpuBackend cpu;

    @BeforeAll
    static void start() { cpu = new CpuBackend(2); }

    @AfterAll
    static void stop() { cpu.close(); }

    /**
     * Tolerance 1e-5 relative: the float32 mean of squares over h = 203 values is off by at most
     * about (h/lanes + 3) * 2^-24 ~ 2e-6 relative, the rsqrt and two products add a few ulps.
     */
    @Test
    void rmsNormMatchesFloat64ReferenceForEachWeightDType() {
        Random r = TestData.random("rmsNorm");
        int n = 9, h = 203;
        float eps = 1e-6f;
        for (DType dt : new DType[] {DType.F32, DType.BF16, DType.F16}) {
            Tensor x = Tensor.of(TestData.gaussian(r, n * h, 3.0), n, h);
            Tensor w = TestData.tensor(TestData.gaussian(r, h, 1.0), dt, h);
            double[] xs = TestData.doubles(x), ws = TestData.doubles(w);
            double[] ref = new double[n * h];
            for (int i = 0; i < n; i++) {
                double ss = 0;
                for (int c = 0; c < h; c++) ss += xs[i * h + c] * xs[i * h + c];
                double inv = 1 / Math.sqrt(ss / h + eps);
                for (int c = 0; c < h; c++) ref[i * h + c] = xs[i * h + c] * inv * ws[c];
            }
            Tensor y = cpu.rmsNorm(x, w, eps);
            assertArrayEquals(new int[] {n, h}, y.shape());
            TestData.assertClose(ref, y.toFloatArray(), 1e-30, 1e-5, "rmsNorm weight " + dt);
        }
    }

    @Test
    void rmsNormOfAZeroRowIsZeroNotNaN() {
        Tensor y = cpu.rmsNorm(Tensor.zeros(DType.F32, 2, 11), Tensor.of(new float[11], 11), 1e-5f);
        for (float v : y.toFloatArray()) assertEquals(0f, v);
    }

    /**
     * Tolerance 2e-6 relative: silu(g) * u is a product of well-conditioned factors; the vector
     * exp is within 1 ulp and the add, divide and multiply round once each (5 roundings ~ 3e-7).
     */
    @Test
    void siluMulMatchesFloat64Reference() {
        Random r = TestData.random("siluMul");
        int n = 5, h = 67;
        float[] g = TestData.gaussian(r, n * h, 4.0);
        g[0] = -100f;   // exp(100) overflows to inf in float32: silu must give -0, not NaN
        g[1] = 100f;
        Tensor gate = Tensor.of(g, n, h);
        Tensor up = Tensor.of(TestData.gaussian(r, n * h, 1.0), n, h);
        double[] gs = TestData.doubles(gate), us = TestData.doubles(up);
        double[] ref = new double[n * h];
        for (int i = 0; i < ref.length; i++) ref[i] = gs[i] / (1 + Math.exp(-gs[i])) * us[i];
        TestData.assertClose(ref, cpu.siluMul(gate, up).toFloatArray(), 1e-30, 2e-6, "siluMul");
    }

    /** a + b is one float32 rounding of the exact sum: compare exactly. */
    @Test
    void addAndAddInPlaceRoundTheExactSum() {
        Random r = TestData.random("add");
        int n = 3, h = 45;
        float[] a = TestData.gaussian(r, n * h, 2.0), b = TestData.gaussian(r, n * h, 2.0);
        float[] expected = new float[n * h];
        for (int i = 0; i < expected.length; i++) expected[i] = (float) ((double) a[i] + b[i]);
        Tensor ta = Tensor.of(a.clone(), n, h), tb = Tensor.of(b, n, h);
        assertArrayEquals(expected, cpu.add(ta, tb).toFloatArray());
        assertArrayEquals(a, ta.toFloatArray(), "add must not modify its inputs");
        assertSame(ta, cpu.addInPlace(ta, tb));
        assertArrayEquals(expected, ta.toFloatArray());
    }

    @Test
    void addInPlaceWritesIntoNativeMemory() {
        try (Arena arena = Arena.ofConfined()) {
            Tensor a = TestData.nativeView(Tensor.of(new float[] {1, 2, 3}, 1, 3), arena);
            cpu.addInPlace(a, Tensor.of(new float[] {10, 20, 30}, 1, 3));
            assertArrayEquals(new float[] {11, 22, 33}, a.toFloatArray());
        }
    }

    /** Embedding rows are the table's values decoded exactly. */
    @Test
    void embeddingCopiesDecodedRowsFromHeapAndNativeTables() {
        Random r = TestData.random("embedding");
        int vocab = 50, hidden = 19;
        int[] ids = {0, 49, 7, 7, 23};
        try (Arena arena = Arena.ofConfined()) {
            for (DType dt : new DType[] {DType.F32, DType.BF16, DType.F16}) {
                Tensor table = TestData.tensor(TestData.gaussian(r, vocab * hidden, 1.0), dt, vocab, hidden);
                for (Tensor t : new Tensor[] {table, TestData.nativeView(table, arena)}) {
                    Tensor out = cpu.embedding(Tensor.ofInts(ids, ids.length), t);
                    assertArrayEquals(new int[] {ids.length, hidden}, out.shape());
                    float[] got = out.toFloatArray();
                    for (int i = 0; i < ids.length; i++) {
                        for (int c = 0; c < hidden; c++) {
                            assertEquals(table.getFloat((long) ids[i] * hidden + c), got[i * hidden + c],
                                    dt + " row " + i + " col " + c);
                        }
                    }
                }
            }
        }
    }

    @Test
    void gatherRowsPicksRowsInOrder() {
        Tensor x = Tensor.of(new float[] {0, 1, 10, 11, 20, 21}, 3, 2);
        Tensor out = cpu.gatherRows(x, Tensor.ofInts(new int[] {2, 0, 2}, 3));
        assertArrayEquals(new int[] {3, 2}, out.shape());
        assertArrayEquals(new float[] {20, 21, 0, 1, 20, 21}, out.toFloatArray());
    }

    @Test
    void memoryOpsStayOnTheHost() {
        Tensor t = Tensor.of(new float[] {1.5f, -2.25f}, 2);
        assertSame(t, cpu.upload(t));
        assertSame(t, cpu.toHost(t));
        Tensor bf = cpu.cast(t, DType.BF16);
        assertEquals(DType.BF16, bf.dtype());
        assertArrayEquals(new float[] {1.5f, -2.25f}, bf.toFloatArray());
        Tensor e = cpu.empty(DType.F32, 2, 3);
        assertArrayEquals(new int[] {2, 3}, e.shape());
        assertEquals(DType.F32, cpu.activationDType());
    }
}
