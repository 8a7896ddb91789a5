package dev.qlora4j.cli;

import dev.qlora4j.Golden;
import dev.qlora4j.peft.config.PeftConfigs;
import dev.qlora4j.peft.config.PrefixTuningConfig;
import dev.qlora4j.peft.config.PromptTuningConfig;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import picocli.CommandLine;

import java.nio.file.Files;
import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.*;

/**
 * qlora4j train --adapter-type prefix|prompt: the flags, the config file's "peft_config", and a
 * short run of each on the golden llama-f32 that writes peft files the generate command loads,
 * then continues from them with --init-adapter.
 */
class TrainPromptLearningCliTest {
    private static TrainCommand parse(String... argv) {
        TrainCommand c = new TrainCommand();
        new CommandLine(c).parseArgs(argv);
        return c;
    }

    @Test
    void flagsDescribeTheAdapter() {
        var p = (PrefixTuningConfig) parse("--data", "d", "--adapter-type", "prefix", "--num-virtual-tokens", "8", "--prefix-projection",
                "--encoder-hidden-size", "64").adapterConfig("llama", null, "m");
        assertEquals(8, p.numVirtualTokens());
        assertTrue(p.prefixProjection());
        assertEquals(64, p.encoderHiddenSize());
        var q = (PromptTuningConfig) parse("--data", "d", "--adapter-type", "prompt", "--prompt-tuning-init", "TEXT",
                "--prompt-tuning-init-text", "Answer briefly:").adapterConfig("llama", null, "models/x");
        assertEquals(PromptTuningConfig.Init.TEXT, q.promptTuningInit());
        assertEquals("Answer briefly:", q.promptTuningInitText());
        assertEquals("models/x", q.tokenizerNameOrPath(), "the base model's tokenizer, as peft's config names it");
        assertEquals(20, q.numVirtualTokens());
        var e = assertThrows(IllegalArgumentException.class, () -> parse("--data", "d", "--adapter-type", "prompt",
                "--prompt-tuning-init", "TEXT").adapterConfig("llama", null, "m"));
        assertTrue(e.getMessage().contains("--prompt-tuning-init-text"), e.getMessage());
    }

    @Test
    void configFilePeftConfigIsTheDefaultAdapterAndFlagsOverrideIt(@TempDir Path tmp) throws Exception {
        Path cfg = tmp.resolve("train.json");
        Files.writeString(cfg, "{\"output_dir\": \"o\", \"learning_rate\": 0.01, \"peft_config\": {\"peft_type\": \"PREFIX_TUNING\", "
                + "\"num_virtual_tokens\": 6, \"prefix_projection\": true, \"encoder_hidden_size\": 48}}");
        TrainCommand c = parse("--data", "d", "--config", cfg.toString(), "--num-virtual-tokens", "4");
        var p = (PrefixTuningConfig) c.adapterConfig("llama", c.configPeft(), "m");
        assertEquals(4, p.numVirtualTokens(), "the flag wins");
        assertTrue(p.prefixProjection());
        assertEquals(48, p.encoderHiddenSize());
        java.util.List<String> warnings = new java.util.ArrayList<>();
        assertEquals(0.01, dev.qlora4j.train.TrainingArguments.load(cfg, c.overrides(), warnings::add).learningRate());
        assertEquals(java.util.List.of(), warnings, "peft_config is not an unknown TrainingArguments key");
    }

    @Test
    void trainGenerateAndContinueEachKind(@TempDir Path tmp) throws Exception {
        Path data = tmp.resolve("d.jsonl");
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < 8; i++) sb.append("{\"prompt\": \"The old lighthouse\", \"completion\": \" keeper climbed the stairs\"}\n");
        Files.writeString(data, sb.toString());
        String model = Golden.dir("llama-f32").toString();
        String[][] kinds = {{"prefix", "--num-virtual-tokens", "4"}, {"prefix", "--num-virtual-tokens", "3", "--prefix-projection"},
                {"prompt", "--num-virtual-tokens", "3", "--prompt-tuning-init", "TEXT", "--prompt-tuning-init-text", "The old"}};
        for (int k = 0; k < kinds.length; k++) {
            Path out = tmp.resolve("run" + k);
            java.util.List<String> args = new java.util.ArrayList<>(java.util.List.of("train", "--model", model, "--device", "cpu",
                    "--data", data.toString(), "--output", out.toString(), "--adapter-type"));
            args.addAll(java.util.List.of(kinds[k]));
            args.addAll(java.util.List.of("--max-steps", "3", "--per-device-train-batch-size", "4", "--learning-rate", "1e-2"));
            CliTest.Result t = CliTest.run(args.toArray(String[]::new));
            assertEquals(0, t.code(), kinds[k][0] + ": " + t.err());
            String type = PeftConfigs.load(out).peftType();
            assertEquals(kinds[k][0].equals("prefix") ? "PREFIX_TUNING" : "PROMPT_TUNING", type);
            CliTest.Result g = CliTest.run("generate", "--model", model, "--device", "cpu", "--adapter", out.toString(), "--prompt", "The old",
                    "--max-new-tokens", "3", "--greedy", "--json");
            assertEquals(0, g.code(), kinds[k][0] + " generate: " + g.err());
            Path more = tmp.resolve("more" + k);
            CliTest.Result c = CliTest.run("train", "--model", model, "--device", "cpu", "--data", data.toString(), "--output",
                    more.toString(), "--adapter-type", kinds[k][0], "--init-adapter", out.toString(), "--max-steps", "1",
                    "--per-device-train-batch-size", "4");
            assertEquals(0, c.code(), kinds[k][0] + " --init-adapter: " + c.err());
        }
    }
}
