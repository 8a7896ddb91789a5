package dev.qlora4j.backend.cpu;

import dev.qlora4j.tensor.Lanes;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;

/**
 * y[n, m] = x[n, k] w[m, k]^T (+ bias[m]) in float32 with FMA, for F32/BF16/F16 weights.
 *
 * <p>n = 1 (decode) is a matvec bound by weight bandwidth: each weight row is streamed once,
 * widened lane by lane (F16: per L1-sized slice), four rows at a time so one x load feeds
 * four FMAs.
 *
 * <p>n > 1: the weight is processed in blocks of {@link #BLOCK_ROWS} rows, widened once into a
 * per-thread f32 scratch, then multiplied with 4 rows of x against 2 weight rows at a time
 * (8 vector accumulators fit AVX2's 16 registers), over k in slices of {@link #K_SLICE} so
 * the x rows and weight rows in use stay in L1. Rows of x are padded to a multiple of 4.
 */
final class LinearKernel {
    private LinearKernel() {}

    private static final VectorSpecies<Float> F = HalfVectors.F;
    static final int BLOCK_ROWS = 16;
    static final int K_SLICE = 512;
    private static final int X_TILE = 4;

    /** out[n*m] must be zero-filled; bias is null or [m]. */
    static void run(Parallel par, float[] x, int n, WeightView w, float[] bias, float[] out) {
        int m = w.rows;
        int k = w.cols;
        if (n == 1) {
            int units = (m + 3) / 4;
            par.forRange(units, 8L * k, (lo, hi) -> matvec(x, w, out, lo * 4, Math.min(m, hi * 4)));
        } else {
            int nPad = (n + X_TILE - 1) / X_TILE * X_TILE;
            float[] xp = nPad == n ? x : Arrays.copyOf(x, nPad * k);
            int blocks = (m + BLOCK_ROWS - 1) / BLOCK_ROWS;
            par.forRange(blocks, 2L * nPad * k * BLOCK_ROWS, (lo, hi) -> tiled(xp, nPad, n, w, out, lo, hi));
        }
        if (bias != null) {
            for (int i = 0; i < n; i++) {
                for (int j = 0; j < m; j++) out[i * m + j] += bias[j];
            }
        }
    }

    /**
     * y[j] = x . w[j] for weight rows [j0, j1). One loop per weight dtype, each with a single kind
     * of load: C2 then inlines the widening and keeps vectors in registers (one loop over a
     * switch of the three loads exceeded its inlining limits and boxed every vector: 20x slower).
     */
    static void matvec(float[] x, WeightView w, float[] y, int j0, int j1) {
        switch (w.dtype) {
            case F32 -> matvecF32(x, w, y, j0, j1);
            case BF16 -> matvecBf16(x, w, y, j0, j1);
            default -> matvecWidened(x, w, y, j0, j1);
        }
    }

    private static void matvecF32(float[] x, WeightView w, float[] y, int j0, int j1) {
        MemorySegment seg = w.seg;
        int k = w.cols;
        int lanes = F.length();
        int bound = k - k % lanes;
        int j = j0;
        for (; j + 4 <= j1; j += 4) {
            long r0 = (long) j * k * 4, r1 = r0 + k * 4L, r2 = r1 + k * 4L, r3 = r2 + k * 4L;
            FloatVector a0 = FloatVector.zero(F), a1 = a0, a2 = a0, a3 = a0;
            for (int c = 0; c < bound; c += lanes) {
                FloatVector xv = FloatVector.fromArray(F, x, c);
                long off = c * 4L;
                a0 = HalfVectors.f32(seg, r0 + off).fma(xv, a0);
                a1 = HalfVectors.f32(seg, r1 + off).fma(xv, a1);
                a2 = HalfVectors.f32(seg, r2 + off).fma(xv, a2);
                a3 = HalfVectors.f32(seg, r3 + off).fma(xv, a3);
            }
            finish4(x, w, y, j, bound, a0, a1, a2, a3);
        }
        for (; j < j1; j++) y[j] = dotRow(x, w, j);
    }

    private static void matvecBf16(float[] x, WeightView w, float[] y, int j0, int j1) {
        MemorySegment seg = w.seg;
        int k = w.cols;
        int lanes = F.length();
        int bound = k - k % lanes;
        int j = j0;
        for (; j + 4 <= j1; j += 4) {
            long r0 = (long) j * k * 2, r1 = r0 + k * 2L, r2 = r1 + k * 2L, r3 = r2 + k * 2L;
            FloatVector a0 = FloatVector.zero(F), a1 = a0, a2 = a0, a3 = a0;
            for (int c = 0; c < bound; c += lanes) {
                FloatVector xv = FloatVector.fromArray(F, x, c);
                long off = c * 2L;
                a0 = HalfVectors.bf16(seg, r0 + off).fma(xv, a0);
                a1 = HalfVectors.bf16(seg, r1 + off).fma(xv, a1);
                a2 = HalfVectors.bf16(seg, r2 + off).fma(xv, a2);
                a3 = HalfVectors.bf16(seg, r3 + off).fma(xv, a3);
            }
            finish4(x, w, y, j, bound, a0, a1, a2, a3);
        }
        for (; j < j1; j++) y[j] = dotRow(x, w, j);
    }

    /** Slice of k the 16-bit-to-f32 matvec widens at once: 4 rows of it stay in L1. */
    private static final int WIDEN_SLICE = 256;

    /**
     * Any weight dtype (used for F16, widened by the hardware through a scalar loop that C2
     * vectorizes, see HalfVectors.f16ToFloats): widens 4 rows x WIDEN_SLICE values into an
     * L1-resident scratch, then FMAs.
     */
    private static void matvecWidened(float[] x, WeightView w, float[] y, int j0, int j1) {
        int k = w.cols;
        int lanes = F.length();
        float[] ws = new float[4 * WIDEN_SLICE];
        short[] scratch = new short[WIDEN_SLICE];
        int j = j0;
        for (; j + 4 <= j1; j += 4) {
            long r0 = (long) j * k;
            FloatVector a0 = FloatVector.zero(F), a1 = a0, a2 = a0, a3 = a0;
            float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            for (int c0 = 0; c0 < k; c0 += WIDEN_SLICE) {
                int len = Math.min(WIDEN_SLICE, k - c0);
                for (int r = 0; r < 4; r++) w.elementsToFloats(r0 + (long) r * k + c0, len, ws, r * WIDEN_SLICE, scratch);
                int bound = len - len % lanes;
                for (int c = 0; c < bound; c += lanes) {
                    FloatVector xv = FloatVector.fromArray(F, x, c0 + c);
                    a0 = FloatVector.fromArray(F, ws, c).fma(xv, a0);
                    a1 = FloatVector.fromArray(F, ws, WIDEN_SLICE + c).fma(xv, a1);
                    a2 = FloatVector.fromArray(F, ws, 2 * WIDEN_SLICE + c).fma(xv, a2);
                    a3 = FloatVector.fromArray(F, ws, 3 * WIDEN_SLICE + c).fma(xv, a3);
                }
                for (int c = bound; c < len; c++) {
                    float xc = x[c0 + c];
                    s0 = Math.fma(ws[c], xc, s0);
                    s1 = Math.fma(ws[WIDEN_SLICE + c], xc, s1);
                    s2 = Math.fma(ws[2 * WIDEN_SLICE + c], xc, s2);
                    s3 = Math.fma(ws[3 * WIDEN_SLICE + c], xc, s3);
                }
            }
            y[j] = Lanes.sum(a0) + s0;
            y[j + 1] = Lanes.sum(a1) + s1;
            y[j + 2] = Lanes.sum(a2) + s2;
            y[j + 3] = Lanes.sum(a3) + s3;
        }
        for (; j < j1; j++) y[j] = dotRow(x, w, j);
    }

    /** Reduces four accumulators and adds the scalar tail [bound, k) of rows j..j+3. */
    private static void finish4(float[] x, WeightView w, float[] y, int j, int bound,
                                FloatVector a0, FloatVector a1, FloatVector a2, FloatVector a3) {
        int k = w.cols;
        long r0 = (long) j * k, r1 = r0 + k, r2 = r1 + k, r3 = r2 + k;
        float s0 = Lanes.sum(a0), s1 = Lanes.sum(a1);
        float s2 = Lanes.sum(a2), s3 = Lanes.sum(a3);
        for (int c = bound; c < k; c++) {
            float xc = x[c];
            s0 = Math.fma(w.get(r0 + c), xc, s0);
            s1 = Math.fma(w.get(r1 + c), xc, s1);
            s2 = Math.fma(w.get(r2 + c), xc, s2);
            s3 = Math.fma(w.get(r3 + c), xc, s3);
        }
        y[j] = s0;
        y[j + 1] = s1;
        y[j + 2] = s2;
        y[j + 3] = s3;
    }

    /** One leftover row (fewer than 4 remain): x . w[j] widened row by row. */
    private static float dotRow(float[] x, WeightView w, int j) {
        float[] row = new float[w.cols];
        w.rowsToFloats(j, j + 1, row, 0);
        return VectorMath.dot(x, 0, row, 0, w.cols);
    }

    /**
     * Weight blocks [b0, b1) of BLOCK_ROWS rows against all rows of xp [nPad, k];
     * writes out[i, j] for i < n.
     */
    static void tiled(float[] xp, int nPad, int n, WeightView w, float[] out, int b0, int b1) {
        int m = w.rows;
        int k = w.cols;
        // One extra zero row so a block with an odd row count still runs in pairs.
        float[] ws = new float[(BLOCK_ROWS + 1) * k];
        for (int b = b0; b < b1; b++) {
            int j0 = b * BLOCK_ROWS;
            int rows = Math.min(BLOCK_ROWS, m - j0);
            w.rowsToFloats(j0, j0 + rows, ws, 0);
            if (rows % 2 == 1) Arrays.fill(ws, rows * k, (rows + 1) * k, 0f);
            for (int c0 = 0; c0 < k; c0 += K_SLICE) {
                int c1 = Math.min(k, c0 + K_SLICE);
                for (int i = 0; i < nPad; i += X_TILE) {
                    for (int jj = 0; jj < rows; jj += 2) {
                        micro4x2(xp, i, ws, jj, k, c0, c1, out, n, m, j0 + jj, jj + 1 < rows);
                    }
                }
            }
        }
    }

    /**
     * Adds x[i..i+3, c0..c1) . ws[jj..jj+1, c0..c1) to out[i.., j..]; the second weight row is
     * stored only when hasSecond, rows of x beyond n are padding and never stored.
     */
    private static void micro4x2(float[] xp, int i, float[] ws, int jj, int k, int c0, int c1,
                                 float[] out, int n, int m, int j, boolean hasSecond) {
        int lanes = F.length();
        int x0 = i * k, x1 = x0 + k, x2 = x1 + k, x3 = x2 + k;
        int w0 = jj * k, w1 = w0 + k;
        FloatVector a00 = FloatVector.zero(F), a01 = a00, a10 = a00, a11 = a00;
        FloatVector a20 = a00, a21 = a00, a30 = a00, a31 = a00;
        int bound = c0 + (c1 - c0) / lanes * lanes;
        for (int c = c0; c < bound; c += lanes) {
            FloatVector wv0 = FloatVector.fromArray(F, ws, w0 + c);
            FloatVector wv1 = FloatVector.fromArray(F, ws, w1 + c);
            FloatVector xv = FloatVector.fromArray(F, xp, x0 + c);
            a00 = xv.fma(wv0, a00);
            a01 = xv.fma(wv1, a01);
            xv = FloatVector.fromArray(F, xp, x1 + c);
            a10 = xv.fma(wv0, a10);
            a11 = xv.fma(wv1, a11);
            xv = FloatVector.fromArray(F, xp, x2 + c);
            a20 = xv.fma(wv0, a20);
            a21 = xv.fma(wv1, a21);
            xv = FloatVector.fromArray(F, xp, x3 + c);
            a30 = xv.fma(wv0, a30);
            a31 = xv.fma(wv1, a31);
        }
        float s00 = Lanes.sum(a00), s01 = Lanes.sum(a01);
        float s10 = Lanes.sum(a10), s11 = Lanes.sum(a11);
        float s20 = Lanes.sum(a20), s21 = Lanes.sum(a21);
        float s30 = Lanes.sum(a30), s31 = Lanes.sum(a31);
        for (int c = bound; c < c1; c++) {
            float wa = ws[w0 + c], wb = ws[w1 + c];
            s00 = Math.fma(xp[x0 + c], wa, s00);
            s01 = Math.fma(xp[x0 + c], wb, s01);
            s10 = Math.fma(xp[x1 + c], wa, s10);
            s11 = Math.fma(xp[x1 + c], wb, s11);
            s20 = Math.fma(xp[x2 + c], wa, s20);
            s21 = Math.fma(xp[x2 + c], wb, s21);
            s30 = Math.fma(xp[x3 + c], wa, s30);
            s31 = Math.fma(xp[x3 + c], wb, s31);
        }
        store(out, n, m, i, j, s00, s01, hasSecond);
        store(out, n, m, i + 1, j, s10, s11, hasSecond);
        store(out, n, m, i + 2, j, s20, s21, hasSecond);
        store(out, n, m, i + 3, j, s30, s31, hasSecond);
    }

    private static void store(float[] out, int n, int m, int i, int j, float first, float second, boolean hasSecond) {
        if (i >= n) return;
        out[i * m + j] += first;
        if (hasSecond) out[i * m + j + 1] += second;
    }
}
