package dev.qlora4j.optim;

import org.junit.jupiter.api.Test;

import java.util.List;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class GradClipTest {
    @Test
    void clipsToMaxNormAndReturnsPreClipNorm() {
        float[] g1 = {3f, 4f};
        float[] g2 = {12f};
        List<Param> ps = List.of(Param.of("a", new float[2], g1), Param.of("b", new float[1], g2), Param.of("c", new float[3], null));
        float norm = GradClip.clipByGlobalNorm(ps, 1.0);
        assertEquals(13f, norm, 0f);
        float coef = 1.0f / (13f + 1e-6f);
        assertArrayEquals(new float[] {3f * coef, 4f * coef}, g1, 0f);
        assertArrayEquals(new float[] {12f * coef}, g2, 0f);
        double after = Math.sqrt(g1[0] * g1[0] + g1[1] * g1[1] + g2[0] * g2[0]);
        assertEquals(1.0, after, 1e-6);
    }

    @Test
    void leavesSmallGradientsAlone() {
        float[] g = {0.3f, -0.4f};
        float norm = GradClip.clipByGlobalNorm(List.of(Param.of("a", new float[2], g)), 1.0);
        assertEquals(0.5f, norm, 1e-7f);
        assertArrayEquals(new float[] {0.3f, -0.4f}, g, 0f);
        assertEquals(0f, GradClip.clipByGlobalNorm(List.of(Param.of("a", new float[2], null)), 1.0));
    }

    @Test
    void nonFiniteNorm() {
        float[] g = {Float.NaN, 1f};
        var e = assertThrows(IllegalStateException.class, () -> GradClip.clipByGlobalNorm(List.of(Param.of("a", new float[2], g)), 1.0, true));
        assertTrue(e.getMessage().contains("non-finite"));
        float[] h = {Float.POSITIVE_INFINITY, 1f};
        assertTrue(Float.isInfinite(GradClip.clipByGlobalNorm(List.of(Param.of("a", new float[2], h)), 1.0)));
        assertEquals(0f, h[1], "torch applies the scale max/(inf) = 0 to the finite entries");
    }
}
