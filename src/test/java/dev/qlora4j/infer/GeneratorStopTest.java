package dev.qlora4j.infer;

import com.fasterxml.jackson.databind.JsonNode;
import dev.qlora4j.CausalLM;
import dev.qlora4j.Golden;
import dev.qlora4j.LoadOptions;
import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Stop strings, EOS, the streaming callback and seeded sampling on the golden tiny model. */
class GeneratorStopTest {
    @Test
    void stopStringsEosStreamingAndSeeds() {
        JsonNode p = Golden.json("llama-f32").get("prompts").get(0);
        int[] ids = Golden.ints(p.get("input_ids"));
        try (CausalLM lm = CausalLM.fromPretrained(Golden.dir("llama-f32"), LoadOptions.cpu())) {
            GenerationResult full = lm.generateIds(new int[][] {ids}, SamplingParams.greedy(32).withMinNewTokens(32), TokenListener.NONE);
            String text = full.texts()[0];
            // a stop string taken from the middle of the greedy text cuts the row there
            String stop = text.substring(10, 14);
            GenerationResult cut = lm.generateIds(new int[][] {ids}, SamplingParams.greedy(32).withStopStrings(List.of(stop)), TokenListener.NONE);
            assertEquals("stop_string", cut.stopReasons()[0]);
            assertEquals(text.substring(0, text.indexOf(stop)), cut.texts()[0]);
            // streaming: the pieces concatenate to the final text
            StringBuilder streamed = new StringBuilder();
            List<Integer> tokens = new ArrayList<>();
            GenerationResult s = lm.generateIds(new int[][] {ids}, SamplingParams.greedy(12), (row, tok, piece) -> {
                streamed.append(piece);
                tokens.add(tok);
            });
            assertEquals(s.texts()[0], streamed.toString());
            assertArrayEquals(s.outputIds()[0], tokens.stream().mapToInt(Integer::intValue).toArray());
            assertEquals("length", s.stopReasons()[0]);
            // seeded sampling is reproducible and differs from greedy somewhere
            SamplingParams sample = new SamplingParams(24, 0, true, 1.5, 50, 0.95, 1.1, 1234, List.of());
            GenerationResult a = lm.generateIds(new int[][] {ids}, sample, TokenListener.NONE);
            GenerationResult b = lm.generateIds(new int[][] {ids}, sample, TokenListener.NONE);
            assertArrayEquals(a.outputIds()[0], b.outputIds()[0]);
            assertFalse(java.util.Arrays.equals(a.outputIds()[0], java.util.Arrays.copyOf(full.outputIds()[0], 24)));
            assertTrue(a.outputIds()[0].length <= 24);
        }
    }

    /**
     * Streaming and stop strings follow each row's text with a window of its last tokens (StreamDecoder), not a decode
     * of the whole output every step: the ids decoded a step stay a handful however long the output; the streamed
     * pieces still concatenate to the returned text, and a stop string spanning several tokens cuts it as before.
     */
    @Test
    void streamingDecodesAWindowOfTokensEachStep() {
        JsonNode p = Golden.json("llama-f32").get("prompts").get(0);
        int[] ids = Golden.ints(p.get("input_ids"));
        try (CausalLM lm = CausalLM.fromPretrained(Golden.dir("llama-f32"), LoadOptions.cpu())) {
            dev.qlora4j.io.tokenizer.Tokenizer tok = lm.tokenizer();
            long[] decodedIds = {0};
            java.util.function.Function<int[], String> counting = x -> {
                decodedIds[0] += x.length;
                return tok.decode(x, true);
            };
            int n = 64;
            SamplingParams sample = new SamplingParams(n, n, true, 1.2, 0, 1.0, 1.0, 99, List.of());
            Generator g = new Generator(lm.model(), lm.config().eosTokenIds(), 0, counting);
            StringBuilder streamed = new StringBuilder();
            GenerationResult r = g.generate(new int[][] {ids}, sample, (row, t, piece) -> streamed.append(piece));
            assertEquals(n, r.outputIds()[0].length);
            assertEquals(r.texts()[0], streamed.toString());
            assertEquals(tok.decode(r.outputIds()[0], true), r.texts()[0]);
            // a whole-output decode every step would be n (n + 1) / 2 = 2,080 ids; the windows are a few ids a step,
            // plus one whole decode at the end
            assertTrue(decodedIds[0] <= 8L * n + n, decodedIds[0] + " ids decoded");

            // a stop string of several tokens from the middle of that text
            String text = r.texts()[0];
            String stop = text.substring(text.length() / 2, text.length() / 2 + 7);
            GenerationResult cut = g.generate(new int[][] {ids}, sample.withStopStrings(List.of(stop)), TokenListener.NONE);
            assertEquals("stop_string", cut.stopReasons()[0]);
            assertEquals(text.substring(0, text.indexOf(stop)), cut.texts()[0]);
        }
    }

    /**
     * Without stop strings and without a listener the rows' texts are decoded once, at the end (not the whole output
     * every step); tokens, texts and reasons are those of a run that decodes every step for a listener.
     */
    @Test
    void textsAreDecodedOnceWithoutStopStringsOrAListener() throws Exception {
        JsonNode g = Golden.json("llama-f32");
        int[][] prompts = {Golden.ints(g.get("prompts").get(0).get("input_ids")), Golden.ints(g.get("prompts").get(1).get("input_ids"))};
        try (dev.qlora4j.io.CheckpointReader reader = dev.qlora4j.io.CheckpointReader.open(Golden.dir("llama-f32"));
             dev.qlora4j.backend.cpu.CpuBackend b = new dev.qlora4j.backend.cpu.CpuBackend(2)) {
            dev.qlora4j.model.ModelConfig c = dev.qlora4j.model.ModelConfig.load(Golden.dir("llama-f32"));
            dev.qlora4j.model.TransformerLM m = dev.qlora4j.model.TransformerLM.load(c,
                    new dev.qlora4j.model.CheckpointWeights(reader, "llama-f32"), b, dev.qlora4j.model.LinearFactory.DENSE);
            int[] calls = {0};
            java.util.function.Function<int[], String> decoder = ids -> {
                calls[0]++;
                return java.util.Arrays.toString(ids);
            };
            SamplingParams greedy = SamplingParams.greedy(10).withMinNewTokens(10);
            GenerationResult quiet = new Generator(m, c.eosTokenIds(), 0, decoder).generate(prompts, greedy, TokenListener.NONE);
            assertEquals(prompts.length, calls[0], "one decode a row, at the end");
            calls[0] = 0;
            GenerationResult streamed = new Generator(m, c.eosTokenIds(), 0, decoder).generate(prompts, greedy, (row, tok, piece) -> {});
            assertTrue(calls[0] >= 10 * prompts.length, "a listener gets text every step");
            for (int r = 0; r < prompts.length; r++) {
                assertArrayEquals(streamed.outputIds()[r], quiet.outputIds()[r], "row " + r);
                assertEquals(streamed.texts()[r], quiet.texts()[r], "row " + r);
                assertEquals(streamed.stopReasons()[r], quiet.stopReasons()[r], "row " + r);
            }
        }
    }
}
