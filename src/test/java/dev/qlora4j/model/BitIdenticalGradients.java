package dev.qlora4j.model;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.optim.Param;

import java.util.List;

/** Two training steps that must agree bit for bit: the same loss and the same gradient of every parameter. */
public final class BitIdenticalGradients {
    private BitIdenticalGradients() {}

    /** grads: one host copy per parameter of params, in order; at least one gradient value must be non-zero. */
    public static void assertSame(double expectedLoss, List<float[]> expectedGrads, double actualLoss,
                                  List<float[]> actualGrads, List<Param> params, String what) {
        assertEquals(Double.doubleToRawLongBits(expectedLoss), Double.doubleToRawLongBits(actualLoss),
                what + ": loss " + expectedLoss + " vs " + actualLoss);
        assertEquals(expectedGrads.size(), actualGrads.size());
        int nonZero = 0;
        for (int i = 0; i < expectedGrads.size(); i++) {
            float[] e = expectedGrads.get(i), a = actualGrads.get(i);
            assertEquals(e.length, a.length);
            for (int j = 0; j < e.length; j++) {
                if (Float.floatToRawIntBits(e[j]) != Float.floatToRawIntBits(a[j])) {
                    throw new AssertionError(what + ": gradient of " + params.get(i).name() + "[" + j + "] " + e[j] + " vs " + a[j]);
                }
                if (e[j] != 0) nonZero++;
            }
        }
        assertTrue(nonZero > 0, what + ": the gradients are not all zero");
    }
}
