package dev.qlora4j.cli;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.qlora4j.CausalLM;
import dev.qlora4j.Golden;
import dev.qlora4j.LoadOptions;
import dev.qlora4j.infer.SamplingParams;
import dev.qlora4j.infer.TokenListener;
import dev.qlora4j.infer.metrics.Bleu;
import dev.qlora4j.infer.metrics.BleuScore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * eval --generate end to end on the golden tiny Llama (CPU): batched greedy answers equal the
 * golden greedy continuations transformers produced one prompt at a time, and the printed totals
 * and the report are the metrics of those answers.
 */
class EvalGenerateTest {
    private static final ObjectMapper JSON = new ObjectMapper();

    @Test
    void scoresBatchedGreedyAnswersAndWritesTheReport(@TempDir Path tmp) throws Exception {
        Path model = Golden.dir("llama-f32");
        JsonNode prompts = Golden.json("llama-f32").get("prompts");
        String chatPrompt = "<|im_start|>user\nThe old lighthouse<|im_end|>\n<|im_start|>assistant\n";
        List<String> lines = List.of(
                line(Map.of("prompt", prompts.get(0).get("text").asText(), "reference", prompts.get(0).get("greedy_text").asText())),
                line(Map.of("prompt", prompts.get(1).get("text").asText(), "reference", "a miller who lived by the river")),
                line(Map.of("prompt", prompts.get(2).get("text").asText(), "reference", List.of("p p p p q", "p p r"))),
                line(Map.of("messages", List.of(Map.of("role", "user", "content", "The old lighthouse"),
                        Map.of("role", "assistant", "content", "keeper climbed")))));
        Path data = Files.write(tmp.resolve("qa.jsonl"), lines);
        Path report = tmp.resolve("out/report.jsonl");

        CliTest.Result r = CliTest.run("eval", "--generate", "--model", model.toString(), "--device", "cpu", "--data", data.toString(),
                "--max-new-tokens", "32", "--batch-size", "2", "--report", report.toString(), "--json");
        assertEquals(0, r.code(), r.err());
        JsonNode totals = JSON.readTree(r.out());
        List<JsonNode> rows = new ArrayList<>();
        for (String l : Files.readAllLines(report)) rows.add(JSON.readTree(l));
        assertEquals(4, rows.size());

        // the text prompts: batched (left-padded) greedy answers are transformers' single-prompt greedy text
        for (int i = 0; i < 3; i++) assertEquals(prompts.get(i).get("greedy_text").asText(), rows.get(i).get("prediction").asText());
        // the chat prompt: rendered with the generation prompt; the answer is what generate gives for it alone
        assertEquals(chatPrompt, rows.get(3).get("prompt").asText());
        try (CausalLM lm = CausalLM.fromPretrained(model, LoadOptions.cpu())) {
            int[] ids = lm.tokenizer().encode(chatPrompt, false);
            String alone = lm.generateIds(new int[][] {ids}, SamplingParams.greedy(32), TokenListener.NONE).texts()[0];
            String predicted = rows.get(3).get("prediction").asText();
            if (rows.get(3).get("stop_reason").asText().equals("end_of_turn")) assertTrue(alone.startsWith(predicted));
            else assertEquals(alone, predicted);
        }

        List<String> predictions = new ArrayList<>();
        List<List<String>> references = List.of(List.of(prompts.get(0).get("greedy_text").asText()),
                List.of("a miller who lived by the river"), List.of("p p p p q", "p p r"), List.of("keeper climbed"));
        for (JsonNode row : rows) predictions.add(row.get("prediction").asText());
        boolean[] exact = {true, false, false, false};
        for (int i = 0; i < 4; i++) {
            assertEquals(exact[i], rows.get(i).get("exact_match").asBoolean(), "line " + (i + 1));
            assertEquals(i + 1, rows.get(i).get("line").asInt());
            assertEquals(Bleu.sentence().sentenceScore(predictions.get(i), references.get(i)).score(), rows.get(i).get("bleu").asDouble(), 1e-12);
        }
        assertEquals(100.0, rows.get(0).get("bleu").asDouble(), 1e-9);
        assertTrue(rows.get(2).get("bleu").asDouble() > 0, "' p p p ...' shares n-grams with 'p p p p q'");
        assertEquals(List.of("p p p p q", "p p r"), JSON.convertValue(rows.get(2).get("reference"), List.class));

        BleuScore corpus = Bleu.corpus().corpusScore(predictions, references);
        assertEquals(4, totals.get("examples").asInt());
        assertEquals(0.25, totals.get("exact_match").asDouble(), 0.0);
        assertEquals(corpus.score(), totals.get("bleu").asDouble(), 1e-12);
        assertArrayEquals(corpus.counts(), JSON.convertValue(totals.get("counts"), long[].class));
        assertArrayEquals(corpus.totals(), JSON.convertValue(totals.get("totals"), long[].class));
        assertArrayEquals(corpus.precisions(), JSON.convertValue(totals.get("precisions"), double[].class), 1e-12);
        assertEquals(corpus.bp(), totals.get("bp").asDouble(), 1e-12);
        assertEquals(corpus.sysLen(), totals.get("sys_len").asLong());
        assertEquals(corpus.refLen(), totals.get("ref_len").asLong());
        assertEquals("nrefs:var|case:mixed|eff:no|tok:13a|smooth:exp", totals.get("bleu_signature").asText());

        // text output: the sacreBLEU line and the exact-match count
        CliTest.Result text = CliTest.run("eval", "--generate", "--model", model.toString(), "--device", "cpu", "--data", data.toString(),
                "--max-new-tokens", "32");
        assertEquals(0, text.code(), text.err());
        assertTrue(text.out().contains("exact_match 0.2500 (1/4)"), text.out());
        assertTrue(text.out().contains(corpus.format()), text.out());
    }

    @Test
    void optionsAndFilesOfTheOtherModeAreRejectedClearly(@TempDir Path tmp) throws Exception {
        String model = Golden.dir("llama-f32").toString();
        Path texts = Files.writeString(tmp.resolve("t.jsonl"), "{\"text\": \"hello\"}\n");
        CliTest.Result r = CliTest.run("eval", "--model", model, "--device", "cpu", "--data", texts.toString(), "--report", "r.jsonl");
        assertEquals(1, r.code());
        assertTrue(r.err().contains("--report only apply with --generate"), r.err());

        CliTest.Result g = CliTest.run("eval", "--generate", "--model", model, "--device", "cpu", "--data", texts.toString());
        assertEquals(1, g.code());
        assertTrue(g.err().contains("line 1") && g.err().contains("\"reference\""), g.err());

        Path qa = Files.writeString(tmp.resolve("qa.jsonl"), "{\"prompt\": \"a\", \"reference\": \"b\"}\n");
        CliTest.Result l = CliTest.run("eval", "--model", model, "--device", "cpu", "--data", qa.toString());
        assertEquals(1, l.code());
        assertTrue(l.err().contains("--generate"), l.err());
    }

    @Test
    void decodingIsGreedyUnlessSamplingFlagsAreGiven() {
        EvalCommand c = new EvalCommand();
        SamplingParams p = c.generationParams(null);
        assertEquals(SamplingParams.greedy(128), p);
        assertEquals(40, c.generationParams(40).maxNewTokens());
        c.topK = 5;
        c.maxNewTokens = 7;
        SamplingParams s = c.generationParams(40);
        assertTrue(s.doSample());
        assertEquals(5, s.topK());
        assertEquals(1.0, s.temperature());
        assertEquals(7, s.maxNewTokens());
    }

    private static String line(Map<String, Object> m) throws Exception {
        return JSON.writeValueAsString(m);
    }

}
