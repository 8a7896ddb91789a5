package dev.qlora4j.tensor;

/** Scalar conversions between float32 and the 16-bit float formats, rounding to nearest even as torch does. */
public final class Half {
    private Half() {}

    public static float bf16ToFloat(short bits) {
        return Float.intBitsToFloat((bits & 0xFFFF) << 16);
    }

    /** float32 to bfloat16 bits, round to nearest even; NaN stays NaN (quiet). */
    public static short floatToBf16(float f) {
        int x = Float.floatToRawIntBits(f);
        if ((x & 0x7FFFFFFF) > 0x7F800000) {
            return (short) ((x >>> 16) | 0x0040);
        }
        int lsb = (x >>> 16) & 1;
        x += 0x7FFF + lsb;
        return (short) (x >>> 16);
    }

    public static float f16ToFloat(short bits) {
        return Float.float16ToFloat(bits);
    }

    public static short floatToF16(float f) {
        return Float.floatToFloat16(f);
    }

    /** Rounds a float32 to the nearest bfloat16 value (as a float32). */
    public static float roundBf16(float f) { return bf16ToFloat(floatToBf16(f)); }

    /** Rounds a float32 to the nearest float16 value (as a float32). */
    public static float roundF16(float f) { return f16ToFloat(floatToF16(f)); }
}
