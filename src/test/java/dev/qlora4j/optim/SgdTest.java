package dev.qlora4j.optim;

import org.junit.jupiter.api.Test;

import java.util.List;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

class SgdTest {
    /** float64 torch.optim.SGD. */
    static void referenceStep(double[] p, double[] buf, float[] g, double lr, double mom, double damp, boolean nesterov, double wd, boolean first) {
        for (int i = 0; i < p.length; i++) {
            double d = g[i] + wd * p[i];
            if (mom != 0) {
                buf[i] = first ? d : buf[i] * mom + (1 - damp) * d;
                d = nesterov ? d + mom * buf[i] : buf[i];
            }
            p[i] -= lr * d;
        }
    }

    @Test
    void momentumMatchesFloat64ReferenceOverTenSteps() {
        for (boolean nesterov : new boolean[] {false, true}) {
            for (double wd : new double[] {0.0, 0.05}) {
                Random r = new Random(7);
                int n = 500;
                float[] p = AdamWTest.gaussian(r, n, 1.0);
                float[] g = new float[n];
                double[] ref = new double[n];
                for (int i = 0; i < n; i++) ref[i] = p[i];
                double[] buf = new double[n];
                Sgd opt = Sgd.of(List.of(Param.of("w", p, g)), new SgdConfig(0.05, 0.9, 0, nesterov, wd));
                for (int s = 0; s < 10; s++) {
                    float[] gs = AdamWTest.gaussian(r, n, 0.5);
                    System.arraycopy(gs, 0, g, 0, n);
                    referenceStep(ref, buf, gs, 0.05, 0.9, 0, nesterov, wd, s == 0);
                    opt.step();
                }
                for (int i = 0; i < n; i++) assertEquals(ref[i], p[i], 2e-6, "nesterov=" + nesterov + " wd=" + wd + " i=" + i);
            }
        }
    }

    @Test
    void handComputedTwoSteps() {
        // p=1, g=1, lr=0.1, momentum 0.9: step1 buf=1 -> p=0.9; step2 buf=0.9+1=1.9 -> p=0.71
        float[] p = {1f};
        float[] g = {1f};
        Sgd opt = Sgd.of(List.of(Param.of("w", p, g)), SgdConfig.momentum(0.1, 0.9));
        opt.step();
        assertEquals(0.9f, p[0], 1e-7f);
        opt.step();
        assertEquals(0.71f, p[0], 1e-6f);
        assertEquals(1.9f, opt.stateDict().get("state.w.momentum_buffer").getFloat(0), 1e-6f);
    }

    @Test
    void plainSgdKeepsNoState() {
        float[] p = {1f};
        Sgd opt = Sgd.of(List.of(Param.of("w", p, new float[] {2f})), new SgdConfig(0.25, 0, 0, false, 0));
        opt.step();
        assertEquals(0.5f, p[0]);
        assertEquals(0, opt.stateDict().size());
        assertThrows(IllegalArgumentException.class, () -> new SgdConfig(0.1, 0, 0, true, 0));
    }
}
