package dev.qlora4j.optim;

import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.List;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

class AdamWTest {
    /** float64 torch.optim.AdamW: decay first, then moments, bias-corrected step. */
    static final class Reference {
        final double[] p, m, v;
        long step;

        Reference(float[] init) {
            p = new double[init.length];
            for (int i = 0; i < init.length; i++) p[i] = init[i];
            m = new double[init.length];
            v = new double[init.length];
        }

        void step(float[] g, double lr, double b1, double b2, double eps, double wd) {
            step++;
            double bc1 = 1 - Math.pow(b1, step), bc2 = 1 - Math.pow(b2, step);
            for (int i = 0; i < p.length; i++) {
                p[i] *= 1 - lr * wd;
                m[i] = b1 * m[i] + (1 - b1) * g[i];
                v[i] = b2 * v[i] + (1 - b2) * (double) g[i] * g[i];
                p[i] -= lr / bc1 * m[i] / (Math.sqrt(v[i]) / Math.sqrt(bc2) + eps);
            }
        }
    }

    static float[] gaussian(Random r, int n, double scale) {
        float[] a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float) (r.nextGaussian() * scale);
        return a;
    }

    @Test
    void firstStepMatchesHandComputedValue() {
        // step 1: m_hat = g and v_hat = g^2, so p -= lr * g / (|g| + eps) = lr * sign(g) (eps negligible)
        float[] p = {1.0f, -2.0f};
        float[] g = {0.5f, -3.0f};
        AdamW opt = AdamW.of(List.of(Param.of("w", p, g)), new AdamWConfig(0.1, 0.9, 0.999, 1e-8, 0.0, null));
        opt.step();
        assertEquals(0.9f, p[0], 1e-6f);
        assertEquals(-1.9f, p[1], 1e-6f);
        // with weight decay 0.5: p *= (1 - 0.1*0.5) first -> 0.95 - 0.1 = 0.85
        float[] q = {1.0f};
        AdamW.of(List.of(Param.of("w", q, new float[] {0.5f})), new AdamWConfig(0.1, 0.9, 0.999, 1e-8, 0.5, null)).step();
        assertEquals(0.85f, q[0], 1e-6f);
    }

    @Test
    void tenStepsMatchFloat64ReferenceWithAndWithoutWeightDecay() {
        for (double wd : new double[] {0.0, 0.01, 0.1}) {
            Random r = new Random(42);
            int[] sizes = {7, 300, 1025};
            List<Param> params = new ArrayList<>();
            List<float[]> values = new ArrayList<>(), grads = new ArrayList<>();
            List<Reference> refs = new ArrayList<>();
            for (int k = 0; k < sizes.length; k++) {
                float[] v = gaussian(r, sizes[k], 1.0);
                float[] g = new float[sizes[k]];
                values.add(v);
                grads.add(g);
                refs.add(new Reference(v));
                params.add(Param.of("layer" + k + ".weight", v, g));
            }
            double lr = 2e-2;
            AdamW opt = AdamW.of(params, new AdamWConfig(lr, 0.9, 0.999, 1e-8, wd, StateStorage.DEVICE));
            for (int step = 0; step < 10; step++) {
                for (int k = 0; k < sizes.length; k++) {
                    float[] g = gaussian(r, sizes[k], 0.1 * (k + 1));
                    System.arraycopy(g, 0, grads.get(k), 0, g.length);
                    refs.get(k).step(g, lr, 0.9, 0.999, 1e-8, wd);
                }
                opt.step();
            }
            double maxErr = 0;
            for (int k = 0; k < sizes.length; k++) {
                for (int i = 0; i < sizes[k]; i++) maxErr = Math.max(maxErr, Math.abs(values.get(k)[i] - refs.get(k).p[i]));
            }
            // float32 rounding of p (|p| ~ 1..4, ulp ~ 2.4e-7) over 10 steps; the updates themselves are ~2e-2
            assertEquals(0, maxErr, 2e-6, "wd=" + wd);
        }
    }

    @Test
    void splitGroupsDecayOnlyWeightsAndSkipParamsWithoutGrad() {
        float[] w = {1f}, b = {1f}, n = {1f}, frozen = {1f};
        float[] zero = {0f};
        List<Param> ps = List.of(Param.of("q_proj.weight", w, zero.clone()), Param.of("q_proj.bias", b, zero.clone()),
                Param.of("model.norm.weight", n, zero.clone()), Param.of("frozen.weight", frozen, null));
        AdamW opt = new AdamW(ParamGroups.split(ps, 0.5), AdamWConfig.torchDefaults().withLr(0.1));
        opt.step();
        // zero gradient: only the decoupled decay moves the parameter
        assertEquals(0.95f, w[0], 1e-7f);
        assertEquals(1f, b[0]);
        assertEquals(1f, n[0]);
        assertEquals(1f, frozen[0]);
        assertEquals(3 * 3, opt.stateDict().size(), "exp_avg, exp_avg_sq, step for the three params with grads");
    }

    @Test
    void rejectsBadHyperparametersAndDuplicateParams() {
        assertThrows(IllegalArgumentException.class, () -> new AdamWConfig(-1, 0.9, 0.999, 1e-8, 0, null));
        assertThrows(IllegalArgumentException.class, () -> new AdamWConfig(1e-3, 1.0, 0.999, 1e-8, 0, null));
        Param p = Param.of("x", new float[1], new float[1]);
        var e = assertThrows(IllegalArgumentException.class, () -> new AdamW(
                List.of(new ParamGroup(List.of(p), 0), new ParamGroup(List.of(p), 0)), AdamWConfig.torchDefaults()));
        assertEquals(true, e.getMessage().contains("'x'"));
        assertThrows(IllegalArgumentException.class, () -> AdamW.of(List.of(), AdamWConfig.torchDefaults()));
    }

    @Test
    void defaultsFollowTorchAndTrainingArguments() {
        assertEquals(0.01, AdamWConfig.torchDefaults().weightDecay());
        assertEquals(1e-3, AdamWConfig.torchDefaults().lr());
        assertEquals(0.0, AdamWConfig.trainingArgumentsDefaults().weightDecay());
        assertEquals(5e-5, AdamWConfig.trainingArgumentsDefaults().lr());
    }
}
