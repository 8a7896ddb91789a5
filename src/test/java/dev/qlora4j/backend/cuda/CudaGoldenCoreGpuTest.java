package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import com.fasterxml.jackson.databind.JsonNode;
import dev.qlora4j.CausalLM;
import dev.qlora4j.Golden;
import dev.qlora4j.LoadOptions;
import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.infer.GenerationResult;
import dev.qlora4j.infer.LossEvaluator.LossSum;
import dev.qlora4j.infer.SamplingParams;
import dev.qlora4j.infer.TokenListener;
import dev.qlora4j.io.SafetensorsFile;
import dev.qlora4j.tensor.DType;

import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The golden models (transformers 5.17 fixtures, see GoldenModelTest) on the CUDA backend with F32
 * activations: logits within 1e-4 (max |diff| / max |ref|, float32 summation-order differences, the
 * issue's bar) and losses within 1e-5 relative, greedy tokens equal to transformers' for single prompts and
 * the left-padded batch, with the decode steps replayed from a CUDA graph and run directly (both must give
 * the golden tokens, hence the same tokens). BF16 activations: logits within 5e-2 of the golden (measured on the H200: up to 3.4e-2; each op
 * rounds its output to bf16, ~2e-3 per rounding, over 2-3 layers and the head) and reported greedy
 * agreement only (a near-tie can flip under bf16 rounding).
 */
@Tag("gpu")
class CudaGoldenCoreGpuTest {
    static final double LOGITS_TOL = 1e-4;
    static final double LOSS_TOL = 1e-5;
    static final double BF16_LOGITS_TOL = 5e-2;

    /** Loads a golden model on cuda:0 with the given activations and graph setting (system properties). */
    private static CausalLM load(String name, String activations, boolean graphs) {
        assumeTrue(CudaBackend.isAvailable(), "no GPU");
        try (var a = TemporaryProperty.set(CudaBackend.ACTIVATIONS_PROPERTY, activations);
             var gr = TemporaryProperty.set(CudaBackend.GRAPHS_PROPERTY, Boolean.toString(graphs))) {
            CausalLM lm = CausalLM.fromPretrained(Golden.dir(name), LoadOptions.defaults().withDevice("cuda"));
            assertTrue(lm.backend() instanceof CudaBackend, "loaded on " + lm.backend());
            return lm;
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"llama-f32", "llama-bf16", "mistral-f32", "qwen2-f32"})
    void logitsAndLossesMatchTransformers(String name) {
        try (CausalLM lm = load(name, "f32", true);
             SafetensorsFile gt = SafetensorsFile.open(Golden.dir(name).resolve("golden.safetensors"))) {
            assertEquals(DType.F32, lm.backend().activationDType());
            for (JsonNode p : Golden.json(name).get("prompts")) {
                int i = p.get("index").asInt();
                int[] ids = Golden.ints(p.get("input_ids"));
                double err = Golden.maxRelError(flatten(lm.logits(ids)), gt.tensor("logits_" + i).toFloatArray());
                System.out.printf("cuda f32 %s prompt %d: max rel logit error %.3g%n", name, i, err);
                assertTrue(err <= LOGITS_TOL, name + " prompt " + i + " logits rel error " + err);
                LossSum loss = lm.loss(ids);
                double ref = p.get("loss").asDouble();
                assertEquals(ref, loss.mean(), Math.abs(ref) * LOSS_TOL, name + " loss of prompt " + i);
            }
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"llama-f32", "llama-bf16", "mistral-f32", "qwen2-f32"})
    void greedyTokensMatchTransformersWithAndWithoutGraphs(String name) {
        JsonNode g = Golden.json(name);
        int n = g.get("max_new_tokens").asInt();
        SamplingParams greedy = SamplingParams.greedy(n).withMinNewTokens(n);
        List<JsonNode> prompts = new ArrayList<>();
        g.get("prompts").forEach(prompts::add);
        int[][] all = new int[prompts.size()][];
        for (int i = 0; i < all.length; i++) all[i] = Golden.ints(prompts.get(i).get("input_ids"));
        for (boolean graphs : new boolean[] {true, false}) {
            try (CausalLM lm = load(name, "f32", graphs)) {
                for (int i = 0; i < all.length; i++) {
                    GenerationResult r = lm.generateIds(new int[][] {all[i]}, greedy, TokenListener.NONE);
                    assertArrayEquals(Golden.ints(prompts.get(i).get("greedy_tokens")), r.outputIds()[0],
                            name + " greedy tokens of prompt " + i + (graphs ? " (graph)" : " (direct)"));
                }
                GenerationResult batch = lm.generateIds(all, greedy, TokenListener.NONE);
                JsonNode expected = g.get("batch").get("greedy_tokens");
                for (int i = 0; i < all.length; i++) {
                    assertArrayEquals(Golden.ints(expected.get(i)), batch.outputIds()[i],
                            name + " batched greedy row " + i + (graphs ? " (graph)" : " (direct)"));
                }
                System.out.printf("cuda f32 %s %s: decode %.0f steps/s%n", name, graphs ? "graph" : "direct",
                        batch.decodeTokensPerSecond());
            }
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"llama-f32", "llama-bf16", "mistral-f32", "qwen2-f32"})
    void bf16ActivationsStayCloseToTransformers(String name) {
        try (CausalLM lm = load(name, "bf16", true);
             SafetensorsFile gt = SafetensorsFile.open(Golden.dir(name).resolve("golden.safetensors"))) {
            assertEquals(DType.BF16, lm.backend().activationDType());
            JsonNode g = Golden.json(name);
            int n = g.get("max_new_tokens").asInt();
            for (JsonNode p : g.get("prompts")) {
                int i = p.get("index").asInt();
                int[] ids = Golden.ints(p.get("input_ids"));
                double err = Golden.maxRelError(flatten(lm.logits(ids)), gt.tensor("logits_" + i).toFloatArray());
                int[] tokens = lm.generateIds(new int[][] {ids}, SamplingParams.greedy(n).withMinNewTokens(n),
                        TokenListener.NONE).outputIds()[0];
                int[] golden = Golden.ints(p.get("greedy_tokens"));
                int same = 0;
                while (same < golden.length && tokens[same] == golden[same]) same++;
                System.out.printf("cuda bf16 %s prompt %d: max rel logit error %.3g, greedy prefix %d/%d%n", name, i,
                        err, same, golden.length);
                assertTrue(err <= BF16_LOGITS_TOL, name + " prompt " + i + " bf16 logits rel error " + err);
            }
        }
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
}
