package dev.qlora4j.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.Random;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * Checks the row-major -> column-major mapping on the CPU: a float64 emulation of column-major
 * GEMM (what cuBLAS computes, by its documented definition) fed with the mapped call must equal
 * the row-major product computed directly.
 */
class RowMajorGemmTest {

    /** Column-major C[m,n] = op(A)·op(B), with op(X)[i,j] = X[i + j*ld] (N) or X[j + i*ld] (T). */
    private static double[] columnMajorGemm(int opA, int opB, int m, int n, int k, double[] a, int lda,
                                            double[] b, int ldb, int ldc) {
        double[] c = new double[ldc * n];
        for (int j = 0; j < n; j++) {
            for (int i = 0; i < m; i++) {
                double s = 0;
                for (int p = 0; p < k; p++) {
                    double av = opA == RowMajorGemm.OP_N ? a[i + p * lda] : a[p + i * lda];
                    double bv = opB == RowMajorGemm.OP_N ? b[p + j * ldb] : b[j + p * ldb];
                    s += av * bv;
                }
                c[i + j * ldc] = s;
            }
        }
        return c;
    }

    @ParameterizedTest
    @CsvSource({"false,true", "false,false", "true,false", "true,true"})
    void mappedColumnMajorCallComputesTheRowMajorProduct(boolean transA, boolean transB) {
        Random rnd = new Random();
        int m = 5 + rnd.nextInt(7), n = 3 + rnd.nextInt(9), k = 4 + rnd.nextInt(6);
        double[] a = rnd.doubles((long) m * k, -1, 1).toArray();   // stored [m,k], or [k,m] if transA
        double[] b = rnd.doubles((long) k * n, -1, 1).toArray();   // stored [k,n], or [n,k] if transB
        double[] expected = new double[m * n];                        // row-major [m,n]
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
                double s = 0;
                for (int p = 0; p < k; p++) {
                    double av = transA ? a[p * m + i] : a[i * k + p];
                    double bv = transB ? b[j * k + p] : b[p * n + j];
                    s += av * bv;
                }
                expected[i * n + j] = s;
            }
        }
        RowMajorGemm g = RowMajorGemm.of(transA, transB, m, n, k);
        double[] c = columnMajorGemm(g.opA(), g.opB(), g.m(), g.n(), g.k(), b, g.lda(), a, g.ldb(), g.ldc());
        for (int i = 0; i < m * n; i++) assertEquals(expected[i], c[i], 1e-12, "element " + i);
    }

    @ParameterizedTest
    @CsvSource({"0,1,1", "1,0,1", "1,1,-2"})
    void rejectsEmptySizes(int m, int n, int k) {
        assertThrows(IllegalArgumentException.class, () -> RowMajorGemm.of(false, true, m, n, k));
    }

    @org.junit.jupiter.api.Test
    void linearLayerMapsToTransposedWeightsFirst() {
        assertEquals(new RowMajorGemm(RowMajorGemm.OP_T, RowMajorGemm.OP_N, 96, 64, 200, 200, 200, 96),
                RowMajorGemm.of(false, true, 64, 96, 200));
    }
}
