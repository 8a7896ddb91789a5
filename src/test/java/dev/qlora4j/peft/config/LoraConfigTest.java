package dev.qlora4j.peft.config;

import org.junit.jupiter.api.Test;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class LoraConfigTest {
    /** What peft 0.14 writes for LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=[q,k,v,o], task_type="CAUSAL_LM") after save_pretrained. */
    static final String PEFT_014_FILE = """
            {
              "alpha_pattern": {},
              "auto_mapping": null,
              "base_model_name_or_path": "meta-llama/Llama-3.2-1B",
              "bias": "none",
              "eva_config": null,
              "exclude_modules": null,
              "fan_in_fan_out": false,
              "inference_mode": true,
              "init_lora_weights": true,
              "layer_replication": null,
              "layers_pattern": null,
              "layers_to_transform": null,
              "loftq_config": {},
              "lora_alpha": 32,
              "lora_bias": false,
              "lora_dropout": 0.05,
              "megatron_config": null,
              "megatron_core": "megatron.core",
              "modules_to_save": null,
              "peft_type": "LORA",
              "r": 16,
              "rank_pattern": {},
              "revision": null,
              "target_modules": [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj"
              ],
              "task_type": "CAUSAL_LM",
              "use_dora": false,
              "use_rslora": false
            }""";

    /** A file written by peft 0.19.1 (keys newer than 0.14 included), as published with an adapter. */
    static final String PEFT_019_FILE = """
            {
              "alora_invocation_tokens": null,
              "alpha_pattern": {},
              "arrow_config": null,
              "auto_mapping": null,
              "base_model_name_or_path": null,
              "bias": "none",
              "corda_config": null,
              "ensure_weight_tying": false,
              "eva_config": null,
              "exclude_modules": null,
              "fan_in_fan_out": false,
              "inference_mode": true,
              "init_lora_weights": true,
              "layer_replication": null,
              "layers_pattern": null,
              "layers_to_transform": null,
              "loftq_config": {},
              "lora_alpha": 256.0,
              "lora_bias": false,
              "lora_dropout": 0.05,
              "lora_ga_config": null,
              "megatron_config": null,
              "megatron_core": "megatron.core",
              "modules_to_save": null,
              "peft_type": "LORA",
              "peft_version": "0.19.1",
              "qalora_group_size": 16,
              "r": 128,
              "rank_pattern": {},
              "revision": null,
              "target_modules": ["proj", "fc1", "out_proj", "fc2", "linear", "in_proj"],
              "target_parameters": null,
              "task_type": "FEATURE_EXTRACTION",
              "trainable_token_indices": null,
              "use_bdlora": null,
              "use_dora": false,
              "use_qalora": false,
              "use_rslora": false
            }""";

    static LoraConfig typical() {
        return LoraConfig.builder().r(16).loraAlpha(32).loraDropout(0.05).targetModules("q_proj", "k_proj", "v_proj", "o_proj")
                .taskType("CAUSAL_LM").baseModelNameOrPath("meta-llama/Llama-3.2-1B").inferenceMode(true).build();
    }

    @Test
    void writesExactlyWhatPeftWrites() {
        assertEquals(PEFT_014_FILE, typical().toJson());
    }

    @Test
    void defaultsArePefts() {
        LoraConfig c = LoraConfig.builder().build();
        assertEquals(8, c.r());
        assertEquals(8.0, c.loraAlpha());
        assertEquals(0.0, c.loraDropout());
        assertEquals(LoraBias.NONE, c.bias());
        assertEquals(InitLoraWeights.of(true), c.initLoraWeights());
        assertNull(c.targetModules());
        assertFalse(c.useRslora() || c.useDora() || c.fanInFanOut() || c.inferenceMode());
        assertEquals("LORA", c.peftType());
    }

    @Test
    void roundTripsThroughJson() {
        Map<String, Integer> ranks = new LinkedHashMap<>();
        ranks.put("q_proj", 4);
        ranks.put("model\\.layers\\.0\\..*", 2);
        List<LoraConfig> configs = List.of(
                typical(),
                LoraConfig.builder().targetModules(ModuleSelector.regex(".*\\.(q|v)_proj")).excludeModules(ModuleSelector.names("lm_head"))
                        .useRslora(true).loraAlpha(0.5).initLoraWeights(InitLoraWeights.of("pissa_niter_16")).build(),
                LoraConfig.builder().targetModules(ModuleSelector.allLinear()).excludeModules(ModuleSelector.regex(".*down_proj"))
                        .useDora(true).bias(LoraBias.LORA_ONLY).modulesToSave(List.of("lm_head", "embed_tokens")).build(),
                LoraConfig.builder().targetModules("q_proj").layersToTransform(List.of(0, 2)).layersPattern(List.of("layers"))
                        .rankPattern(ranks).alphaPattern(Map.of("v_proj", 2.5)).initLoraWeights(InitLoraWeights.of(false))
                        .revision("main").extra(Map.of("peft_version", "0.19.1", "lora_bias", true)).build());
        for (LoraConfig c : configs) {
            PeftConfig back = PeftConfigs.parse(c.toJson());
            assertEquals(c, back, c.toJson());
            assertEquals(c.toJson(), back.toJson());
        }
    }

    @Test
    void readsANewerPeftFileAndKeepsUnknownKeys() {
        LoraConfig c = assertInstanceOf(LoraConfig.class, PeftConfigs.parse(PEFT_019_FILE));
        assertEquals(128, c.r());
        assertEquals(256.0, c.loraAlpha());
        assertEquals(0.05, c.loraDropout());
        assertEquals(new ModuleSelector.Names(List.of("proj", "fc1", "out_proj", "fc2", "linear", "in_proj")), c.targetModules());
        assertEquals("FEATURE_EXTRACTION", c.taskType());
        assertTrue(c.inferenceMode());
        assertEquals("0.19.1", c.extra().get("peft_version"));
        assertTrue(c.extra().containsKey("target_parameters"));
        assertFalse(c.extra().containsKey("megatron_core"), "keys at peft's default are not extra");
        assertEquals(List.of(), c.unsupportedSettings(), "every extra key is off");
        assertTrue(c.toJson().contains("\"lora_alpha\": 256,"));
        assertTrue(c.toJson().contains("\"use_bdlora\": null"));

        LoraConfig withBias = (LoraConfig) PeftConfigs.parse(PEFT_014_FILE.replace("\"lora_bias\": false", "\"lora_bias\": true")
                .replace("\"layer_replication\": null", "\"layer_replication\": [[0, 4], [2, 5]]"));
        assertEquals(List.of("layer_replication=[[0, 4], [2, 5]]", "lora_bias=true"), withBias.unsupportedSettings());
    }

    @Test
    void readsSingleValuesAndAliases() {
        String json = PEFT_014_FILE.replace("\"layers_to_transform\": null", "\"layers_to_transform\": 3")
                .replace("\"layers_pattern\": null", "\"layers_pattern\": \"layers\"")
                .replace("\"init_lora_weights\": true", "\"init_lora_weights\": \"gaussian\"");
        LoraConfig c = (LoraConfig) PeftConfigs.parse(json);
        assertEquals(List.of(3), c.layersToTransform());
        assertEquals(List.of("layers"), c.layersPattern());
        assertEquals(InitLoraWeights.of("gaussian"), c.initLoraWeights());
        LoraConfig all = (LoraConfig) PeftConfigs.parse("{\"peft_type\": \"LORA\", \"target_modules\": \"ALL-LINEAR\"}");
        assertInstanceOf(ModuleSelector.AllLinear.class, all.targetModules());
        assertTrue(all.toJson().contains("\"target_modules\": \"all-linear\""));
        LoraConfig regex = (LoraConfig) PeftConfigs.parse("{\"peft_type\": \"LORA\", \"target_modules\": \".*q_proj\", \"exclude_modules\": \"all-linear\"}");
        assertEquals(ModuleSelector.regex(".*q_proj"), regex.targetModules());
        assertEquals(ModuleSelector.regex("all-linear"), regex.excludeModules(), "an exclude string is always a regex, as in peft");
    }

    @Test
    void scalingIsAlphaOverRankOrOverSqrtRank() {
        LoraConfig c = LoraConfig.of(16, 32, "q_proj", "v_proj");
        assertEquals(2.0, c.scaling("model.layers.0.self_attn.q_proj"));
        LoraConfig rs = c.toBuilder().useRslora(true).build();
        assertEquals(32 / 4.0, rs.scaling("model.layers.0.self_attn.q_proj"));
    }

    @Test
    void rankAndAlphaPatternsUsePeftsKeyRule() {
        Map<String, Integer> ranks = new LinkedHashMap<>();
        ranks.put("model.layers.1.self_attn.q_proj", 4); // a full path: that module only
        ranks.put("v_proj", 2);                          // a suffix: every v_proj
        ranks.put("layers\\.[23]\\..*", 32);             // a regex over the path
        Map<String, Double> alphas = new LinkedHashMap<>();
        alphas.put("q_proj", 8.0);
        LoraConfig c = LoraConfig.builder().r(8).loraAlpha(16).targetModules("q_proj", "v_proj").rankPattern(ranks).alphaPattern(alphas).build();
        assertEquals(8, c.rank("model.layers.0.self_attn.q_proj"));
        assertEquals(4, c.rank("model.layers.1.self_attn.q_proj"));
        assertEquals(2, c.rank("model.layers.3.self_attn.v_proj"), "first key in order wins: v_proj before layers.[23]");
        assertEquals(32, c.rank("model.layers.3.self_attn.q_proj"));
        assertEquals(8, c.rank("model.layers.0.self_attn.xv_proj"), "v_proj must be a whole path component");
        assertEquals(8.0, c.alpha("model.layers.1.self_attn.q_proj"));
        assertEquals(16.0, c.alpha("model.layers.1.self_attn.v_proj"));
        assertEquals(8.0 / 4, c.scaling("model.layers.1.self_attn.q_proj"));
        assertEquals(16.0 / 2, c.scaling("model.layers.1.self_attn.v_proj"));
        assertEquals(8.0 / 8, c.scaling("model.layers.0.self_attn.q_proj"));
        LoraConfig rs = c.toBuilder().useRslora(true).build();
        assertEquals(16.0 / Math.sqrt(2), rs.scaling("model.layers.1.self_attn.v_proj"));
        assertEquals(8.0 / Math.sqrt(32), rs.scaling("model.layers.2.self_attn.q_proj"));
    }

    @Test
    void rejectsWhatPeftRejects() {
        assertTrue(assertThrows(IllegalArgumentException.class, () -> LoraConfig.builder().r(0).build())
                .getMessage().contains("`r` should be a positive integer value but the value passed is 0"));
        assertTrue(assertThrows(IllegalArgumentException.class, () -> LoraConfig.builder().targetModules(ModuleSelector.regex(".*q_proj"))
                .layersToTransform(List.of(0)).build()).getMessage().contains("`layers_to_transform` cannot be used when `target_modules` is a str."));
        assertTrue(assertThrows(IllegalArgumentException.class, () -> LoraConfig.builder().targetModules(ModuleSelector.allLinear())
                .layersPattern(List.of("layers")).build()).getMessage().contains("`layers_pattern` cannot be used"));
        assertTrue(assertThrows(IllegalArgumentException.class, () -> LoraConfig.builder().taskType("CAUSAL").build())
                .getMessage().contains("Invalid task type: 'CAUSAL'"));
        assertThrows(IllegalArgumentException.class, () -> InitLoraWeights.of("kaiming"));
        assertThrows(IllegalArgumentException.class, () -> ModuleSelector.regex("(unclosed"));
        var e = assertThrows(IllegalArgumentException.class, () -> PeftConfigs.parse("{\"peft_type\": \"LORA\", \"bias\": \"some\"}"));
        assertTrue(e.getMessage().startsWith("adapter_config.json: ") && e.getMessage().contains("lora_only"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> PeftConfigs.parse("{\"peft_type\": \"LORA\", \"r\": \"8\"}"));
        assertTrue(e.getMessage().contains("\"r\" must be an integer, got \"8\""), e.getMessage());
    }
}
