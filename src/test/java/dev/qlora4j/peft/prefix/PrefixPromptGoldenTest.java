package dev.qlora4j.peft.prefix;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.qlora4j.CausalLM;
import dev.qlora4j.Golden;
import dev.qlora4j.LoadOptions;
import dev.qlora4j.infer.GenerationResult;
import dev.qlora4j.infer.SamplingParams;
import dev.qlora4j.infer.TokenListener;
import dev.qlora4j.io.SafetensorsFile;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;

import java.io.IOException;
import java.nio.file.Path;
import java.util.Arrays;

import static org.junit.jupiter.api.Assertions.*;

/**
 * peft 0.21 prefix- and prompt-tuning adapters (tools/golden/make_peft_goldens.py, cases
 * prefix-llama and prompt-llama) on the golden llama-f32: logits and losses as peft computes them.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class PrefixPromptGoldenTest {
    /** f32 logits through the same float32 ops in another order, relative to the largest |logit|. */
    static final double LOGITS_TOL = 1e-4;
    static final double LOSS_TOL = 1e-5;

    private CausalLM lm;

    @BeforeAll
    void load() { lm = CausalLM.fromPretrained(Golden.dir("llama-f32"), LoadOptions.cpu()); }

    @AfterAll
    void close() { lm.close(); }

    static Path caseDir(String name) { return Golden.dir("llama-f32").getParent().resolve("peft").resolve(name); }

    static JsonNode json(String name) throws IOException {
        return new ObjectMapper().readTree(caseDir(name).resolve("golden.json").toFile());
    }

    static float[] flat(float[][] rows, int from) {
        int v = rows[0].length;
        float[] out = new float[(rows.length - from) * v];
        for (int i = from; i < rows.length; i++) System.arraycopy(rows[i], 0, out, (i - from) * v, v);
        return out;
    }

    /** Mean over rows r in [from, rows-1) of -log softmax(logits[r])[target(r)], in float64. */
    static double meanLoss(float[][] logits, int from, int[] targets) {
        double sum = 0;
        for (int r = from; r < logits.length - 1; r++) {
            double max = Double.NEGATIVE_INFINITY;
            for (float x : logits[r]) max = Math.max(max, x);
            double z = 0;
            for (float x : logits[r]) z += Math.exp(x - max);
            sum += Math.log(z) + max - logits[r][targets[r - from]];
        }
        return sum / (logits.length - 1 - from);
    }

    @Test
    void prefixTuningGivesPeftsLogitsAndLoss() throws IOException {
        JsonNode g = json("prefix-llama");
        JsonNode pre = g.get("prefix");
        try (PrefixTuning p = PrefixTuning.load(caseDir("prefix-llama").resolve("adapter"), lm.model()).attach();
             SafetensorsFile gt = SafetensorsFile.open(caseDir("prefix-llama").resolve("golden.safetensors"))) {
            assertEquals(pre.get("num_virtual_tokens").asInt(), p.length());
            assertEquals(pre.get("position_start").asInt(), p.positionStart(), "real tokens start at peft's recorded position");
            assertFalse(pre.get("keys_rotated").asBoolean());
            for (JsonNode pr : g.get("prompts")) {
                int[] ids = Golden.ints(pr.get("input_ids"));
                assertEquals(0, pr.get("logits_row_offset").asInt());
                float[] ours = flat(lm.logits(ids), 0);
                float[] ref = gt.tensor(pr.get("logits_key").asText()).toFloatArray();
                assertEquals(ref.length, ours.length);
                double err = Golden.maxRelError(ours, ref);
                System.out.printf("prefix-llama %s: max rel logit error %.3g%n", pr.get("logits_key").asText(), err);
                assertTrue(err <= LOGITS_TOL, "prefix " + pr.get("logits_key").asText() + " rel error " + err);
            }
            int[] ids0 = Golden.ints(g.get("prompts").get(0).get("input_ids"));
            double ref = g.get("loss_0").asDouble();
            assertEquals(ref, lm.loss(ids0).mean(), ref * LOSS_TOL, "prefix loss of prompt 0 (LossEvaluator through the prefixed cache)");
        }
        // detached: the base model again
        float[] base = flat(lm.logits(Golden.ints(g.get("prompts").get(0).get("input_ids"))), 0);
        try (SafetensorsFile bt = SafetensorsFile.open(Golden.dir("llama-f32").resolve("golden.safetensors"))) {
            assertTrue(Golden.maxRelError(base, bt.tensor("logits_0").toFloatArray()) <= LOGITS_TOL, "closing the prefix detaches it");
        }
    }

    /** The same adapter with the wrong position convention (positions from 0) must not match: positions matter. */
    @Test
    void prefixKeysAreSeenFromPositionP() throws IOException {
        JsonNode g = json("prefix-llama");
        assertTrue(g.get("checks").get("prefix_manual_max_abs_diff_positions_from_0").asDouble() > 1,
                "the golden distinguishes the position conventions");
    }

    @Test
    void prefixGenerationMatchesRecomputedGreedy() throws IOException {
        int[] prompt = Golden.ints(json("prefix-llama").get("prompts").get(0).get("input_ids"));
        int n = 8;
        try (PrefixTuning p = PrefixTuning.load(caseDir("prefix-llama").resolve("adapter"), lm.model()).attach()) {
            GenerationResult r = lm.generateIds(new int[][] {prompt}, SamplingParams.greedy(n).withMinNewTokens(n), TokenListener.NONE);
            // greedy by definition: the whole sequence recomputed each step (prefill path only)
            int[] seq = prompt.clone();
            int[] expected = new int[n];
            for (int s = 0; s < n; s++) {
                float[][] logits = lm.logits(seq);
                expected[s] = argmax(logits[logits.length - 1]);
                seq = Arrays.copyOf(seq, seq.length + 1);
                seq[seq.length - 1] = expected[s];
            }
            assertArrayEquals(expected, r.outputIds()[0], "decode steps with the prefix offset");
            int[] baseGreedy = Golden.ints(Golden.json("llama-f32").get("prompts").get(0).get("greedy_tokens"));
            assertFalse(Arrays.equals(Arrays.copyOf(baseGreedy, n), expected), "the prefix changes the continuation");

            // two unpadded rows of one length work too; a left-padded batch is refused clearly
            GenerationResult two = lm.generateIds(new int[][] {prompt, prompt}, SamplingParams.greedy(n).withMinNewTokens(n),
                    TokenListener.NONE);
            assertArrayEquals(expected, two.outputIds()[1]);
            int[] shorter = Arrays.copyOf(prompt, prompt.length - 3);
            UnsupportedOperationException e = assertThrows(UnsupportedOperationException.class, () -> lm.generateIds(
                    new int[][] {prompt, shorter}, SamplingParams.greedy(2), TokenListener.NONE));
            assertTrue(e.getMessage().contains("left-padded"), e.getMessage());
            // training would silently ignore the prefix: refused
            assertThrows(UnsupportedOperationException.class, () -> lm.model().evalStep(prompt, new int[prompt.length], null,
                    new int[prompt.length], 1));
        }
    }

    static int argmax(float[] v) {
        int best = 0;
        for (int i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
        return best;
    }

    @Test
    void promptTuningGivesPeftsLogitsAndLoss() throws IOException {
        JsonNode g = json("prompt-llama");
        JsonNode pt = g.get("prompt_tuning");
        try (PromptTuning p = PromptTuning.load(caseDir("prompt-llama").resolve("adapter"), lm.model());
             SafetensorsFile gt = SafetensorsFile.open(caseDir("prompt-llama").resolve("golden.safetensors"))) {
            int v = pt.get("num_virtual_tokens").asInt();
            assertEquals(v, p.numVirtualTokens());
            assertEquals(0, pt.get("position_start").asInt());
            for (JsonNode pr : g.get("prompts")) {
                int[] ids = Golden.ints(pr.get("input_ids"));
                int offset = pr.get("logits_row_offset").asInt();
                assertEquals(v, offset);
                float[][] logits = p.logits(ids);
                assertEquals(pr.get("logits_rows").asInt(), logits.length);
                float[] ref = gt.tensor(pr.get("logits_key").asText()).toFloatArray();
                double err = Golden.maxRelError(flat(logits, 0), ref);
                System.out.printf("prompt-llama %s (all %d rows): max rel logit error %.3g%n", pr.get("logits_key").asText(), logits.length, err);
                assertTrue(err <= LOGITS_TOL, "prompt " + pr.get("logits_key").asText() + " rel error " + err);
            }
            // peft's loss: -100 labels on the virtual tokens, so the last virtual row predicts the BOS: T predicted tokens
            int[] ids0 = Golden.ints(g.get("prompts").get(0).get("input_ids"));
            assertEquals(ids0.length, g.get("loss_0_predicted_tokens").asInt());
            double ref = g.get("loss_0").asDouble();
            assertEquals(ref, meanLoss(p.logits(ids0), v - 1, ids0), ref * LOSS_TOL, "prompt tuning loss of prompt 0");
        }
    }

    @Test
    void attachedPromptTuningGivesTheRealTokensRowsThroughTheCache() throws IOException {
        JsonNode g = json("prompt-llama");
        try (PromptTuning p = PromptTuning.load(caseDir("prompt-llama").resolve("adapter"), lm.model()).attach();
             SafetensorsFile gt = SafetensorsFile.open(caseDir("prompt-llama").resolve("golden.safetensors"))) {
            int v = p.numVirtualTokens();
            for (JsonNode pr : g.get("prompts")) {
                int[] ids = Golden.ints(pr.get("input_ids"));
                float[] ref = gt.tensor(pr.get("logits_key").asText()).toFloatArray();
                float[] realRows = Arrays.copyOfRange(ref, v * ref.length / pr.get("logits_rows").asInt(), ref.length);
                double err = Golden.maxRelError(flat(lm.logits(ids), 0), realRows);
                System.out.printf("prompt-llama %s via cache prefix (last %d rows): max rel logit error %.3g%n",
                        pr.get("logits_key").asText(), ids.length, err);
                assertTrue(err <= LOGITS_TOL, "attached prompt " + pr.get("logits_key").asText() + " rel error " + err);
            }
            int[] prompt = Golden.ints(g.get("prompts").get(0).get("input_ids"));
            int n = 6;
            GenerationResult r = lm.generateIds(new int[][] {prompt}, SamplingParams.greedy(n).withMinNewTokens(n), TokenListener.NONE);
            int[] seq = prompt.clone();
            for (int s = 0; s < n; s++) {
                float[][] logits = p.logits(seq); // the full peft computation, recomputed each step
                int next = argmax(logits[logits.length - 1]);
                assertEquals(next, r.outputIds()[0][s], "generated token " + s + " with the prompt prefix");
                seq = Arrays.copyOf(seq, seq.length + 1);
                seq[seq.length - 1] = next;
            }
        }
    }

    @Test
    void wrongAdapterTypesAndShapesAreClearErrors() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> PrefixTuning.load(caseDir("prompt-llama").resolve("adapter"), lm.model()));
        assertTrue(e.getMessage().contains("PROMPT_TUNING") && e.getMessage().contains("not PREFIX_TUNING"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> PromptTuning.load(caseDir("lora-llama").resolve("adapter"), lm.model()));
        assertTrue(e.getMessage().contains("not PROMPT_TUNING"), e.getMessage());
        var cfg = dev.qlora4j.peft.config.PrefixTuningConfig.of(5, false);
        e = assertThrows(IllegalArgumentException.class, () -> PrefixTuning.of(cfg, new float[5 * 191], lm.model()));
        assertTrue(e.getMessage().contains("192"), e.getMessage());
        assertNull(lm.model().cachePrefix());
    }
}
