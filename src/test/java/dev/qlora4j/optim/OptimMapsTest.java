package dev.qlora4j.optim;

import org.junit.jupiter.api.Test;

import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

class OptimMapsTest {
    @Test
    void signedMapShape() {
        float[] c = OptimMaps.dynamic(true);
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
    void unsignedMapShape() {
        float[] c = OptimMaps.dynamic(false);
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
    void encodeDecodeRoundTripAndNearestCode() {
        for (boolean signed : new boolean[] {true, false}) {
            float[] c = OptimMaps.dynamic(signed);
            for (int i = 0; i < 256; i++) assertEquals(i, OptimMaps.quantize(c, c[i], signed), "code " + i + " maps to itself");
            Random r = new Random(3);
            for (int t = 0; t < 20000; t++) {
                // log-uniform magnitudes so every decade of the map is exercised
                float x = (float) Math.pow(10, -7 * r.nextDouble());
                if (signed && r.nextBoolean()) x = -x;
                int q = OptimMaps.quantize(c, x, signed);
                float best = Float.MAX_VALUE;
                for (float v : c) best = Math.min(best, Math.abs(v - x));
                assertEquals(best, Math.abs(c[q] - x), Math.ulp(x) * 2, "x=" + x + " got code " + q);
            }
        }
    }

    @Test
    void linspaceMatchesTorchEndpoints() {
        float[] l = OptimMaps.linspace(0.1f, 1.0f, 5);
        assertEquals(0.1f, l[0]);
        assertEquals(1.0f, l[4]);
        assertEquals(0.55f, l[2], 1e-7f);
    }
}
