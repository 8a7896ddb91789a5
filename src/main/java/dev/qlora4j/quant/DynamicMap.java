package dev.qlora4j.quant;

import java.util.Arrays;

/**
 * bitsandbytes' dynamic 8-bit quantization map ({@code functional.create_dynamic_map}) and the CUDA
 * kernel's search for the nearest code ({@code dQuantize}).
 *
 * <p>The map is built with torch's float32 arithmetic: {@code torch.linspace(0.1, 1, k)} in float32 (whose
 * kernel computes {@code start + step*i} for the first half and {@code end - step*(k-1-i)} for the second,
 * each as one fused multiply-add), means of neighbours in float32, then a float32 product with
 * {@code float32(10^e)}. This reproduces the table published from bitsandbytes bit for bit (the test checks
 * entries and the sum); plain float64 arithmetic does not.
 *
 * <p>The same tables and search serve bitsandbytes' 8-bit optimizers (dev.qlora4j.optim): state1 against
 * {@code create(true)}, state2 against {@code create(false)}.
 */
public final class DynamicMap {
    private static final float[] SIGNED = create(true, 7, 8);

    private DynamicMap() {}

    /** The default signed map (256 sorted float32 values from -0.99296875 to 1.0), a copy. */
    public static float[] signed() { return SIGNED.clone(); }

    /** Shared instance for internal use; never modified. */
    static float[] signedShared() { return SIGNED; }

    /** {@code create_dynamic_map(signed, 7, 8)}. */
    public static float[] create(boolean signed) { return create(signed, 7, 8); }

    /**
     * {@code create_dynamic_map(signed, max_exponent_bits, total_bits)}: 256 sorted float32 values
     * (zeros pad the table when total_bits &lt; 8).
     */
    public static float[] create(boolean signed, int maxExponentBits, int totalBits) {
        if (totalBits < 2 || totalBits > 8) {
            throw new IllegalArgumentException("total_bits must be in 2..8, got " + totalBits);
        }
        if (maxExponentBits < 1 || maxExponentBits > totalBits - 1) {
            throw new IllegalArgumentException("max_exponent_bits must be in 1.." + (totalBits - 1) + ", got " + maxExponentBits);
        }
        // bitsandbytes computes non_sign_bits = total_bits - 1 for both signed and unsigned maps
        int nonSignBits = totalBits - 1;
        int additionalItems = (1 << (nonSignBits - maxExponentBits)) - 1;
        float[] data = new float[512];
        int count = 0;
        int i = 0;
        for (i = 0; i < maxExponentBits; i++) {
            int fractionItems = signed
                    ? (1 << (i + nonSignBits - maxExponentBits)) + 1
                    : (1 << (i + nonSignBits - maxExponentBits + 1)) + 1;
            count = appendMeans(data, count, fractionItems, maxExponentBits, i, signed);
        }
        if (additionalItems > 0) {
            // bitsandbytes reuses the last loop value of i here (the largest scale)
            count = appendMeans(data, count, additionalItems + 1, maxExponentBits, i - 1, signed);
        }
        data[count++] = 0f;
        data[count++] = 1.0f;
        if (count != 1 << totalBits) {
            throw new IllegalArgumentException("create_dynamic_map(signed=" + signed + ", max_exponent_bits="
                    + maxExponentBits + ", total_bits=" + totalBits + ") yields " + count + " values, not "
                    + (1 << totalBits) + " (bitsandbytes asserts the same)");
        }
        float[] out = Arrays.copyOf(data, 256); // gap filled with zeros
        Arrays.sort(out);
        return out;
    }

    private static int appendMeans(float[] data, int count, int boundaries, int maxExponentBits, int i, boolean signed) {
        float[] b = linspace(0.1f, 1.0f, boundaries);
        int exponent = -(maxExponentBits - 1) + i;
        // Python: 10 ** exponent (exact int or correctly rounded double), then cast to float32 by torch
        float scale = (float) Double.parseDouble("1e" + exponent);
        for (int j = 0; j + 1 < boundaries; j++) {
            float mean = (b[j] + b[j + 1]) / 2.0f;
            data[count++] = scale * mean;
            if (signed) data[count++] = -scale * mean;
        }
        return count;
    }

    /** torch.linspace in float32 (one fused multiply-add per value, halves anchored at start and end). */
    static float[] linspace(float start, float end, int steps) {
        float[] out = new float[steps];
        if (steps == 1) {
            out[0] = start;
            return out;
        }
        float step = (end - start) / (float) (steps - 1);
        int halfway = steps / 2;
        for (int idx = 0; idx < steps; idx++) {
            out[idx] = idx < halfway
                    ? Math.fma(step, (float) idx, start)
                    : Math.fma(-step, (float) (steps - idx - 1), end);
        }
        return out;
    }

    /**
     * The CUDA kernel's nearest-code search ({@code dQuantize}, deterministic): a 7-step binary search over
     * the 256 sorted codes, then a midpoint test against the neighbour on the side x lies: above the final
     * pivot, x goes up only if strictly above the midpoint; below it, x goes down only if strictly below.
     * NaN takes the "not greater" branch at every step and ends at index 0.
     *
     * <p>Also the optimizers' search ({@code quantize_2D}) for the signed and the unsigned map: that one
     * starts its bounds at -1 or 0 and 1 instead of the table's ends, which never changes a result, since
     * code[255] is 1.0 in both maps and a lower pivot that never moved ends the search at index 0 anyway.
     */
    public static int quantize(float[] code, float x) {
        int pivot = 127;
        int upperPivot = 255;
        int lowerPivot = 0;
        float lower = -1.0f;
        float upper = 1.0f;
        float val = code[pivot];
        for (int i = 64; i > 0; i >>= 1) {
            if (x > val) {
                lowerPivot = pivot;
                lower = val;
                pivot += i;
            } else {
                upperPivot = pivot;
                upper = val;
                pivot -= i;
            }
            val = code[pivot];
        }
        if (upperPivot == 255) upper = code[255];
        if (lowerPivot == 0) lower = code[0];
        if (x > val) {
            float midpoint = (upper + val) * 0.5f;
            return x > midpoint ? upperPivot : pivot;
        } else {
            float midpoint = (lower + val) * 0.5f;
            return x < midpoint ? lowerPivot : pivot;
        }
    }
}
