package dev.qlora4j.peft.config;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class PeftConfigsTest {
    @TempDir
    Path dir;

    @Test
    void saveThenLoadFromTheAdapterDirectory() throws Exception {
        LoraConfig c = LoraConfigTest.typical();
        Path written = PeftConfigs.save(dir.resolve("adapter"), c);
        assertEquals(dir.resolve("adapter").resolve("adapter_config.json").toAbsolutePath(), written);
        assertEquals(LoraConfigTest.PEFT_014_FILE, Files.readString(written));
        assertEquals(c, PeftConfigs.load(dir.resolve("adapter")));
        assertEquals(c, PeftConfigs.load(written));
        try (var files = Files.list(dir.resolve("adapter"))) {
            assertEquals(1, files.count(), "no temp file left behind");
        }
    }

    @Test
    void unknownOrMissingTypeAndBadFiles() {
        var e = assertThrows(IllegalArgumentException.class, () -> PeftConfigs.parse("{\"peft_type\": \"IA3\", \"target_modules\": [\"k\"]}"));
        assertTrue(e.getMessage().contains("peft_type \"IA3\" is not supported; supported: [LORA, PREFIX_TUNING, PROMPT_TUNING, BOTTLENECK]"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> PeftConfigs.parse("{\"r\": 8}"));
        assertTrue(e.getMessage().contains("no \"peft_type\""), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> PeftConfigs.parse("{\"peft_type\": \"LORA\", "));
        assertTrue(e.getMessage().startsWith("adapter_config.json: not valid JSON"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> PeftConfigs.parse("[1, 2]"));
        assertTrue(e.getMessage().contains("expected a JSON object"), e.getMessage());
        var io = assertThrows(UncheckedIOException.class, () -> PeftConfigs.load(dir.resolve("nope")));
        assertTrue(io.getMessage().contains("adapter_config.json: no such file"), io.getMessage());
    }

    @Test
    void prefixTuningRoundTripAndResolve() {
        PrefixTuningConfig c = PrefixTuningConfig.of(20, true);
        PrefixTuningConfig r = c.resolve(16, 2048, 32);
        assertEquals(2048, r.tokenDim());
        assertEquals(2048, r.encoderHiddenSize());
        assertEquals(16, r.numLayers());
        assertEquals(32, r.numAttentionHeads());
        assertEquals(1, r.numTransformerSubmodules());
        assertEquals(r, PeftConfigs.parse(r.toJson()));
        String expected = """
                {
                  "auto_mapping": null,
                  "base_model_name_or_path": null,
                  "encoder_hidden_size": 2048,
                  "inference_mode": false,
                  "modules_to_save": null,
                  "num_attention_heads": 32,
                  "num_layers": 16,
                  "num_transformer_submodules": 1,
                  "num_virtual_tokens": 20,
                  "peft_type": "PREFIX_TUNING",
                  "prefix_projection": true,
                  "revision": null,
                  "task_type": "CAUSAL_LM",
                  "token_dim": 2048
                }""";
        assertEquals(expected, r.toJson());
        // a peft file with postprocess_past_key_value_function (older peft) keeps the key
        PeftConfig old = PeftConfigs.parse(expected.replace("\"peft_type\"", "\"postprocess_past_key_value_function\": null,\n  \"peft_type\""));
        assertTrue(old.extra().containsKey("postprocess_past_key_value_function"));
        assertThrows(IllegalArgumentException.class, () -> PeftConfigs.parse("{\"peft_type\": \"PREFIX_TUNING\"}"));
    }

    @Test
    void promptTuningRoundTripAndValidation() {
        PromptTuningConfig text = PromptTuningConfig.fromText(8, "Classify the sentiment:", "meta-llama/Llama-3.2-1B");
        assertEquals(text, PeftConfigs.parse(text.toJson()));
        assertTrue(text.toJson().contains("\"prompt_tuning_init\": \"TEXT\""));
        assertEquals(PromptTuningConfig.random(4).resolve(2, 64, 4), PeftConfigs.parse(PromptTuningConfig.random(4).resolve(2, 64, 4).toJson()));
        PromptTuningConfig fromEnum = (PromptTuningConfig) PeftConfigs.parse(
                "{\"peft_type\": \"PROMPT_TUNING\", \"num_virtual_tokens\": 3, \"prompt_tuning_init\": \"PromptTuningInit.RANDOM\"}");
        assertEquals(PromptTuningConfig.Init.RANDOM, fromEnum.promptTuningInit());
        var e = assertThrows(IllegalArgumentException.class, () -> PromptTuningConfig.fromText(8, "x", null));
        assertTrue(e.getMessage().contains("When prompt_tuning_init='TEXT', tokenizer_name_or_path can't be None."), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> PeftConfigs.parse(
                "{\"peft_type\": \"PROMPT_TUNING\", \"num_virtual_tokens\": 3, \"prompt_tuning_init\": \"RANDOM\", \"tokenizer_kwargs\": {\"a\": 1}}"));
        assertTrue(e.getMessage().contains("tokenizer_kwargs only valid"), e.getMessage());
    }

    @Test
    void bottleneckPresetsSizesAndRoundTrip() {
        BottleneckConfig h = BottleneckConfig.houlsby(16);
        assertTrue(h.mhAdapter() && h.outputAdapter() && !h.isParallel());
        assertEquals("swish", h.nonLinearity());
        assertEquals(128, h.bottleneckSize(2048));
        BottleneckConfig p = BottleneckConfig.parallel(2);
        assertTrue(p.isParallel());
        assertEquals(4.0, p.scaling().value());
        assertEquals(1024, p.bottleneckSize(2048));
        BottleneckConfig pf = BottleneckConfig.pfeiffer(16);
        assertTrue(!pf.mhAdapter() && pf.outputAdapter() && pf.originalLnBefore());
        for (BottleneckConfig c : List.of(h, p, pf)) assertEquals(c, PeftConfigs.parse(c.toJson()));

        BottleneckConfig learned = (BottleneckConfig) PeftConfigs.parse(
                "{\"peft_type\": \"BOTTLENECK\", \"bottleneck_size\": 64, \"scaling\": \"learned\", \"non_linearity\": \"SiLU\", \"layers_to_transform\": [0, 1]}");
        assertEquals(64, learned.bottleneckSize(4096));
        assertTrue(learned.scaling().learned());
        assertEquals("silu", learned.nonLinearity());
        assertTrue(learned.appliesToLayer(1) && !learned.appliesToLayer(2));
        assertEquals(learned, PeftConfigs.parse(learned.toJson()));
        assertTrue(learned.toJson().contains("\"scaling\": \"learned\""));

        assertThrows(IllegalArgumentException.class, () -> PeftConfigs.parse("{\"peft_type\": \"BOTTLENECK\", \"non_linearity\": \"softplus\"}"));
        assertThrows(IllegalArgumentException.class, () -> PeftConfigs.parse("{\"peft_type\": \"BOTTLENECK\", \"output_adapter\": false}"));
        var e = assertThrows(IllegalArgumentException.class, () -> BottleneckConfig.houlsby(4096).bottleneckSize(2048));
        assertTrue(e.getMessage().contains("leaves no bottleneck"), e.getMessage());
    }

    @Test
    void inferenceModeAndBaseModelCopies() {
        PeftConfig c = LoraConfigTest.typical().withInferenceMode(false).withBaseModel("/models/x", "abc");
        assertEquals(false, c.inferenceMode());
        assertEquals("/models/x", c.baseModelNameOrPath());
        assertEquals("abc", c.revision());
        assertInstanceOf(LoraConfig.class, c);
        assertEquals(Map.of(), c.extra());
    }
}
