package dev.qlora4j.quant;

import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.*;

class QuantTypeTest {
    /** bitsandbytes' published NF4 table (get_4bit_type("nf4")). */
    private static final double[] NF4_PUBLISHED = {
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
        -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
        0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
        0.7229568362236023, 1.0};

    @Test
    void nf4TableIsThePublishedOne() {
        float[] map = QuantType.NF4.quantMap();
        assertEquals(16, map.length);
        for (int i = 0; i < 16; i++) {
            assertEquals((float) NF4_PUBLISHED[i], map[i], 0f, "nf4[" + i + "]");
            assertEquals(map[i], QuantType.NF4.dequantValue(i), 0f);
        }
    }

    @Test
    void fp4TableIsThePublishedOneOverTwelve() {
        double[] raw = {0, 0.0625, 8, 12, 4, 6, 2, 3, -0.0, -0.0625, -8, -12, -4, -6, -2, -3};
        float[] map = QuantType.FP4.quantMap();
        for (int i = 0; i < 16; i++) assertEquals((float) raw[i] / 12f, map[i], 0f, "fp4[" + i + "]");
        // Python's -0 literal is the integer 0, so bitsandbytes stores +0 at index 8 ...
        assertEquals(0, Float.floatToRawIntBits(map[8]));
        // ... while the dequantize kernel's decimal constants give -0 there and equal the map elsewhere
        for (int i = 0; i < 16; i++) assertEquals(map[i], QuantType.FP4.dequantValue(i), 0f, "fp4 kernel constant " + i);
        assertEquals(Float.floatToRawIntBits(-0.0f), Float.floatToRawIntBits(QuantType.FP4.dequantValue(8)));
        assertEquals(0.0052083335f, map[1], 0f);
        assertEquals(1.0f, map[3], 0f);
    }

    @Test
    void nf4ExactMidpointGoesToTheLowerCode() {
        for (int i = 0; i < 15; i++) {
            float mid = QuantType.NF4_MIDPOINTS[i];
            assertEquals(i, QuantType.NF4.quantize(mid), "on midpoint " + i);
            assertEquals(i + 1, QuantType.NF4.quantize(Math.nextUp(mid)), "just above midpoint " + i);
            assertEquals(i, QuantType.NF4.quantize(Math.nextDown(mid)), "just below midpoint " + i);
        }
        for (int q = 0; q < 16; q++) assertEquals(q, QuantType.NF4.quantize(QuantType.NF4.dequantValue(q)));
        assertEquals(7, QuantType.NF4.quantize(0.0f));
        assertEquals(7, QuantType.NF4.quantize(-0.0f));
        assertEquals(0, QuantType.NF4.quantize(Float.NaN), "NaN fails every x > t test: code 0 as in the kernel");
        assertEquals(15, QuantType.NF4.quantize(5f));
        assertEquals(0, QuantType.NF4.quantize(-5f));
    }

    @Test
    void nf4MidpointsSitBetweenCodes() {
        float[] c = QuantType.NF4.quantMap();
        for (int i = 0; i < 15; i++) {
            double mid = ((double) c[i] + c[i + 1]) / 2;
            assertEquals(mid, QuantType.NF4_MIDPOINTS[i], 1e-7, "threshold " + i + " is the midpoint");
        }
    }

    @Test
    void fp4PivotsAndSign() {
        // magnitude ranks: 0, 1/192, 2/12, 3/12, 4/12, 6/12, 8/12, 1
        int[] bitsByRank = {0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011};
        for (int r = 0; r < 7; r++) {
            float p = QuantType.FP4_PIVOTS[r];
            assertEquals(bitsByRank[r], QuantType.FP4.quantize(p), "on pivot " + r + " (strict >: lower code)");
            assertEquals(bitsByRank[r + 1], QuantType.FP4.quantize(Math.nextUp(p)));
            assertEquals(bitsByRank[r] | 0b1000, QuantType.FP4.quantize(-p), "negative gets the sign bit");
        }
        assertEquals(0b0110, QuantType.FP4.quantize(0.583333f - 0.4f)); // 0.1833 -> 2/12
        assertEquals(0b0101, QuantType.FP4.quantize(0.583333f), "0.583333 is the truncated 7/12 pivot: stays at 6/12");
        assertEquals(0b0010, QuantType.FP4.quantize(7f / 12f), "float32 7/12 lies above the truncated pivot");
        assertEquals(0, QuantType.FP4.quantize(0f));
        assertEquals(0, QuantType.FP4.quantize(-0f), "sign bit only for x < 0");
        assertEquals(0, QuantType.FP4.quantize(Float.NaN));
        assertEquals(0b1011, QuantType.FP4.quantize(-1f));
        for (int q = 0; q < 16; q++) {
            int expect = q == 8 ? 0 : q; // -0 quantizes to +0
            assertEquals(expect, QuantType.FP4.quantize(QuantType.FP4.dequantValue(q)), "code " + q);
        }
    }

    @Test
    void names() {
        assertSame(QuantType.NF4, QuantType.fromBnbName("nf4"));
        assertSame(QuantType.FP4, QuantType.fromBnbName("FP4"));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> QuantType.fromBnbName("int4"));
        assertTrue(e.getMessage().contains("int4") && e.getMessage().contains("nf4"), e.getMessage());
    }
}
