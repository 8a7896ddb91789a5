package dev.qlora4j.backend.cpu;

import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorSpecies;

/**
 * Reductions over rows into per-column accumulators (bias gradients, embedding gradients). They
 * are split over column slices, never over rows, so no two threads write the same element and
 * each element adds its rows in increasing order (deterministic for any thread count).
 */
final class ColumnSums {
    private ColumnSums() {}

    private static final VectorSpecies<Float> F = HalfVectors.F;

    /** Columns of a slice a thread owns. */
    static final int SLICE = 256;

    /** gradB[c0..c1) += column sums of g [n, m] over those columns (rows summed first, then added). */
    static void sumRows(float[] g, int n, int m, float[] gradB, int c0, int c1) {
        int width = c1 - c0;
        float[] acc = new float[width];
        for (int r = 0; r < n; r++) addSlice(g, r * m + c0, acc, 0, width);
        addSlice(acc, 0, gradB, c0, width);
    }

    /** Columns [c0, c1) of table [*, h]: table[ids[r], c] += g[r, c] for rows r in order. */
    static void scatterRows(int[] ids, float[] g, int h, float[] table, int c0, int c1) {
        for (int r = 0; r < ids.length; r++) addSlice(g, r * h + c0, table, ids[r] * h + c0, c1 - c0);
    }

    /** dst[d..d+len) += src[s..s+len). */
    static void addSlice(float[] src, int s, float[] dst, int d, int len) {
        int lanes = F.length();
        int i = 0;
        for (; i + lanes <= len; i += lanes) {
            FloatVector.fromArray(F, dst, d + i).add(FloatVector.fromArray(F, src, s + i)).intoArray(dst, d + i);
        }
        for (; i < len; i++) dst[d + i] += src[s + i];
    }
}
