package dev.qlora4j.quant;

import dev.qlora4j.tensor.Lanes;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Half;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;

import java.util.Arrays;

/**
 * Fused CPU linear layer over a 4-bit weight (NF4 or FP4): y = x W^T + b for x [n, k], W [m, k] stored as a
 * {@link QuantState4bit}. Each worker dequantizes one weight row at a time into a k-float buffer (the full
 * float32 weight is never materialized) and runs Vector API dot products against all n input rows;
 * rows of W are spread over the fork-join pool.
 *
 * <p>Compute dtype mirrors transformers' Linear4bit + bitsandbytes' MatMul4Bit: x and bias are cast to
 * {@code bnb_4bit_compute_dtype}; the weight is dequantized to the state's dtype (the dtype the weight had
 * before quantization) and then cast to the compute dtype; the product accumulates in float32 (as cuBLAS
 * does for 16-bit GEMMs) and the output, bias included, is rounded once to the compute dtype. With compute
 * dtype float32 and a float32 state everything is plain float32. Accumulation order differs from cuBLAS, so
 * results agree with a float64 reference to float32 accumulation accuracy, not bit for bit.
 */
public final class Nf4Matmul {
    private static final VectorSpecies<Float> S = FloatVector.SPECIES_PREFERRED;

    private Nf4Matmul() {}

    /** y [n, m] = x [n, k] W^T + bias [m] (bias may be null), float32 compute. */
    public static float[] linear(float[] x, int n, QuantState4bit w, float[] bias) {
        return linear(x, n, w, bias, DType.F32);
    }

    /** As {@link #linear(float[], int, QuantState4bit, float[])} with a compute dtype (F32, BF16 or F16). */
    public static float[] linear(float[] x, int n, QuantState4bit w, float[] bias, DType computeDType) {
        float[] out = new float[n * rows(w)];
        linearInto(x, n, w, bias, computeDType, out);
        return out;
    }

    /** Matrix-vector product y [m] = W x [k] in float32 (single-token decoding). */
    public static float[] matvec(QuantState4bit w, float[] x) {
        return linear(x, 1, w, null, DType.F32);
    }

    /** Allocation-light form for benchmarks and callers that reuse buffers: writes y [n, m] into out. */
    public static void linearInto(float[] x, int n, QuantState4bit w, float[] bias, DType computeDType, float[] out) {
        int[] shape = w.shape();
        if (shape.length != 2) {
            throw new IllegalArgumentException("linear needs a 2-D weight [out, in], got shape " + Arrays.toString(shape));
        }
        int m = shape[0];
        int k = shape[1];
        if (computeDType != DType.F32 && computeDType != DType.BF16 && computeDType != DType.F16) {
            throw new IllegalArgumentException("compute dtype must be F32, BF16 or F16, got " + computeDType);
        }
        if (n < 0 || (long) n * k > x.length) {
            throw new IllegalArgumentException("x holds " + x.length + " values, need n*k = " + n + "*" + k);
        }
        if (bias != null && bias.length != m) {
            throw new IllegalArgumentException("bias has " + bias.length + " values, weight has " + m + " output rows");
        }
        if (out.length < (long) n * m) throw new IllegalArgumentException("output holds " + out.length + " values, need " + (long) n * m);

        float[] xc = x;
        float[] bc = bias;
        if (computeDType != DType.F32) {
            xc = new float[n * k];
            for (int i = 0; i < xc.length; i++) xc[i] = round(computeDType, x[i]);
            if (bias != null) {
                bc = new float[m];
                for (int i = 0; i < m; i++) bc[i] = round(computeDType, bias[i]);
            }
        }
        final float[] xs = xc;
        final float[] bs = bc;
        DType stateDType = w.dtype();
        boolean roundWeights = stateDType != DType.F32 || computeDType != DType.F32;
        w.absmaxValues(); // fill the cache before the workers start
        long costPerRow = (long) k * (n + 1);
        int grain = (int) Math.max(1, (1L << 16) / Math.max(1, costPerRow));
        Parallel.forRange(m, grain, (r0, r1) -> {
            float[] row = new float[k];
            float[] sums = new float[4];
            for (int r = r0; r < r1; r++) {
                Quant4bit.decode(w, r * k, r * k + k, row, 0);
                if (roundWeights) {
                    for (int j = 0; j < k; j++) row[j] = round(computeDType, round(stateDType, row[j]));
                }
                float b = bs == null ? 0f : bs[r];
                int i = 0;
                for (; i + 4 <= n; i += 4) {
                    dot4(xs, i * k, k, row, sums);
                    for (int t = 0; t < 4; t++) out[(i + t) * m + r] = round(computeDType, sums[t] + b);
                }
                for (; i < n; i++) out[i * m + r] = round(computeDType, dot(xs, i * k, row, k) + b);
            }
        });
    }

    private static int rows(QuantState4bit w) {
        int[] shape = w.shape();
        if (shape.length != 2) throw new IllegalArgumentException("linear needs a 2-D weight [out, in], got " + Arrays.toString(shape));
        return shape[0];
    }

    static float round(DType d, float v) {
        return switch (d) {
            case BF16 -> Half.roundBf16(v);
            case F16 -> Half.roundF16(v);
            default -> v;
        };
    }

    /** sum_j a[ao + j] * b[j], j < len, with float32 vector FMAs. */
    static float dot(float[] a, int ao, float[] b, int len) {
        int l = S.length();
        FloatVector acc0 = FloatVector.zero(S);
        FloatVector acc1 = FloatVector.zero(S);
        int j = 0;
        for (; j <= len - 2 * l; j += 2 * l) {
            acc0 = FloatVector.fromArray(S, a, ao + j).fma(FloatVector.fromArray(S, b, j), acc0);
            acc1 = FloatVector.fromArray(S, a, ao + j + l).fma(FloatVector.fromArray(S, b, j + l), acc1);
        }
        for (; j <= len - l; j += l) {
            acc0 = FloatVector.fromArray(S, a, ao + j).fma(FloatVector.fromArray(S, b, j), acc0);
        }
        float s = Lanes.sum(acc0.add(acc1));
        for (; j < len; j++) s = Math.fma(a[ao + j], b[j], s);
        return s;
    }

    /** Four dot products of consecutive rows of a (stride len, from ao) with b, sharing each load of b. */
    static void dot4(float[] a, int ao, int len, float[] b, float[] out) {
        int l = S.length();
        FloatVector s0 = FloatVector.zero(S), s1 = FloatVector.zero(S), s2 = FloatVector.zero(S), s3 = FloatVector.zero(S);
        int j = 0;
        for (; j <= len - l; j += l) {
            FloatVector wv = FloatVector.fromArray(S, b, j);
            s0 = FloatVector.fromArray(S, a, ao + j).fma(wv, s0);
            s1 = FloatVector.fromArray(S, a, ao + len + j).fma(wv, s1);
            s2 = FloatVector.fromArray(S, a, ao + 2 * len + j).fma(wv, s2);
            s3 = FloatVector.fromArray(S, a, ao + 3 * len + j).fma(wv, s3);
        }
        float r0 = Lanes.sum(s0), r1 = Lanes.sum(s1);
        float r2 = Lanes.sum(s2), r3 = Lanes.sum(s3);
        for (; j < len; j++) {
            float wj = b[j];
            r0 = Math.fma(a[ao + j], wj, r0);
            r1 = Math.fma(a[ao + len + j], wj, r1);
            r2 = Math.fma(a[ao + 2 * len + j], wj, r2);
            r3 = Math.fma(a[ao + 3 * len + j], wj, r3);
        }
        out[0] = r0;
        out[1] = r1;
        out[2] = r2;
        out[3] = r3;
    }
}
