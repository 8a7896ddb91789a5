package dev.qlora4j.backend.cpu;

import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorSpecies;

/**
 * out[rows, cols] += A[rows, inner] B[inner, cols] in float32 with FMA: the product both
 * backward matmuls need (grad_x = gradOut W, grad_W = gradOut^T x), where B is row-major and is
 * read block by block from a {@link BlockSource} (a float array, a 16-bit weight widened in
 * place, a quantized weight dequantized per block), so a large B never exists whole in f32.
 *
 * <p>A is addressed with strides: A[i, p] = a[i * aRowStride + p * aColStride], so gradOut^T is
 * read without transposing it. Work is split into column slices of {@link #COL_SLICE} (and, when
 * there are too few slices for the threads, groups of A rows); each unit walks B in blocks of
 * {@link #INNER_BLOCK} rows widened into a per-thread scratch, multiplying 4 rows of A against
 * 2 vectors of columns at a time (8 accumulators, as in LinearKernel). Each out element adds its
 * terms in increasing p, so results do not depend on the thread count.
 */
final class MatmulAccumulate {
    private MatmulAccumulate() {}

    private static final VectorSpecies<Float> F = HalfVectors.F;
    static final int COL_SLICE = 128;
    static final int INNER_BLOCK = 64;
    /** Fewest A rows per unit when rows are split: below this, re-reading B costs more than it saves. */
    private static final int MIN_ROWS_PER_GROUP = 64;

    /** A row-major matrix B [inner, cols] read by blocks. Implementations must be thread-safe. */
    interface BlockSource {
        /** Writes B[p, c] for p in [p0, p1), c in [c0, c1) to dst[(p - p0) * ld + (c - c0)]. */
        void load(int p0, int p1, int c0, int c1, float[] dst, int ld);
    }

    /** B from a float32 array [inner, cols]. */
    static BlockSource ofArray(float[] b, int cols) {
        return (p0, p1, c0, c1, dst, ld) -> {
            for (int p = p0; p < p1; p++) System.arraycopy(b, p * cols + c0, dst, (p - p0) * ld, c1 - c0);
        };
    }

    /** B from a weight view [inner, cols] of F32, BF16 or F16 (widened exactly). */
    static BlockSource ofWeight(WeightView w) {
        return (p0, p1, c0, c1, dst, ld) -> {
            short[] scratch = w.dtype == dev.qlora4j.tensor.DType.F16 ? new short[c1 - c0] : null;
            for (int p = p0; p < p1; p++) {
                w.elementsToFloats((long) p * w.cols + c0, c1 - c0, dst, (p - p0) * ld, scratch);
            }
        };
    }

    static void run(Parallel par, float[] a, int aRowStride, int aColStride, int rows, int inner,
                    BlockSource b, int cols, float[] out) {
        if (rows == 0 || cols == 0 || inner == 0) return;
        int slices = (cols + COL_SLICE - 1) / COL_SLICE;
        int wantUnits = par.threads() * 2;
        int groups = Math.max(1, Math.min((wantUnits + slices - 1) / slices, rows / MIN_ROWS_PER_GROUP));
        int rowsPerGroup = (rows + groups - 1) / groups;
        long workPerUnit = 2L * rowsPerGroup * inner * Math.min(cols, COL_SLICE);
        par.forRange(slices * groups, workPerUnit, (lo, hi) -> {
            float[] scratch = new float[INNER_BLOCK * COL_SLICE];
            for (int u = lo; u < hi; u++) {
                int c0 = (u % slices) * COL_SLICE;
                int c1 = Math.min(cols, c0 + COL_SLICE);
                int i0 = (u / slices) * rowsPerGroup;
                int i1 = Math.min(rows, i0 + rowsPerGroup);
                if (i0 < i1) unit(a, aRowStride, aColStride, i0, i1, inner, b, cols, c0, c1, out, scratch);
            }
        });
    }

    private static void unit(float[] a, int rs, int cs, int i0, int i1, int inner, BlockSource b, int cols,
                             int c0, int c1, float[] out, float[] scratch) {
        int width = c1 - c0;
        for (int p0 = 0; p0 < inner; p0 += INNER_BLOCK) {
            int p1 = Math.min(inner, p0 + INNER_BLOCK);
            b.load(p0, p1, c0, c1, scratch, COL_SLICE);
            int i = i0;
            for (; i + 4 <= i1; i += 4) tile4(a, rs, cs, i, p0, p1, scratch, width, out, cols, c0);
            for (; i < i1; i++) tile1(a, rs, cs, i, p0, p1, scratch, width, out, cols, c0);
        }
    }

    /** out[i..i+3, c0..c0+width) += A[i..i+3, p0..p1) Bblock. */
    private static void tile4(float[] a, int rs, int cs, int i, int p0, int p1, float[] bs, int width,
                              float[] out, int cols, int c0) {
        int lanes = F.length();
        int a0 = i * rs, a1 = a0 + rs, a2 = a1 + rs, a3 = a2 + rs;
        int o0 = i * cols + c0, o1 = o0 + cols, o2 = o1 + cols, o3 = o2 + cols;
        int c = 0;
        for (; c + 2 * lanes <= width; c += 2 * lanes) {
            FloatVector x00 = FloatVector.fromArray(F, out, o0 + c), x01 = FloatVector.fromArray(F, out, o0 + c + lanes);
            FloatVector x10 = FloatVector.fromArray(F, out, o1 + c), x11 = FloatVector.fromArray(F, out, o1 + c + lanes);
            FloatVector x20 = FloatVector.fromArray(F, out, o2 + c), x21 = FloatVector.fromArray(F, out, o2 + c + lanes);
            FloatVector x30 = FloatVector.fromArray(F, out, o3 + c), x31 = FloatVector.fromArray(F, out, o3 + c + lanes);
            for (int p = p0; p < p1; p++) {
                int bo = (p - p0) * COL_SLICE + c;
                FloatVector b0 = FloatVector.fromArray(F, bs, bo);
                FloatVector b1 = FloatVector.fromArray(F, bs, bo + lanes);
                int ap = p * cs;
                FloatVector s0 = FloatVector.broadcast(F, a[a0 + ap]), s1 = FloatVector.broadcast(F, a[a1 + ap]);
                FloatVector s2 = FloatVector.broadcast(F, a[a2 + ap]), s3 = FloatVector.broadcast(F, a[a3 + ap]);
                x00 = b0.fma(s0, x00);
                x01 = b1.fma(s0, x01);
                x10 = b0.fma(s1, x10);
                x11 = b1.fma(s1, x11);
                x20 = b0.fma(s2, x20);
                x21 = b1.fma(s2, x21);
                x30 = b0.fma(s3, x30);
                x31 = b1.fma(s3, x31);
            }
            x00.intoArray(out, o0 + c);
            x01.intoArray(out, o0 + c + lanes);
            x10.intoArray(out, o1 + c);
            x11.intoArray(out, o1 + c + lanes);
            x20.intoArray(out, o2 + c);
            x21.intoArray(out, o2 + c + lanes);
            x30.intoArray(out, o3 + c);
            x31.intoArray(out, o3 + c + lanes);
        }
        for (int t = 0; t < 4; t++) columnsTail(a, rs, cs, i + t, p0, p1, bs, c, width, out, cols, c0);
    }

    /** One row of A against the whole block width. */
    private static void tile1(float[] a, int rs, int cs, int i, int p0, int p1, float[] bs, int width,
                              float[] out, int cols, int c0) {
        columnsTail(a, rs, cs, i, p0, p1, bs, 0, width, out, cols, c0);
    }

    /** out[i, c0 + [cFrom, width)) += A[i, p0..p1) Bblock[:, cFrom..width): vectors, then scalars. */
    private static void columnsTail(float[] a, int rs, int cs, int i, int p0, int p1, float[] bs, int cFrom,
                                    int width, float[] out, int cols, int c0) {
        int lanes = F.length();
        int ai = i * rs;
        int o = i * cols + c0;
        int c = cFrom;
        for (; c + lanes <= width; c += lanes) {
            FloatVector x = FloatVector.fromArray(F, out, o + c);
            for (int p = p0; p < p1; p++) {
                x = FloatVector.fromArray(F, bs, (p - p0) * COL_SLICE + c).fma(FloatVector.broadcast(F, a[ai + p * cs]), x);
            }
            x.intoArray(out, o + c);
        }
        for (; c < width; c++) {
            float x = out[o + c];
            for (int p = p0; p < p1; p++) x = Math.fma(bs[(p - p0) * COL_SLICE + c], a[ai + p * cs], x);
            out[o + c] = x;
        }
    }
}
