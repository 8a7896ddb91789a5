package dev.qlora4j.backend.cpu;

import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorSpecies;

/**
 * Elementwise and per-row float32 kernels the training step and the adapters need: scaling,
 * a * b, axpy, column scaling, row norms, sums of squares and transposition. Each works on a
 * range of elements or rows so the backend can split it over its threads.
 */
final class ElementwiseOps {
    private ElementwiseOps() {}

    private static final VectorSpecies<Float> F = HalfVectors.F;

    /** out[i] = a[i] * s for i in [i0, i1). */
    static void scale(float[] a, float s, float[] out, int i0, int i1) {
        int lanes = F.length();
        int i = i0;
        for (; i + lanes <= i1; i += lanes) FloatVector.fromArray(F, a, i).mul(s).intoArray(out, i);
        for (; i < i1; i++) out[i] = a[i] * s;
    }

    /** out[i] = a[i] * b[i] for i in [i0, i1). */
    static void mul(float[] a, float[] b, float[] out, int i0, int i1) {
        int lanes = F.length();
        int i = i0;
        for (; i + lanes <= i1; i += lanes) {
            FloatVector.fromArray(F, a, i).mul(FloatVector.fromArray(F, b, i)).intoArray(out, i);
        }
        for (; i < i1; i++) out[i] = a[i] * b[i];
    }

    /** a[i] = fma(alpha, b[i], a[i]) for i in [i0, i1). */
    static void axpy(float[] a, float alpha, float[] b, int i0, int i1) {
        VectorMath.axpy(alpha, b, i0, a, i0, i1 - i0);
    }

    /** Rows [r0, r1) of x [*, m]: out[r, j] = x[r, j] * s[j]. */
    static void scaleColumns(float[] x, float[] s, int m, float[] out, int r0, int r1) {
        for (int r = r0; r < r1; r++) mul(x, r * m, s, out, m);
    }

    private static void mul(float[] x, int off, float[] s, float[] out, int m) {
        int lanes = F.length();
        int j = 0;
        for (; j + lanes <= m; j += lanes) {
            FloatVector.fromArray(F, x, off + j).mul(FloatVector.fromArray(F, s, j)).intoArray(out, off + j);
        }
        for (; j < m; j++) out[off + j] = x[off + j] * s[j];
    }

    /** Rows [r0, r1) of x [*, h]: norms[r] = sqrt(sum_j x[r, j]^2), the sum a float32 FMA chain. */
    static void rowNorms(float[] x, int h, float[] norms, int r0, int r1) {
        for (int r = r0; r < r1; r++) norms[r] = (float) Math.sqrt(VectorMath.sumSquares(x, r * h, h));
    }

    /** Elements per partial sum of {@link #sumOfSquares}: fixed, so the result does not depend on the thread count. */
    static final int SQUARES_BLOCK = 1 << 14;

    /**
     * Partial sums of squares in float64 of the blocks [b0, b1) of SQUARES_BLOCK elements of a.
     * Each square is exact in float64 (a float32 product has at most 48 significant bits).
     */
    static void sumOfSquaresBlocks(float[] a, double[] partial, int b0, int b1) {
        for (int b = b0; b < b1; b++) {
            int from = b * SQUARES_BLOCK;
            int to = Math.min(a.length, from + SQUARES_BLOCK);
            double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            int i = from;
            for (; i + 4 <= to; i += 4) {
                double x0 = a[i], x1 = a[i + 1], x2 = a[i + 2], x3 = a[i + 3];
                s0 += x0 * x0;
                s1 += x1 * x1;
                s2 += x2 * x2;
                s3 += x3 * x3;
            }
            for (; i < to; i++) s0 += (double) a[i] * a[i];
            partial[b] = (s0 + s1) + (s2 + s3);
        }
    }

    /** Tile edge of {@link #transpose}: a 32 x 32 float tile of source and target stays in L1. */
    static final int TRANSPOSE_TILE = 32;

    /** Rows [r0, r1) of the target out [m, n] = x[n, m]^T, tile by tile. */
    static void transpose(float[] x, int n, int m, float[] out, int r0, int r1) {
        for (int jt = r0; jt < r1; jt += TRANSPOSE_TILE) {
            int jEnd = Math.min(r1, jt + TRANSPOSE_TILE);
            for (int it = 0; it < n; it += TRANSPOSE_TILE) {
                int iEnd = Math.min(n, it + TRANSPOSE_TILE);
                for (int j = jt; j < jEnd; j++) {
                    int o = j * n;
                    for (int i = it; i < iEnd; i++) out[o + i] = x[i * m + j];
                }
            }
        }
    }
}
