package dev.qlora4j.quant;

import org.junit.jupiter.api.Test;

import java.util.Random;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.*;

class DynamicMapTest {
    @Test
    void signedMapMatchesPublishedValues() {
        float[] m = DynamicMap.signed();
        assertEquals(256, m.length);
        for (int i = 1; i < 256; i++) assertTrue(m[i - 1] <= m[i], "sorted at " + i);
        // entries of create_dynamic_map(signed=True) as printed from torch (float32 shown as Python floats)
        int[] idx = {0, 1, 20, 107, 117, 127, 128, 129, 131, 143, 149, 176, 190, 191, 240, 254, 255};
        double[] expected = {-0.992968738079071, -0.9789062738418579, -0.7117187976837158, -0.0035312497057020664,
            -0.0003812500217463821, 0.0, 5.500000384017767e-07, 3.250000190746505e-06, 2.1249998098937795e-05,
            0.001281249918974936, 0.0046562496572732925, 0.05921875312924385, 0.09859374910593033,
            0.10703125596046448, 0.796093761920929, 0.992968738079071, 1.0};
        for (int i = 0; i < idx.length; i++) assertEquals(expected[i], (double) m[idx[i]], 0.0, "map[" + idx[i] + "]");
        // the negative half mirrors the positive half (1.0 has no mirror; 0 sits at 127)
        for (int i = 0; i < 127; i++) assertEquals(-m[254 - i], m[i], 0f);
        // sum of |values| of the published table
        double abs = 0;
        for (float v : m) abs += Math.abs(v);
        assertEquals(75.10526317200026, abs, 1e-9);
    }

    @Test
    void unsignedMapHas256SortedValuesInZeroOne() {
        float[] m = DynamicMap.create(false);
        assertEquals(256, m.length);
        assertEquals(0f, m[0]);
        assertEquals(1f, m[255]);
        for (int i = 1; i < 256; i++) assertTrue(m[i - 1] < m[i], "strictly increasing at " + i);
    }

    @Test
    void badParametersAreRejected() {
        assertThrows(IllegalArgumentException.class, () -> DynamicMap.create(true, 8, 8));
        assertThrows(IllegalArgumentException.class, () -> DynamicMap.create(true, 7, 9));
    }

    @Test
    void kernelSearchIsNearestWithTiesToTheEvenIndex() {
        float[] code = DynamicMap.signed();
        // codes map to themselves; the ends saturate
        for (int i = 0; i < 256; i++) assertEquals(i, DynamicMap.quantize(code, code[i]), "code " + i);
        assertEquals(0, DynamicMap.quantize(code, -1f));
        assertEquals(255, DynamicMap.quantize(code, 2f));
        assertEquals(0, DynamicMap.quantize(code, Float.NaN), "NaN walks left to index 0");
        // every float32 midpoint and random values against an independent linear scan
        for (int i = 0; i < 255; i++) {
            float mid = (code[i] + code[i + 1]) * 0.5f;
            assertEquals(reference(code, mid), DynamicMap.quantize(code, mid), "midpoint " + i);
            assertEquals(reference(code, Math.nextUp(mid)), DynamicMap.quantize(code, Math.nextUp(mid)));
            assertEquals(reference(code, Math.nextDown(mid)), DynamicMap.quantize(code, Math.nextDown(mid)));
        }
        SplittableRandom r = new SplittableRandom(7);
        for (int t = 0; t < 20000; t++) {
            float x = (float) (r.nextDouble() * 2 - 1) * (float) Math.pow(10, -r.nextInt(7));
            assertEquals(reference(code, x), DynamicMap.quantize(code, x), "x = " + x);
        }
    }

    // bitsandbytes' 8-bit optimizers: state1 against the signed map, state2 against the unsigned one

    @Test
    void signedOptimizerMapShape() {
        float[] c = DynamicMap.create(true);
        assertEquals(256, c.length);
        for (int i = 1; i < 256; i++) assertTrue(c[i] > c[i - 1], "strictly increasing at " + i);
        assertEquals(0f, c[127]);
        assertEquals(1f, c[255]);
        // smallest magnitude: mean of linspace(0.1, 1, 2) = 0.55 scaled by 1e-6
        assertEquals(5.5e-7, c[128], 1e-13);
        assertEquals(-5.5e-7, c[126], 1e-13);
        // largest below 1: mean of the last two of linspace(0.1, 1, 65) = 1 - 0.9/128
        assertEquals(0.99296875, c[254], 1e-7);
        assertEquals(-c[254], c[0]);
        for (int i = 0; i < 127; i++) assertEquals(-c[254 - i], c[i], "negatives mirror positives");
    }

    @Test
    void unsignedOptimizerMapShape() {
        float[] c = DynamicMap.create(false);
        assertEquals(256, c.length);
        for (int i = 1; i < 256; i++) assertTrue(c[i] > c[i - 1], "strictly increasing at " + i);
        assertEquals(0f, c[0]);
        assertEquals(1f, c[255]);
        assertEquals(3.25e-7, c[1], 1e-13);          // linspace(0.1,1,3) means 0.325, 0.775 at 1e-6
        assertEquals(7.75e-7, c[2], 1e-13);
        assertEquals(1 - 0.9 / 256, c[254], 1e-7);   // 129 boundaries: last mean 1 - 0.9/256
        assertEquals(0.1 + 0.9 / 256, c[255 - 128], 1e-7); // first mean of the [0.1, 1] decade
    }

    @Test
    void optimizerMapsRoundTripAndNearestCode() {
        for (boolean signed : new boolean[] {true, false}) {
            float[] c = DynamicMap.create(signed);
            for (int i = 0; i < 256; i++) assertEquals(i, DynamicMap.quantize(c, c[i]), "code " + i + " maps to itself");
            Random r = new Random(3);
            for (int t = 0; t < 20000; t++) {
                // log-uniform magnitudes so every decade of the map is exercised
                float x = (float) Math.pow(10, -7 * r.nextDouble());
                if (signed && r.nextBoolean()) x = -x;
                int q = DynamicMap.quantize(c, x);
                float best = Float.MAX_VALUE;
                for (float v : c) best = Math.min(best, Math.abs(v - x));
                assertEquals(best, Math.abs(c[q] - x), Math.ulp(x) * 2, "x=" + x + " got code " + q);
            }
        }
    }

    @Test
    void linspaceMatchesTorchEndpoints() {
        float[] l = DynamicMap.linspace(0.1f, 1.0f, 5);
        assertEquals(0.1f, l[0]);
        assertEquals(1.0f, l[4]);
        assertEquals(0.55f, l[2], 1e-7f);
    }

    /** Nearest code; on an exact float32 midpoint the even index (the leaf where the kernel's search ends). */
    private static int reference(float[] code, float x) {
        if (x <= code[0]) return 0;
        if (x >= code[255]) return 255;
        int i = 0;
        while (!(code[i] <= x && x < code[i + 1])) i++;
        float mid = (code[i] + code[i + 1]) * 0.5f;
        if (x > mid) return i + 1;
        if (x < mid) return i;
        return (i % 2 == 0) ? i : i + 1;
    }
}
