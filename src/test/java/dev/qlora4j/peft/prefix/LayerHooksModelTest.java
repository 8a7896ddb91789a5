package dev.qlora4j.peft.prefix;

import dev.qlora4j.CausalLM;
import dev.qlora4j.Golden;
import dev.qlora4j.LoadOptions;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.BottleneckAdapter;
import dev.qlora4j.peft.BottleneckModel;
import dev.qlora4j.peft.LayerHooks;
import dev.qlora4j.peft.TrainableTensor;
import dev.qlora4j.peft.config.BottleneckConfig;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.*;

/**
 * LayerHooks wired into the decoder (cache forward, training forward and backward): bottleneck
 * adapters attached to the golden llama-f32 change its outputs the same way on both paths, and their
 * gradients through the whole model match central finite differences of the model's loss.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class LayerHooksModelTest {
    static final int[] IDS = {1, 292, 398, 286, 332, 305, 294, 386, 226};

    private CausalLM lm;

    @BeforeAll
    void load() { lm = CausalLM.fromPretrained(Golden.dir("llama-f32"), LoadOptions.cpu()); }

    @AfterAll
    void close() { lm.close(); }

    static BottleneckConfig config(boolean parallel, BottleneckConfig.Scaling scaling) {
        return new BottleneckConfig(4, 16, "gelu", true, true, parallel, scaling, false, true, true, false, false, "bert", 0,
                null, "CAUSAL_LM", null, null, false, Map.of());
    }

    /** Adapters with weights large enough to matter (bert init is N(0, 0.02)). */
    BottleneckModel adapters(boolean parallel, BottleneckConfig.Scaling scaling, long seed) {
        TransformerLM m = lm.model();
        BottleneckModel bm = BottleneckModel.create(config(parallel, scaling), m.backend(), m.numLayers(), m.config().hiddenSize(), seed);
        SplittableRandom rng = new SplittableRandom(seed);
        for (Param p : bm.trainableParameters()) {
            if (p.name().endsWith("scaling")) continue;
            TrainableTensor t = tensor(bm, p.name());
            float[] v = new float[(int) t.numel()];
            for (int i = 0; i < v.length; i++) v[i] = (float) (rng.nextGaussian() * 0.3);
            t.setHostValues(m.backend(), v);
        }
        return bm;
    }

    /** The TrainableTensor behind a parameter name "...layers.N.<kind>.<down|up>.<weight|bias>|scaling". */
    static TrainableTensor tensor(BottleneckModel bm, String name) {
        String[] parts = name.split("\\.");
        int layer = -1;
        for (int i = 0; i < parts.length; i++) if (parts[i].equals("layers")) layer = Integer.parseInt(parts[i + 1]);
        BottleneckAdapter a = name.contains(BottleneckModel.ATTENTION) ? bm.attentionAdapter(layer) : bm.outputAdapter(layer);
        if (name.endsWith("down.weight")) return a.down();
        if (name.endsWith("down.bias")) return a.downBias();
        if (name.endsWith("up.weight")) return a.up();
        if (name.endsWith("up.bias")) return a.upBias();
        return a.learnedScaling();
    }

    static int[] positions() {
        int[] p = new int[IDS.length];
        for (int i = 0; i < p.length; i++) p[i] = i;
        return p;
    }

    static int[] targets() {
        int[] t = new int[IDS.length];
        for (int i = 0; i < t.length; i++) t[i] = i + 1 < IDS.length ? IDS[i + 1] : -100;
        return t;
    }

    double evalLoss() {
        return lm.model().evalStep(IDS, positions(), null, targets(), 1).sum();
    }

    @Test
    void noneHooksChangeNothingAndAdaptersChangeBothPaths() {
        TransformerLM m = lm.model();
        assertSame(LayerHooks.NONE, m.hooks());
        float[] base = PrefixPromptGoldenTest.flat(lm.logits(IDS), 0);
        double baseLoss = evalLoss();
        for (boolean parallel : new boolean[] {false, true}) {
            try (BottleneckModel bm = adapters(parallel, BottleneckConfig.Scaling.fixed(0.7), 11)) {
                m.setHooks(bm);
                float[] adapted = PrefixPromptGoldenTest.flat(lm.logits(IDS), 0);
                double maxChange = 0;
                for (int i = 0; i < base.length; i++) maxChange = Math.max(maxChange, Math.abs(adapted[i] - base[i]));
                assertTrue(maxChange > 0.05, "parallel=" + parallel + ": adapters moved the logits by only " + maxChange);
                // the training forward (evalStep) and the cache forward (LossEvaluator) agree with the hooks on
                double cacheLoss = lm.loss(IDS).sum(), trainLoss = evalLoss();
                assertEquals(cacheLoss, trainLoss, Math.abs(cacheLoss) * 1e-5, "parallel=" + parallel);
                assertNotEquals(baseLoss, trainLoss, Math.abs(baseLoss) * 1e-3);
            } finally {
                m.setHooks(null);
            }
        }
        assertSame(LayerHooks.NONE, m.hooks());
        assertArrayEquals(base, PrefixPromptGoldenTest.flat(lm.logits(IDS), 0), "detached hooks restore the base bit for bit");
        assertEquals(baseLoss, evalLoss(), 0.0);
    }

    @Test
    void adapterGradientsThroughTheModelMatchFiniteDifferences() {
        TransformerLM m = lm.model();
        for (boolean parallel : new boolean[] {false, true}) {
            try (BottleneckModel bm = adapters(parallel, BottleneckConfig.Scaling.learnedScalar(), 5)) {
                m.setHooks(bm);
                m.trainStep(IDS, positions(), null, targets(), 1, false, 1f);
                List<Param> params = bm.trainableParameters();
                List<float[]> grads = new ArrayList<>();
                for (Param p : params) grads.add(m.backend().toHost(p.grad()).toFloatArray().clone());
                // checkpointing re-runs each layer's forward, hooks included: same gradients
                bm.zeroGrad();
                m.trainStep(IDS, positions(), null, targets(), 1, true, 1f);
                for (int i = 0; i < params.size(); i++) {
                    assertArrayEquals(grads.get(i), m.backend().toHost(params.get(i).grad()).toFloatArray(), 1e-6f,
                            "checkpointed gradient of " + params.get(i).name());
                }
                int checked = 0;
                double worst = 0;
                for (int i = 0; i < params.size(); i++) {
                    String name = params.get(i).name();
                    // a spread of tensors: every layer's attention adapter and the last output adapter, all parts
                    if (!(name.contains(BottleneckModel.ATTENTION) || name.contains("layers.2."))) continue;
                    TrainableTensor t = tensor(bm, name);
                    float[] g = grads.get(i);
                    int at = argmaxAbs(g);
                    double fd = finiteDifference(t, at);
                    double err = Math.abs(fd - g[at]) / Math.max(Math.abs(fd), 1e-3);
                    worst = Math.max(worst, err);
                    assertTrue(err < 1e-2, "parallel=" + parallel + " " + name + "[" + at + "]: backward " + g[at] + " vs finite difference " + fd);
                    checked++;
                }
                System.out.printf("bottleneck parallel=%s: %d gradients vs finite differences, worst rel error %.3g%n", parallel, checked, worst);
                assertTrue(checked >= 10);
            } finally {
                m.setHooks(null);
            }
        }
    }

    static int argmaxAbs(float[] g) {
        int best = 0;
        for (int i = 1; i < g.length; i++) if (Math.abs(g[i]) > Math.abs(g[best])) best = i;
        return best;
    }

    /** d(sum of token losses)/d t[at] by central differences on the float32 model, summed in float64. */
    double finiteDifference(TrainableTensor t, int at) {
        var b = lm.model().backend();
        float[] v = t.hostValues(b);
        float orig = v[at];
        double h = 3e-3 * Math.max(1, Math.abs(orig));
        v[at] = (float) (orig + h);
        t.setHostValues(b, v);
        double plus = evalLoss();
        v[at] = (float) (orig - h);
        t.setHostValues(b, v);
        double minus = evalLoss();
        v[at] = orig;
        t.setHostValues(b, v);
        float hp = (float) (orig + h), hm = (float) (orig - h); // the steps actually taken in float32
        return (plus - minus) / ((double) hp - hm);
    }
}
