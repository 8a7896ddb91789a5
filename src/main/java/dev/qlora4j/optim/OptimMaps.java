package dev.qlora4j.optim;

import java.util.Arrays;

/**
 * The 8-bit code tables of bitsandbytes' optimizers and their encode/decode.
 *
 * <p>{@link #dynamic(boolean)} is bitsandbytes' create_dynamic_map(signed, max_exponent_bits=7,
 * total_bits=8): for exponents i = 0..6 it takes 2^i (signed) or 2^(i+1) (unsigned) midpoints of
 * torch.linspace(0.1, 1, n) in float32, scales them by 10^(i-6) (and adds the negatives when
 * signed), then adds 0 and 1.0 and sorts: 256 values in [-0.993, 1] (signed, code[127] = 0) or
 * [0, 1] (unsigned, code[0] = 0).
 *
 * <p>Kept here, package-private, until dev.qlora4j.quant.DynamicMap (same semantics) is on main;
 * then this class should delegate to it.
 */
final class OptimMaps {
    private static final float[] SIGNED = build(true);
    private static final float[] UNSIGNED = build(false);

    private OptimMaps() {}

    /** A copy of the signed (first moment) or unsigned (second moment) dynamic map, 256 sorted values. */
    static float[] dynamic(boolean signed) {
        return (signed ? SIGNED : UNSIGNED).clone();
    }

    /** Shared read-only table for the kernels (do not modify). */
    static float[] table(boolean signed) {
        return signed ? SIGNED : UNSIGNED;
    }

    private static float[] build(boolean signed) {
        final int maxExponentBits = 7;
        float[] data = new float[256];
        int k = 0;
        for (int i = 0; i < maxExponentBits; i++) {
            int fractionItems = signed ? (1 << i) + 1 : (1 << (i + 1)) + 1;
            float[] boundaries = linspace(0.1f, 1.0f, fractionItems);
            // torch multiplies the float32 means by the Python scalar 10**(i-6) in float32
            float scale = (float) Math.pow(10, -(maxExponentBits - 1) + i);
            for (int j = 0; j + 1 < boundaries.length; j++) {
                float mean = (boundaries[j] + boundaries[j + 1]) / 2.0f;
                data[k++] = scale * mean;
                if (signed) data[k++] = -scale * mean;
            }
        }
        data[k++] = 0f;
        data[k++] = 1.0f;
        if (k != 256) throw new AssertionError("dynamic map has " + k + " entries");
        Arrays.sort(data);
        return data;
    }

    /** torch.linspace(start, end, steps) for float32: symmetric halves from both ends. */
    static float[] linspace(float start, float end, int steps) {
        float[] out = new float[steps];
        if (steps == 1) {
            out[0] = start;
            return out;
        }
        float step = (end - start) / (steps - 1);
        int halfway = steps / 2;
        for (int i = 0; i < steps; i++) {
            out[i] = i < halfway ? start + step * i : end - step * (steps - i - 1);
        }
        return out;
    }

    /**
     * Index of the code value nearest to x (x normalized to [-1, 1] or [0, 1]), by bitsandbytes'
     * quantize_2D: a 7-step binary search over the sorted table, then the nearer of the two
     * neighbours by midpoint. NaN ends at index 0, as on the GPU.
     */
    static int quantize(float[] code, float x, boolean signed) {
        int pivot = 127;
        int upperPivot = 255;
        int lowerPivot = 0;
        float lower = signed ? -1.0f : 0.0f;
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
        if (x > val) {
            float midpoint = (upper + val) * 0.5f;
            return x > midpoint ? upperPivot : pivot;
        } else {
            float midpoint = (lower + val) * 0.5f;
            return x < midpoint ? lowerPivot : pivot;
        }
    }
}
