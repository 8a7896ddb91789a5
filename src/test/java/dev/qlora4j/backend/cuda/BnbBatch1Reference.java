package dev.qlora4j.backend.cuda;

import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Half;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * CPU twin of the v7 decode GEMV (native/nf4_gemv7.cu, {@link Nf4Gemv7Kernels}): bitsandbytes' batch-1 inference
 * numerics (kgemm_4bit_inference_naive), one row of x, T = the compute dtype (BF16 or F16):
 * <pre>
 *   w_k = round_T(round_T(code[q_k]) * round_T(absmax[block of k]))
 *   p_k = round_T(x_k * w_k)
 *   y   = round_T(f32(sum_k p_k) + bias)        the sum in float64, the bias (a T value) added once in float32
 * </pre>
 * Both products are of two T values, so they are exact in float32 (8 + 8 or 11 + 11 significant bits) and the one
 * rounding to T here is the one the kernel's HMUL2 performs: every p_k is bit-identical to the kernel's; only the
 * order of the kernel's float32 sums differs from this float64 sum.
 */
final class BnbBatch1Reference {
    /** y [out] (values of T) and sumAbs [out] = sum_k |p_k| (float64, for the summation-order tolerance). */
    record Result(float[] y, double[] sumAbs) {}

    private BnbBatch1Reference() {}

    /** The rounded weights of one weight: w [o, k] of the formula above. */
    static final class Weights {
        private final MemorySegment packed;
        private final float[] absmaxT;  // round_T(absmax) per block
        private final float[] codeT = new float[16];
        private final DType t;
        private final int inF, blocksize;

        Weights(QuantState4bit qs, DType t) {
            this.packed = qs.weight().segment();
            this.inF = qs.shape()[1];
            this.blocksize = qs.blocksize();
            this.t = t;
            float[] a = qs.dequantizedAbsmax();
            this.absmaxT = new float[a.length];
            for (int i = 0; i < a.length; i++) absmaxT[i] = round(t, a[i]);
            for (int q = 0; q < 16; q++) codeT[q] = round(t, qs.quantType().dequantValue(q));
        }

        float at(int o, int k) {
            long e = (long) o * inF + k;
            int b = packed.get(ValueLayout.JAVA_BYTE, e >> 1) & 0xFF;
            int q = (e & 1) == 0 ? b >> 4 : b & 15;  // high nibble = the even element
            return round(t, codeT[q] * absmaxT[(int) (e / blocksize)]);  // exact float32 product, one rounding
        }
    }

    /** y = x [1, in] W^T (+ bias [out], values of T, or null) with x holding values of T. */
    static Result linear(float[] x, QuantState4bit qs, float[] bias, DType t) {
        int outF = qs.shape()[0], inF = qs.shape()[1];
        Weights w = new Weights(qs, t);
        float[] y = new float[outF];
        double[] sabs = new double[outF];
        for (int o = 0; o < outF; o++) {
            double sum = 0, sa = 0;
            for (int k = 0; k < inF; k++) {
                float p = round(t, x[k] * w.at(o, k));  // exact float32 product, one rounding
                sum += p;
                sa += Math.abs(p);
            }
            float acc = (float) sum;
            if (bias != null) acc += bias[o];
            y[o] = round(t, acc);
            sabs[o] = sa;
        }
        return new Result(y, sabs);
    }

    static float round(DType t, float v) {
        return switch (t) {
            case BF16 -> Half.roundBf16(v);
            case F16 -> Half.roundF16(v);
            default -> throw new IllegalArgumentException("bnb's batch-1 numerics round to BF16 or F16, not " + t);
        };
    }
}
