package dev.qlora4j.optim;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.util.List;
import java.util.Map;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

class AdamW8bitTest {
    static final double LR = 1e-2, B1 = 0.9, B2 = 0.999, EPS = 1e-8;

    /** float64 bitsandbytes Adam: moments, bias-corrected step, then weight decay p *= 1 - lr*wd. */
    static final class BnbReference {
        final double[] p, m, v;
        long step;

        BnbReference(float[] init) {
            p = new double[init.length];
            for (int i = 0; i < init.length; i++) p[i] = init[i];
            m = new double[init.length];
            v = new double[init.length];
        }

        void step(float[] g, double wd) {
            step++;
            double c1 = 1 - Math.pow(B1, step), c2 = Math.sqrt(1 - Math.pow(B2, step));
            for (int i = 0; i < p.length; i++) {
                m[i] = B1 * m[i] + (1 - B1) * g[i];
                v[i] = B2 * v[i] + (1 - B2) * (double) g[i] * g[i];
                p[i] += -LR * c2 / c1 * m[i] / (Math.sqrt(v[i]) + c2 * EPS);
                p[i] *= 1 - LR * wd;
            }
        }
    }

    private static AdamW8bitConfig config(double wd) {
        return new AdamW8bitConfig(LR, B1, B2, EPS, wd, 4096, StateStorage.DEVICE);
    }

    @Test
    void firstStepSetsBlockAbsmaxFromTheUpdatedMoments() {
        Random r = new Random(1);
        int n = 4096;
        float[] p = AdamWTest.gaussian(r, n, 1);
        float[] g = AdamWTest.gaussian(r, n, 1);
        AdamW8bit opt = AdamW8bit.of(List.of(Param.of("w", p, g)), config(0));
        opt.step();
        Map<String, Tensor> sd = opt.stateDict();
        assertEquals(DType.U8, sd.get("state.w.state1").dtype());
        float[] absmax1 = sd.get("state.w.absmax1").toFloatArray();
        float[] absmax2 = sd.get("state.w.absmax2").toFloatArray();
        assertEquals(16, absmax1.length);
        for (int b = 0; b < 16; b++) {
            float max1 = 0, max2 = 0;
            for (int j = b * 256; j < b * 256 + 256; j++) {
                max1 = Math.max(max1, Math.abs((1.0f - 0.9f) * g[j]));
                max2 = Math.max(max2, (1.0f - 0.999f) * g[j] * g[j]);
            }
            assertEquals(max1, absmax1[b], 0f, "block " + b);
            assertEquals(max2, absmax2[b], 0f, "block " + b);
        }
        // the element holding a block's absmax is stored as the end of the map (+1 -> code 255, -1 -> code 0)
        byte[] q1 = sd.get("state.w.state1").segment().toArray(java.lang.foreign.ValueLayout.JAVA_BYTE);
        for (int j = 0; j < 256; j++) {
            if (Math.abs((1.0f - 0.9f) * g[j]) == absmax1[0]) assertEquals(g[j] > 0 ? 255 : 0, q1[j] & 0xFF);
        }
    }

    @Test
    void eightBitUpdateStaysCloseToFloat64Adam() {
        for (double wd : new double[] {0.0, 0.01}) {
            Random r = new Random(11);
            int n = 5000; // 19 full blocks and a partial one of 136
            float[] p = AdamWTest.gaussian(r, n, 1);
            float[] g = new float[n];
            BnbReference ref = new BnbReference(p);
            AdamW8bit opt = AdamW8bit.of(List.of(Param.of("w", p, g)), config(wd));
            int steps = 5;
            for (int s = 0; s < steps; s++) {
                float[] gs = AdamWTest.gaussian(r, n, 0.1);
                System.arraycopy(gs, 0, g, 0, n);
                ref.step(gs, wd);
                opt.step();
            }
            assertTrue(opt.hasEightBitState("w"));
            // parameter error relative to the total distance moved (~ lr * steps)
            double maxErr = 0, sumErr = 0;
            for (int i = 0; i < n; i++) {
                double e = Math.abs(p[i] - ref.p[i]);
                maxErr = Math.max(maxErr, e);
                sumErr += e;
            }
            double moved = LR * steps;
            // measured: max 2.6%, mean 0.39% of the distance moved (seed 11)
            assertTrue(maxErr < 0.05 * moved, "max parameter error " + maxErr + " vs distance moved " + moved);
            assertTrue(sumErr / n < 0.008 * moved, "mean parameter error " + sumErr / n);

            // state error: dequantized moments against the float64 ones, relative to each block's absmax
            Map<String, Tensor> sd = opt.stateDict();
            byte[] q1 = sd.get("state.w.state1").segment().toArray(java.lang.foreign.ValueLayout.JAVA_BYTE);
            byte[] q2 = sd.get("state.w.state2").segment().toArray(java.lang.foreign.ValueLayout.JAVA_BYTE);
            float[] a1 = sd.get("state.w.absmax1").toFloatArray();
            float[] a2 = sd.get("state.w.absmax2").toFloatArray();
            float[] c1 = BnbAdamKernels.codeTable(true), c2 = BnbAdamKernels.codeTable(false);
            double worst1 = 0, worst2 = 0;
            for (int i = 0; i < n; i++) {
                int b = i / 256;
                worst1 = Math.max(worst1, Math.abs(c1[q1[i] & 0xFF] * a1[b] - ref.m[i]) / a1[b]);
                worst2 = Math.max(worst2, Math.abs(c2[q2[i] & 0xFF] * a2[b] - ref.v[i]) / a2[b]);
            }
            // one quantization is at most half the widest code gap (0.9/64/2 ~ 0.007 signed, 0.0035 unsigned);
            // errors of earlier steps decay by beta but add up; measured 0.020 and 0.012
            assertTrue(worst1 < 0.03, "state1 error / absmax = " + worst1);
            assertTrue(worst2 < 0.02, "state2 error / absmax = " + worst2);
        }
    }

    @Test
    void smallTensorsKeepExactFloat32State() {
        Random r = new Random(5);
        int n = 4095;
        float[] p = AdamWTest.gaussian(r, n, 1);
        float[] g = new float[n];
        BnbReference ref = new BnbReference(p);
        AdamW8bit opt = AdamW8bit.of(List.of(Param.of("lora_A.weight", p, g)), config(0.01));
        for (int s = 0; s < 10; s++) {
            float[] gs = AdamWTest.gaussian(r, n, 0.1);
            System.arraycopy(gs, 0, g, 0, n);
            ref.step(gs, 0.01);
            opt.step();
        }
        Map<String, Tensor> sd = opt.stateDict();
        assertEquals(DType.F32, sd.get("state.lora_A.weight.state1").dtype());
        assertNull(sd.get("state.lora_A.weight.absmax1"));
        float[] m = sd.get("state.lora_A.weight.state1").toFloatArray();
        for (int i = 0; i < n; i++) {
            assertEquals(ref.p[i], p[i], 2e-6, "param " + i);
            assertEquals(ref.m[i], m[i], 1e-7, "state1 " + i);
        }
    }

    @Test
    void nonFiniteGradientZeroesStateAndKeepsParameter() {
        Random r = new Random(9);
        int n = 4096;
        float[] p = AdamWTest.gaussian(r, n, 1);
        float[] g = AdamWTest.gaussian(r, n, 0.1);
        g[3] = Float.NaN;
        g[700] = Float.POSITIVE_INFINITY;
        float p3 = p[3], p700 = p[700];
        AdamW8bit opt = AdamW8bit.of(List.of(Param.of("w", p, g)), config(0.01));
        opt.step();
        assertEquals(p3, p[3]);
        assertEquals(p700, p[700]);
        Map<String, Tensor> sd = opt.stateDict();
        float[] c1 = BnbAdamKernels.codeTable(true), c2 = BnbAdamKernels.codeTable(false);
        assertEquals(0f, c1[sd.get("state.w.state1").getInt(3) & 0xFF]);
        assertEquals(0f, c2[sd.get("state.w.state2").getInt(700) & 0xFF]);
        assertTrue(p[4] != AdamWTest.gaussian(new Random(9), n, 1)[4], "finite neighbours are updated");
    }

    @Test
    void pagedStorageComputesTheSame() {
        Random r = new Random(2);
        float[] p1 = AdamWTest.gaussian(r, 6000, 1);
        float[] p2 = p1.clone();
        float[] g = AdamWTest.gaussian(r, 6000, 0.1);
        AdamW8bit a = AdamW8bit.of(List.of(Param.of("w", p1, g)), AdamW8bitConfig.bnbDefaults());
        AdamW8bit b = AdamW8bit.of(List.of(Param.of("w", p2, g.clone())), AdamW8bitConfig.pagedBnbDefaults());
        for (int s = 0; s < 3; s++) {
            a.step();
            b.step();
        }
        assertArrayEquals(p1, p2);
        assertEquals(StateStorage.PAGED, b.config().storage());
    }
}
