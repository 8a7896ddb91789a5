package dev.qlora4j.peft.prefix;

import dev.qlora4j.CausalLM;
import dev.qlora4j.Golden;
import dev.qlora4j.LoadOptions;
import dev.qlora4j.io.SafetensorsFile;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.config.PeftConfigs;
import dev.qlora4j.peft.config.PrefixTuningConfig;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;

import static org.junit.jupiter.api.Assertions.*;

/**
 * Prefix tuning training on the golden llama-f32 (4 query heads over 2 kv heads: grouped-query
 * attention): gradients of the whole model's loss w.r.t. the encoder's parameters against central
 * finite differences, the packed-row semantics (every example sees the prefix), and save -> peft
 * files -> PrefixTuning.load giving the trained model's logits and losses.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class PrefixTrainingTest {
    static final int[] IDS = LayerHooksModelTest.IDS;

    private CausalLM lm;

    @BeforeAll
    void load() { lm = CausalLM.fromPretrained(Golden.dir("llama-f32"), LoadOptions.cpu()); }

    @AfterAll
    void close() { lm.close(); }

    /** Scales the N(0, 1) init down so the prefix changes the loss smoothly (finite differences stay accurate). */
    static void scaleParams(TrainablePrefixTuning t, TransformerLM m, float s) {
        for (Param p : t.trainableParameters()) {
            float[] v = m.backend().toHost(p.value()).toFloatArray();
            for (int i = 0; i < v.length; i++) v[i] *= s;
            java.lang.foreign.MemorySegment.copy(v, 0, p.value().segment(), dev.qlora4j.tensor.Tensor.F32_LE, 0, v.length);
        }
    }

    double evalLoss(TrainablePrefixTuning t, int[] ids, int[] pos, int[] seg, int[] tgt) {
        t.beginStep(false);
        try {
            return lm.model().evalStep(ids, pos, seg, tgt, 1).sum();
        } finally {
            t.discardStep();
        }
    }

    @Test
    void gradientsMatchFiniteDifferences() {
        TransformerLM m = lm.model();
        for (boolean projection : new boolean[] {false, true}) {
            PrefixTuningConfig cfg = new PrefixTuningConfig(3, null, null, null, null, projection ? 16 : null, projection, null,
                    "CAUSAL_LM", null, null, false, java.util.Map.of());
            try (TrainablePrefixTuning t = TrainablePrefixTuning.create(cfg, m, 7)) {
                assertEquals(m.config().numKeyValueHeads() * m.config().headDim(), t.config().tokenDim(), "token_dim sized for GQA");
                assertEquals(m.config().numKeyValueHeads(), t.config().numAttentionHeads());
                if (!projection) scaleParams(t, m, 0.5f);
                t.attach();
                int[] pos = LayerHooksModelTest.positions(), tgt = LayerHooksModelTest.targets();
                t.beginStep(true);
                m.trainStep(IDS, pos, null, tgt, 1, false, 1f);
                t.endStep();
                List<Param> params = t.trainableParameters();
                float[][] grads = new float[params.size()][];
                for (int i = 0; i < params.size(); i++) grads[i] = m.backend().toHost(params.get(i).grad()).toFloatArray().clone();
                // checkpointing re-runs the layers' forward with the same prefix: same gradients
                t.zeroGrad();
                t.beginStep(true);
                m.trainStep(IDS, pos, null, tgt, 1, true, 1f);
                t.endStep();
                for (int i = 0; i < params.size(); i++) {
                    assertArrayEquals(grads[i], params.get(i).grad().toFloatArray(), 1e-5f, "checkpointed " + params.get(i).name());
                }
                double worst = 0;
                int checked = 0;
                for (int i = 0; i < params.size(); i++) {
                    float[] g = grads[i];
                    // the largest gradient, and entries in the first and last layer's key and value columns
                    int kvw = t.config().tokenDim(), layers = m.config().numHiddenLayers();
                    int[] picks = projection
                            ? new int[] {LayerHooksModelTest.argmaxAbs(g), g.length / 3}
                            : new int[] {LayerHooksModelTest.argmaxAbs(g), 1, kvw + 2, (2 * layers - 1) * kvw + 5,
                                    2 * layers * kvw + (2 * layers - 2) * kvw + 3};
                    for (int at : picks) {
                        if (at >= g.length) continue;
                        double fd = finiteDifference(t, params.get(i), at, pos, tgt);
                        double err = Math.abs(fd - g[at]) / Math.max(Math.abs(fd), 2e-3);
                        worst = Math.max(worst, err);
                        assertTrue(err < 2e-2, "projection=" + projection + " " + params.get(i).name() + "[" + at + "]: backward " + g[at]
                                + " vs finite difference " + fd);
                        checked++;
                    }
                }
                System.out.printf("prefix tuning projection=%s: %d gradients vs finite differences, worst rel error %.3g%n",
                        projection, checked, worst);
                assertTrue(checked >= 5);
            }
        }
    }

    /** d(loss sum)/d p[at] by central differences of the float32 model, in float64. */
    double finiteDifference(TrainablePrefixTuning t, Param p, int at, int[] pos, int[] tgt) {
        float[] v = p.value().toFloatArray();
        float orig = v[at];
        double h = 1e-2 * Math.max(1, Math.abs(orig));
        float hp = (float) (orig + h), hm = (float) (orig - h);
        p.value().setFloat(at, hp);
        double plus = evalLoss(t, IDS, pos, null, tgt);
        p.value().setFloat(at, hm);
        double minus = evalLoss(t, IDS, pos, null, tgt);
        p.value().setFloat(at, orig);
        return (plus - minus) / ((double) hp - hm);
    }

    @Test
    void everyPackedExampleSeesThePrefix() {
        TransformerLM m = lm.model();
        try (TrainablePrefixTuning t = TrainablePrefixTuning.create(PrefixTuningConfig.of(4, false), m, 3)) {
            scaleParams(t, m, 0.5f);
            t.attach();
            int[] a = Arrays.copyOfRange(IDS, 0, 5), c = Arrays.copyOfRange(IDS, 3, 9);
            double alone = evalLoss(t, a, range(5), null, targets(a)) + evalLoss(t, c, range(6), null, targets(c));
            int[] ids = concat(a, c), pos = concat(range(5), range(6)), tgt = concat(targets(a), targets(c));
            int[] seg = new int[11];
            for (int i = 5; i < 11; i++) seg[i] = 1;
            double packed = evalLoss(t, ids, pos, seg, tgt);
            assertEquals(alone, packed, Math.abs(alone) * 1e-5, "a packed row = its examples alone, each with the prefix");
            t.detach();
            double base = lm.model().evalStep(ids, pos, seg, tgt, 1).sum();
            assertTrue(Math.abs(base - packed) > 1e-2, "the prefix changes the loss");
        }
    }

    @Test
    void savedAdapterReloadsWithTheTrainedModelsLogits(@TempDir Path dir) throws Exception {
        TransformerLM m = lm.model();
        for (boolean projection : new boolean[] {false, true}) {
            PrefixTuningConfig cfg = new PrefixTuningConfig(5, null, null, null, null, projection ? 24 : null, projection, null,
                    "CAUSAL_LM", null, null, false, java.util.Map.of());
            Path out = dir.resolve("p" + projection);
            try (TrainablePrefixTuning t = TrainablePrefixTuning.create(cfg, m, 11)) {
                t.attach();
                int[] pos = LayerHooksModelTest.positions(), tgt = LayerHooksModelTest.targets();
                double trainPath = evalLoss(t, IDS, pos, null, tgt);
                t.detach();
                t.save(out, "llama-f32");
                float[][] inMemory;
                try (PrefixTuning live = t.toInference().attach()) {
                    inMemory = lm.logits(IDS);
                }
                // the files as peft writes them
                var saved = (PrefixTuningConfig) PeftConfigs.load(out);
                assertTrue(saved.inferenceMode());
                assertEquals(projection, saved.prefixProjection());
                assertEquals(32, saved.tokenDim()); // 2 kv heads x head_dim 16
                assertEquals(2, saved.numAttentionHeads());
                assertEquals(projection ? 24 : 32, saved.encoderHiddenSize());
                try (SafetensorsFile f = SafetensorsFile.open(out.resolve("adapter_model.safetensors"))) {
                    assertEquals(List.of("prompt_embeddings"), List.copyOf(f.names()));
                    assertArrayEquals(new int[] {5, 3 * 2 * 32}, f.tensor("prompt_embeddings").shape());
                }
                try (PrefixTuning loaded = PrefixTuning.load(out, m).attach()) {
                    float[][] reloaded = lm.logits(IDS);
                    for (int r = 0; r < IDS.length; r++) assertArrayEquals(inMemory[r], reloaded[r], 0f, "row " + r);
                    double cachePath = lm.loss(IDS).sum();
                    assertEquals(trainPath, cachePath, Math.abs(cachePath) * 1e-5, "training forward vs cache forward with the prefix");
                }
                // resume: the raw parameters come back
                try (TrainablePrefixTuning again = TrainablePrefixTuning.create(cfg, m, 99)) {
                    again.loadParameters(out);
                    assertArrayEquals(t.promptEmbeddings(), again.promptEmbeddings(), 0f);
                }
            }
        }
    }

    static int[] range(int n) {
        int[] r = new int[n];
        for (int i = 0; i < n; i++) r[i] = i;
        return r;
    }

    static int[] targets(int[] ids) {
        int[] t = new int[ids.length];
        for (int i = 0; i < t.length; i++) t[i] = i + 1 < ids.length ? ids[i + 1] : -100;
        return t;
    }

    static int[] concat(int[] a, int[] b) {
        int[] r = Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, r, a.length, b.length);
        return r;
    }
}
