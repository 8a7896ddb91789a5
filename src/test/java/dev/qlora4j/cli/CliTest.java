package dev.qlora4j.cli;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.qlora4j.Golden;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The command line end to end on the golden tiny model: output formats and error messages. */
class CliTest {
    record Result(int code, String out, String err) {}

    static Result run(String... args) {
        PrintStream oldOut = System.out, oldErr = System.err;
        ByteArrayOutputStream out = new ByteArrayOutputStream(), err = new ByteArrayOutputStream();
        System.setOut(new PrintStream(out, true, StandardCharsets.UTF_8));
        System.setErr(new PrintStream(err, true, StandardCharsets.UTF_8));
        try {
            int code = Main.run(args);
            return new Result(code, out.toString(StandardCharsets.UTF_8), err.toString(StandardCharsets.UTF_8));
        } finally {
            System.setOut(oldOut);
            System.setErr(oldErr);
        }
    }

    @Test
    void helpListsEveryCommand() {
        Result r = run("--help");
        assertEquals(0, r.code());
        for (String c : new String[] {"generate", "eval", "inspect"}) assertTrue(r.out().contains(c), r.out());
    }

    @Test
    void generateJsonGivesTheGoldenGreedyTokens() throws Exception {
        JsonNode g = Golden.json("llama-f32");
        JsonNode p = g.get("prompts").get(0);
        Result r = run("generate", "--model", Golden.dir("llama-f32").toString(), "--device", "cpu",
                "--prompt", p.get("text").asText(), "--max-new-tokens", "32", "--min-new-tokens", "32", "--greedy", "--json");
        assertEquals(0, r.code(), r.err());
        JsonNode j = new ObjectMapper().readTree(r.out());
        assertArrayEquals(Golden.ints(p.get("input_ids")), Golden.ints(j.get("prompt_ids")));
        assertArrayEquals(Golden.ints(p.get("greedy_tokens")), Golden.ints(j.get("output_ids")));
        assertTrue(j.get("text").isTextual());
    }

    @Test
    void evalPrintsTheGoldenLoss() throws Exception {
        Path dir = Golden.dir("qwen2-f32");
        JsonNode ev = Golden.json("qwen2-f32").get("eval");
        Result r = run("eval", "--model", dir.toString(), "--device", "cpu", "--data", dir.resolve("eval.jsonl").toString(), "--json");
        assertEquals(0, r.code(), r.err());
        JsonNode j = new ObjectMapper().readTree(r.out());
        double ref = ev.get("eval_loss").asDouble();
        assertEquals(ref, j.get("loss").asDouble(), ref * 1e-5);
        assertEquals(Math.exp(j.get("loss").asDouble()), j.get("perplexity").asDouble(), 1e-9 * j.get("perplexity").asDouble());
        assertEquals(ev.get("eval_tokens").asLong(), j.get("tokens").asLong());
    }

    @Test
    void inspectReportsParametersAndQuantizedMemory() throws Exception {
        Result r = run("inspect", Golden.dir("llama-f32").toString(), "--json");
        assertEquals(0, r.code(), r.err());
        JsonNode j = new ObjectMapper().readTree(r.out());
        assertEquals(Golden.json("llama-f32").get("num_parameters").asLong(), j.get("parameters").asLong());
        JsonNode mem = j.get("weight_memory_bytes");
        assertTrue(mem.get("bf16").asLong() > mem.get("int8").asLong());
        assertTrue(mem.get("int8").asLong() > mem.get("nf4").asLong());
        assertTrue(mem.get("nf4").asLong() > mem.get("nf4_double_quant").asLong());
        assertEquals("LlamaForCausalLM", j.get("architecture").asText());
    }

    @Test
    void trainSaveAndGenerateWithEachAdapterKind(@TempDir Path tmp) throws Exception {
        Path data = tmp.resolve("d.jsonl");
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < 8; i++) sb.append("{\"prompt\": \"The old lighthouse\", \"completion\": \" keeper climbed the stairs\"}\n");
        Files.writeString(data, sb.toString());
        String model = Golden.dir("llama-f32").toString();
        for (String kind : new String[] {"lora", "dora", "bottleneck"}) {
            Path out = tmp.resolve(kind);
            Result t = run("train", "--model", model, "--device", "cpu", "--data", data.toString(), "--output", out.toString(),
                    "--adapter-type", kind, "--max-steps", "3", "--logging-steps", "1", "--per-device-train-batch-size", "4", "--learning-rate", "1e-2");
            assertEquals(0, t.code(), kind + ": " + t.err());
            assertTrue(Files.exists(out.resolve("adapter_config.json")) && Files.exists(out.resolve("adapter_model.safetensors")));
            assertTrue(Files.size(out.resolve("loss_curve.png")) > 100, "loss curve drawn");
            Result g = run("generate", "--model", model, "--device", "cpu", "--adapter", out.toString(), "--prompt", "The old",
                    "--max-new-tokens", "4", "--greedy", "--json");
            assertEquals(0, g.code(), kind + " generate: " + g.err());
            assertEquals(4, new ObjectMapper().readTree(g.out()).get("output_ids").size());
        }
        // peft's own prefix adapter runs through the same flag
        Result p = run("generate", "--model", model, "--device", "cpu", "--adapter",
                Golden.dir("llama-f32").getParent().resolve("peft/prefix-llama/adapter").toString(), "--prompt", "The old",
                "--max-new-tokens", "3", "--greedy", "--json");
        assertEquals(0, p.code(), p.err());
    }

    @Test
    void badInputsGiveOneClearLine(@TempDir Path tmp) throws Exception {
        Result missing = run("generate", "--model", tmp.resolve("nope").toString(), "--prompt", "x", "--device", "cpu");
        assertEquals(1, missing.code());
        assertTrue(missing.err().contains("does not exist"), missing.err());

        Path bad = tmp.resolve("bad.jsonl");
        Files.writeString(bad, "{\"text\": \"ok\"}\nnot json\n");
        Result badData = run("eval", "--model", Golden.dir("llama-f32").toString(), "--device", "cpu", "--data", bad.toString());
        assertEquals(1, badData.code());
        assertTrue(badData.err().contains("line 2"), badData.err());

        Path unknown = tmp.resolve("gpt2");
        Files.createDirectories(unknown);
        Files.writeString(unknown.resolve("config.json"), "{\"architectures\": [\"GPT2LMHeadModel\"], \"model_type\": \"gpt2\"}");
        Result arch = run("inspect", unknown.toString());
        assertEquals(1, arch.code());
        assertTrue(arch.err().contains("LlamaForCausalLM"), "lists supported architectures: " + arch.err());

        Result dev = run("generate", "--model", Golden.dir("llama-f32").toString(), "--prompt", "x", "--device", "tpu");
        assertEquals(1, dev.code());
        assertTrue(dev.err().contains("cpu, cuda"), dev.err());
    }
}
