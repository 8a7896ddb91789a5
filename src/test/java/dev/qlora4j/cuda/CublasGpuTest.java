package dev.qlora4j.cuda;

import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.qlora4j.cuda.Cublas.DataType;
import dev.qlora4j.cuda.GpuSupport.Dev;
import dev.qlora4j.tensor.Half;
import java.util.Random;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

/**
 * cuBLAS GEMMs against a float64 CPU reference on fresh random data, outputs poisoned with NaN.
 * Tolerances (||out - ref|| / ||ref||): f32 inputs 1e-4 (true f32 arithmetic, default math mode,
 * no TF32: expect ~1e-6); bf16/f16 operands 1e-2 (the reference uses the same rounded operands, so
 * only accumulation order and, for 16-bit outputs, the final rounding (2^-9 for bf16) remain).
 */
@Tag("gpu")
class CublasGpuTest {
    private CudaDriver d;
    private Cublas blas;
    private final Random rnd = new Random();

    @BeforeEach
    void setUp() {
        d = GpuSupport.driver("ffm");
        assumeTrue(Cublas.isLibraryAvailable(), "cuBLAS not found on this machine");
        blas = Cublas.create();
    }

    @AfterEach
    void tearDown() {
        if (blas != null) blas.close();
    }

    private float[] random(int n) {
        float[] a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float) (rnd.nextDouble() * 2 - 1);
        return a;
    }

    /** Row-major reference: C[m,n] = op(A)[m,k] · op(B)[k,n] in float64. */
    private static double[] reference(boolean transA, boolean transB, int m, int n, int k, float[] a, float[] b) {
        double[] c = new double[m * n];
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
                double s = 0;
                for (int p = 0; p < k; p++) {
                    s += (double) (transA ? a[p * m + i] : a[i * k + p]) * (transB ? b[j * k + p] : b[p * n + j]);
                }
                c[i * n + j] = s;
            }
        }
        return c;
    }

    private static short[] toBits(float[] a, DataType t) {
        short[] s = new short[a.length];
        for (int i = 0; i < a.length; i++) s[i] = t == DataType.BF16 ? Half.floatToBf16(a[i]) : Half.floatToF16(a[i]);
        return s;
    }

    private static float[] roundTo(float[] a, DataType t) {
        float[] r = new float[a.length];
        for (int i = 0; i < a.length; i++) r[i] = t == DataType.BF16 ? Half.roundBf16(a[i]) : Half.roundF16(a[i]);
        return r;
    }

    private static float[] fromBits(short[] s, DataType t) {
        float[] r = new float[s.length];
        for (int i = 0; i < s.length; i++) r[i] = t == DataType.BF16 ? Half.bf16ToFloat(s[i]) : Half.f16ToFloat(s[i]);
        return r;
    }

    private static void assertClose(float[] out, double[] ref, double tol, String what) {
        for (int i = 0; i < out.length; i++) assertTrue(Float.isFinite(out[i]), what + ": element " + i + " = " + out[i]);
        double err = GpuSupport.relativeError(out, ref);
        assertTrue(err <= tol, what + ": relative error " + err + " > " + tol);
    }

    @Test
    void linearF32MatchesFloat64Reference() {
        int m = 67, n = 129, k = 300;
        float[] x = random(m * k), w = random(n * k);
        try (Dev dx = GpuSupport.upload(d, x); Dev dw = GpuSupport.upload(d, w); Dev dy = Dev.alloc(d, 4L * m * n)) {
            d.memsetD32(dy.ptr(), 0x7FC00000, (long) m * n);
            blas.linear(m, n, k, dx.ptr(), dw.ptr(), DataType.F32, dy.ptr(), DataType.F32);
            d.contextSynchronize();
            assertClose(GpuSupport.downloadFloats(d, dy.ptr(), m * n), reference(false, true, m, n, k, x, w), 1e-4, "f32 linear");
        }
    }

    @Test
    void linear16BitOperandsMatchFloat64Reference() {
        int m = 33, n = 200, k = 513;
        for (DataType t : new DataType[] {DataType.BF16, DataType.F16}) {
            float[] x = random(m * k), w = random(n * k);
            double[] ref = reference(false, true, m, n, k, roundTo(x, t), roundTo(w, t));
            try (Dev dx = GpuSupport.upload(d, toBits(x, t)); Dev dw = GpuSupport.upload(d, toBits(w, t));
                 Dev y32 = Dev.alloc(d, 4L * m * n); Dev y16 = Dev.alloc(d, 2L * m * n)) {
                d.memsetD32(y32.ptr(), 0x7FC00000, (long) m * n);
                d.memsetD8(y16.ptr(), (byte) 0xFF, 2L * m * n);
                blas.linear(m, n, k, dx.ptr(), dw.ptr(), t, y32.ptr(), DataType.F32);
                blas.linear(m, n, k, dx.ptr(), dw.ptr(), t, y16.ptr(), t);
                d.contextSynchronize();
                assertClose(GpuSupport.downloadFloats(d, y32.ptr(), m * n), ref, 1e-2, t + " -> f32");
                assertClose(fromBits(GpuSupport.downloadShorts(d, y16.ptr(), m * n), t), ref, 1e-2, t + " -> " + t);
            }
        }
    }

    @Test
    void transposedOperandsAlphaAndBetaF32() {
        // dW[n,k] = dY[m,n]^T · X[m,k] (the linear layer's weight gradient), then accumulate: C = 0.5·op·op + 2·C.
        int m = 40, n = 24, k = 56;
        float[] dyv = random(m * n), x = random(m * k), c0 = random(n * k);
        double[] prod = reference(true, false, n, k, m, dyv, x);
        double[] ref = new double[n * k];
        for (int i = 0; i < ref.length; i++) ref[i] = 0.5 * prod[i] + 2.0 * c0[i];
        try (Dev a = GpuSupport.upload(d, dyv); Dev b = GpuSupport.upload(d, x); Dev c = GpuSupport.upload(d, c0)) {
            blas.gemmRowMajor(true, false, n, k, m, 0.5f, a.ptr(), b.ptr(), DataType.F32, 2f, c.ptr(), DataType.F32);
            d.contextSynchronize();
            assertClose(GpuSupport.downloadFloats(d, c.ptr(), n * k), ref, 1e-4, "transA f32 with alpha/beta");
        }
        // Both transposed: C[m,n] = A^T · B^T with A stored [k,m], B stored [n,k].
        float[] at = random(k * m), bt = random(n * k);
        try (Dev a = GpuSupport.upload(d, at); Dev b = GpuSupport.upload(d, bt); Dev c = Dev.alloc(d, 4L * m * n)) {
            d.memsetD32(c.ptr(), 0x7FC00000, (long) m * n);
            blas.gemmRowMajor(true, true, m, n, k, 1f, a.ptr(), b.ptr(), DataType.F32, 0f, c.ptr(), DataType.F32);
            d.contextSynchronize();
            assertClose(GpuSupport.downloadFloats(d, c.ptr(), m * n), reference(true, true, m, n, k, at, bt), 1e-4, "TT f32");
        }
    }

    @Test
    void stridedBatchedMatchesPerBatchReference() {
        int batch = 3, m = 17, n = 31, k = 45;
        float[] a = random(batch * m * k), b = random(batch * n * k);
        try (Dev da = GpuSupport.upload(d, a); Dev db = GpuSupport.upload(d, b); Dev dc = Dev.alloc(d, 4L * batch * m * n)) {
            d.memsetD32(dc.ptr(), 0x7FC00000, (long) batch * m * n);
            blas.gemmRowMajorStridedBatched(false, true, m, n, k, 1f, da.ptr(), (long) m * k, db.ptr(), (long) n * k,
                    DataType.F32, 0f, dc.ptr(), (long) m * n, DataType.F32, batch);
            d.contextSynchronize();
            float[] c = GpuSupport.downloadFloats(d, dc.ptr(), batch * m * n);
            for (int i = 0; i < batch; i++) {
                float[] ai = java.util.Arrays.copyOfRange(a, i * m * k, (i + 1) * m * k);
                float[] bi = java.util.Arrays.copyOfRange(b, i * n * k, (i + 1) * n * k);
                float[] ci = java.util.Arrays.copyOfRange(c, i * m * n, (i + 1) * m * n);
                assertClose(ci, reference(false, true, m, n, k, ai, bi), 1e-4, "batch " + i);
            }
        }
    }
}
