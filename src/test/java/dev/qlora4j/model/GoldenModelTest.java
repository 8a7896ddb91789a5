package dev.qlora4j.model;

import com.fasterxml.jackson.databind.JsonNode;
import dev.qlora4j.CausalLM;
import dev.qlora4j.Golden;
import dev.qlora4j.LoadOptions;
import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.KvCache;
import dev.qlora4j.infer.GenerationResult;
import dev.qlora4j.infer.LossEvaluator.LossSum;
import dev.qlora4j.infer.SamplingParams;
import dev.qlora4j.infer.TokenListener;
import dev.qlora4j.io.SafetensorsFile;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.io.IOException;
import java.nio.file.Files;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Whole models against transformers 5.17 (tools/golden/make_goldens.py): logits, losses,
 * greedy continuations (single and left-padded batch) and the eval-file loss, on the CPU backend.
 * bf16 checkpoints are compared with transformers running the same bf16 weights in float32,
 * which is what the CPU engine computes.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class GoldenModelTest {
    /** f32 logits: float32 accumulation-order differences only (the bar). */
    static final double LOGITS_TOL = 1e-4;
    /** Losses: means of float32 log-softmax values. */
    static final double LOSS_TOL = 1e-5;

    private final Map<String, CausalLM> models = new HashMap<>();

    @BeforeAll
    void load() {
        for (String m : Golden.MODELS) models.put(m, CausalLM.fromPretrained(Golden.dir(m), LoadOptions.cpu()));
    }

    @AfterAll
    void close() {
        models.values().forEach(CausalLM::close);
    }

    @ParameterizedTest
    @ValueSource(strings = {"llama-f32", "llama-bf16", "mistral-f32", "qwen2-f32"})
    void logitsAndLossesMatchTransformers(String name) {
        CausalLM lm = models.get(name);
        JsonNode g = Golden.json(name);
        try (SafetensorsFile gt = SafetensorsFile.open(Golden.dir(name).resolve("golden.safetensors"))) {
            for (JsonNode p : g.get("prompts")) {
                int i = p.get("index").asInt();
                int[] ids = Golden.ints(p.get("input_ids"));
                assertArrayEquals(ids, lm.tokenizer().encode(p.get("text").asText(), true), "tokenizer ids of prompt " + i);
                float[][] logits = lm.logits(ids);
                float[] flat = flatten(logits);
                float[] expected = gt.tensor("logits_" + i).toFloatArray();
                double err = Golden.maxRelError(flat, expected);
                System.out.printf("%s prompt %d: max rel logit error %.3g%n", name, i, err);
                assertTrue(err <= LOGITS_TOL, name + " prompt " + i + " logits rel error " + err);
                LossSum loss = lm.loss(ids);
                double ref = p.get("loss").asDouble();
                assertEquals(ref, loss.mean(), Math.abs(ref) * LOSS_TOL, name + " loss of prompt " + i);
            }
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"llama-f32", "llama-bf16", "mistral-f32", "qwen2-f32"})
    void greedyTokensMatchTransformers(String name) {
        CausalLM lm = models.get(name);
        JsonNode g = Golden.json(name);
        int n = g.get("max_new_tokens").asInt();
        SamplingParams greedy = SamplingParams.greedy(n).withMinNewTokens(n);
        for (JsonNode p : g.get("prompts")) {
            int[] ids = Golden.ints(p.get("input_ids"));
            GenerationResult r = lm.generateIds(new int[][] {ids}, greedy, TokenListener.NONE);
            assertArrayEquals(Golden.ints(p.get("greedy_tokens")), r.outputIds()[0],
                    name + " greedy tokens of prompt " + p.get("index"));
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"llama-f32", "llama-bf16", "mistral-f32", "qwen2-f32"})
    void leftPaddedBatchMatchesTransformers(String name) {
        CausalLM lm = models.get(name);
        JsonNode g = Golden.json(name);
        JsonNode batch = g.get("batch");
        int n = g.get("max_new_tokens").asInt();
        List<JsonNode> prompts = new java.util.ArrayList<>();
        g.get("prompts").forEach(prompts::add);
        int[][] ids = new int[prompts.size()][];
        for (int i = 0; i < ids.length; i++) ids[i] = Golden.ints(prompts.get(i).get("input_ids"));

        // Prefill logits of the padded batch, compared where the attention mask is 1.
        checkBatchPrefill(lm, name, ids);

        GenerationResult r = lm.generateIds(ids, SamplingParams.greedy(n).withMinNewTokens(n), TokenListener.NONE);
        JsonNode expected = batch.get("greedy_tokens");
        for (int i = 0; i < ids.length; i++) {
            assertArrayEquals(Golden.ints(expected.get(i)), r.outputIds()[i], name + " batched greedy row " + i);
        }
    }

    private void checkBatchPrefill(CausalLM lm, String name, int[][] prompts) {
        TransformerLM model = lm.model();
        Backend b = model.backend();
        int batch = prompts.length, len = 0;
        for (int[] p : prompts) len = Math.max(len, p.length);
        int[] ids = new int[batch * len], pos = new int[batch * len], pads = new int[batch];
        for (int r = 0; r < batch; r++) {
            pads[r] = len - prompts[r].length;
            for (int t = 0; t < len; t++) {
                ids[r * len + t] = t < pads[r] ? lm.padTokenId() : prompts[r][t - pads[r]];
                pos[r * len + t] = t < pads[r] ? 1 : t - pads[r];
            }
        }
        try (SafetensorsFile gt = SafetensorsFile.open(Golden.dir(name).resolve("golden.safetensors"));
             KvCache cache = model.newCache(batch, len);
             Tensor hidden = model.forward(Tensor.ofInts(ids, ids.length), Tensor.ofInts(pos, pos.length), cache, 0,
                     Tensor.ofInts(pads, batch));
             Tensor logits = model.logits(hidden)) {
            float[] ours = logits.toFloatArray();
            float[] ref = gt.tensor("batch_logits").toFloatArray();
            int vocab = logits.dim(1);
            assertEquals(ref.length, ours.length, "batch logits size");
            double maxDiff = 0, maxRef = 0;
            for (int r = 0; r < batch; r++) {
                for (int t = pads[r]; t < len; t++) {
                    int base = (r * len + t) * vocab;
                    for (int v = 0; v < vocab; v++) {
                        maxDiff = Math.max(maxDiff, Math.abs(ours[base + v] - ref[base + v]));
                        maxRef = Math.max(maxRef, Math.abs(ref[base + v]));
                    }
                }
            }
            System.out.printf("%s batch prefill: max rel logit error %.3g%n", name, maxDiff / maxRef);
            assertTrue(maxDiff / maxRef <= LOGITS_TOL, name + " batch prefill logits rel error " + maxDiff / maxRef);
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"llama-f32", "llama-bf16", "mistral-f32", "qwen2-f32"})
    void evalFileLossMatchesTransformers(String name) throws IOException {
        CausalLM lm = models.get(name);
        JsonNode ev = Golden.json(name).get("eval");
        LossSum total = new LossSum(0, 0);
        for (String line : Files.readAllLines(Golden.dir(name).resolve(ev.get("file").asText()))) {
            if (line.isBlank()) continue;
            String text = new com.fasterxml.jackson.databind.ObjectMapper().readTree(line).get("text").asText();
            total = total.plus(lm.loss(lm.tokenizer().encode(text, true)));
        }
        assertEquals(ev.get("eval_tokens").asLong(), total.tokens(), "predicted tokens");
        double ref = ev.get("eval_loss").asDouble();
        assertEquals(ref, total.mean(), ref * LOSS_TOL, name + " eval loss");
    }

    private static float[] flatten(float[][] rows) {
        int n = 0;
        for (float[] r : rows) n += r.length;
        float[] out = new float[n];
        int o = 0;
        for (float[] r : rows) {
            System.arraycopy(r, 0, out, o, r.length);
            o += r.length;
        }
        return out;
    }

    static String show(int[] a) { return Arrays.toString(a); }
}
