package dev.qlora4j.quant;

import java.util.Locale;

/**
 * The two 4-bit data types of bitsandbytes. Each type knows three tables:
 * <ul>
 *   <li>{@link #quantMap()}: the 16 values bitsandbytes stores as {@code quant_map}
 *       ({@code get_4bit_type}: NF4 as published, FP4 as {@code [0, .0625, 8, 12, 4, 6, 2, 3, 0, -.0625, ...] / 12}
 *       in float32; index 8 is +0 because Python's {@code -0} literal is the integer 0);</li>
 *   <li>{@link #dequantValue(int)}: what the CUDA dequantize kernel multiplies absmax by (for FP4 its own
 *       decimal constants, equal to the quant_map in float32 except that code 8 is -0);</li>
 *   <li>{@link #quantize(float)}: the kernel's decision tree on a value already scaled by 1/absmax.</li>
 * </ul>
 * The decision trees are balanced binary searches with strict {@code x > threshold} tests (an exact
 * threshold goes to the lower code, NaN goes to code 0); they are written here as counts of thresholds
 * below x, which makes exactly the same comparisons in the same order.
 */
public enum QuantType {
    NF4("nf4") {
        @Override
        public int quantize(float x) {
            // index = number of NF4 midpoints strictly below x; 4 comparisons like the kernel's tree
            int q = x > NF4_MIDPOINTS[7] ? 8 : 0;
            if (x > NF4_MIDPOINTS[q + 3]) q += 4;
            if (x > NF4_MIDPOINTS[q + 1]) q += 2;
            if (x > NF4_MIDPOINTS[q]) q += 1;
            return q;
        }

        @Override
        public float dequantValue(int q) { return NF4_CODE[q & 15]; }

        @Override
        public float[] quantMap() { return NF4_CODE.clone(); }
    },
    FP4("fp4") {
        @Override
        public int quantize(float x) {
            int sign = x < 0 ? 0b1000 : 0; // -0.0 and NaN keep the sign bit clear, as in the kernel
            float a = Math.abs(x);
            int r = a > FP4_PIVOTS[3] ? 4 : 0;
            if (a > FP4_PIVOTS[r + 1]) r += 2;
            if (a > FP4_PIVOTS[r]) r += 1;
            return FP4_RANK_TO_BITS[r] | sign;
        }

        @Override
        public float dequantValue(int q) { return FP4_DEQUANT[q & 15]; }

        @Override
        public float[] quantMap() {
            float[] raw = {0f, 0.0625f, 8f, 12f, 4f, 6f, 2f, 3f, 0f, -0.0625f, -8f, -12f, -4f, -6f, -2f, -3f};
            for (int i = 0; i < raw.length; i++) raw[i] = raw[i] / 12f; // torch: data.div_(data.abs().max())
            return raw;
        }
    };

    /** NF4 code values, index 0..15, as published by bitsandbytes (float32). */
    static final float[] NF4_CODE = {
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
        -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
        0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
        0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

    /**
     * The kernel's NF4 decision thresholds, ascending: midpoints between neighbouring codes computed in
     * float64 from the published values and written as float32 literals (they can differ by an ulp from
     * a float32 midpoint, so the published constants are used, not recomputed).
     */
    static final float[] NF4_MIDPOINTS = {
        -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
        -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
        0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
        0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f};

    /**
     * The kernel's FP4 pivots on |x|, ascending. They are truncated decimals of the midpoints between
     * magnitudes 0, 1/192, 2/12, 3/12, 4/12, 6/12, 8/12, 12/12 (note 0.583333f, not 7/12).
     */
    static final float[] FP4_PIVOTS = {
        0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f, 0.4166667f, 0.583333f, 0.8333333f};

    /** FP4 magnitude rank (0 = smallest) to the 3 code bits (exponent and mantissa of the E2M1 layout). */
    static final int[] FP4_RANK_TO_BITS = {0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011};

    /** What the CUDA dequantize kernel returns per FP4 code (its decimal constants, sign from bit 3). */
    static final float[] FP4_DEQUANT = new float[16];

    static {
        float[] magnitude = {0f, 5.208333333e-03f, 0.66666667f, 1.0f, 0.33333333f, 0.5f, 0.16666667f, 0.25f};
        for (int q = 0; q < 16; q++) {
            FP4_DEQUANT[q] = (q & 0b1000) != 0 ? -magnitude[q & 7] : magnitude[q & 7];
        }
    }

    private final String bnbName;

    QuantType(String bnbName) {
        this.bnbName = bnbName;
    }

    /** The 4-bit code of a value already scaled to [-1, 1] by 1/absmax (kernel decision tree). */
    public abstract int quantize(float scaled);

    /** The factor the dequantize kernel multiplies the block's absmax by for code q (0..15). */
    public abstract float dequantValue(int q);

    /** A copy of the 16 values bitsandbytes saves as {@code quant_map} for this type (float32). */
    public abstract float[] quantMap();

    /** "nf4" or "fp4", as in {@code bnb_4bit_quant_type} and the quant_state key suffix. */
    public String bnbName() { return bnbName; }

    /** Parses "nf4" / "fp4" (case-insensitive). */
    public static QuantType fromBnbName(String name) {
        if (name != null) {
            for (QuantType t : values()) {
                if (t.bnbName.equals(name.toLowerCase(Locale.ROOT))) return t;
            }
        }
        throw new IllegalArgumentException("unknown 4-bit quant_type '" + name + "' (bitsandbytes knows 'nf4' and 'fp4')");
    }

    /** The 16 dequantize factors (index = code). */
    float[] dequantTable() {
        float[] t = new float[16];
        for (int q = 0; q < 16; q++) t[q] = dequantValue(q);
        return t;
    }
}
