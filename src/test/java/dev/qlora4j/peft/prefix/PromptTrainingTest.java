package dev.qlora4j.peft.prefix;

import dev.qlora4j.CausalLM;
import dev.qlora4j.Golden;
import dev.qlora4j.LoadOptions;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.config.PeftConfigs;
import dev.qlora4j.peft.config.PromptTuningConfig;
import dev.qlora4j.train.Batch;
import dev.qlora4j.train.Collator;
import dev.qlora4j.train.Example;
import dev.qlora4j.train.PromptTuningTrainableModel;
import dev.qlora4j.train.TrainRow;
import dev.qlora4j.train.VirtualTokenBatches;
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
 * Prompt tuning training on the golden llama-f32: virtual tokens before every example (packed ones
 * included), gradients w.r.t. the prompt embeddings against central finite differences, TEXT init
 * from the token embeddings, and save -> peft files -> PromptTuning.load giving the same loss.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class PromptTrainingTest {
    static final int[] IDS = LayerHooksModelTest.IDS;

    private CausalLM lm;

    @BeforeAll
    void load() { lm = CausalLM.fromPretrained(Golden.dir("llama-f32"), LoadOptions.cpu()); }

    @AfterAll
    void close() { lm.close(); }

    static Batch batchOf(int[]... examples) {
        List<Example> parts = Arrays.stream(examples).map(e -> Example.allTrained(e, 0)).toList();
        return new Collator(2).collate(List.of(new TrainRow(parts)));
    }

    @Test
    void virtualTokensGoBeforeEveryExample() {
        Batch packed = batchOf(new int[] {5, 6, 7}, new int[] {8, 9});
        Batch b = VirtualTokenBatches.expand(packed, 2);
        assertEquals(9, b.seqLen());
        assertArrayEquals(new int[] {-1, -2, 5, 6, 7, -1, -2, 8, 9}, b.ids());
        assertArrayEquals(new int[] {0, 1, 2, 3, 4, 0, 1, 2, 3}, b.positions());
        assertArrayEquals(new int[] {0, 0, 0, 0, 0, 1, 1, 1, 1}, b.segments());
        assertArrayEquals(new int[] {-100, -100, 6, 7, -100, -100, -100, 9, -100}, b.targets());
        assertEquals(packed.tokens(), b.tokens());
        Batch single = VirtualTokenBatches.expand(batchOf(new int[] {5, 6, 7}), 2);
        assertNull(single.segments(), "one unpadded example per row needs no segments");
    }

    @Test
    void gradientsMatchFiniteDifferencesAndPackingMatchesAlone() {
        TransformerLM m = lm.model();
        try (TrainablePromptTuning p = TrainablePromptTuning.create(PromptTuningConfig.random(3), m, null, 5)) {
            // smaller than N(0, 1) so the loss is smooth in the step of the finite differences
            Param e = p.trainableParameters().get(0);
            for (long i = 0; i < e.value().numel(); i++) e.value().setFloat(i, e.value().getFloat(i) * 0.1f);
            PromptTuningTrainableModel tm = new PromptTuningTrainableModel(m, p, "llama-f32");
            Batch b = batchOf(IDS);
            tm.trainStep(b, false, 1f);
            float[] g = e.grad().toFloatArray().clone();
            double worst = 0;
            int[] picks = {LayerHooksModelTest.argmaxAbs(g), 1, 64 + 7, 2 * 64 + 30};
            for (int at : picks) {
                float orig = e.value().getFloat(at);
                double h = 1e-2;
                float hp = (float) (orig + h), hm = (float) (orig - h);
                e.value().setFloat(at, hp);
                double plus = tm.eval(b).sum();
                e.value().setFloat(at, hm);
                double minus = tm.eval(b).sum();
                e.value().setFloat(at, orig);
                double fd = (plus - minus) / ((double) hp - hm);
                double err = Math.abs(fd - g[at]) / Math.max(Math.abs(fd), 2e-3);
                worst = Math.max(worst, err);
                assertTrue(err < 2e-2, "prompt embedding [" + at + "]: backward " + g[at] + " vs finite difference " + fd);
            }
            System.out.printf("prompt tuning: %d gradients vs finite differences, worst rel error %.3g%n", picks.length, worst);
            int[] a = Arrays.copyOfRange(IDS, 0, 5), c = Arrays.copyOfRange(IDS, 4, 9);
            double alone = tm.eval(batchOf(a)).sum() + tm.eval(batchOf(c)).sum();
            assertEquals(alone, tm.eval(batchOf(a, c)).sum(), Math.abs(alone) * 1e-5, "packed examples each see their own prompt");
        }
    }

    @Test
    void textInitCopiesTokenEmbeddingsAndTheSavedAdapterReloads(@TempDir Path dir) {
        TransformerLM m = lm.model();
        PromptTuningConfig cfg = PromptTuningConfig.fromText(7, "In the beginning", Golden.dir("llama-f32").toString());
        try (TrainablePromptTuning p = TrainablePromptTuning.create(cfg, m, lm.tokenizer(), 0)) {
            int[] text = lm.tokenizer().encode("In the beginning", true);
            int[] ids = TrainablePromptTuning.textIds(text, 7);
            float[] emb = p.promptEmbeddings(), table = m.embedTokens().toFloatArray();
            int h = m.config().hiddenSize();
            for (int i = 0; i < 7; i++) {
                assertArrayEquals(Arrays.copyOfRange(table, ids[i] * h, (ids[i] + 1) * h), Arrays.copyOfRange(emb, i * h, (i + 1) * h), 0f);
            }
            assertEquals(text[0], ids[text.length % 7 == 0 ? 0 : text.length], "ids repeat when the text is shorter");
            PromptTuningTrainableModel tm = new PromptTuningTrainableModel(m, p, "llama-f32");
            double trainPath = tm.eval(batchOf(IDS)).sum();
            tm.saveAdapter(dir);
            var saved = (PromptTuningConfig) PeftConfigs.load(dir);
            assertEquals(PromptTuningConfig.Init.TEXT, saved.promptTuningInit());
            assertEquals(64, saved.tokenDim());
            assertTrue(saved.inferenceMode());
            p.detach();
            try (PromptTuning loaded = PromptTuning.load(dir, m)) {
                float[][] logits = loaded.logits(IDS);
                assertEquals(7 + IDS.length, logits.length);
                double cachePath = PrefixPromptGoldenTest.meanLoss(logits, 7, Arrays.copyOfRange(IDS, 1, IDS.length)) * (IDS.length - 1);
                assertEquals(trainPath, cachePath, Math.abs(cachePath) * 1e-5, "training rows vs peft's concatenated forward");
            }
        }
    }
}
