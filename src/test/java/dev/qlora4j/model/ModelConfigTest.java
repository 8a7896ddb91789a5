package dev.qlora4j.model;

import com.fasterxml.jackson.databind.ObjectMapper;
import dev.qlora4j.tensor.DType;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.List;

import static org.junit.jupiter.api.Assertions.*;

class ModelConfigTest {

    static final String LLAMA31 = """
            {
              "architectures": ["LlamaForCausalLM"],
              "attention_bias": false, "attention_dropout": 0.0,
              "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
              "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
              "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": false,
              "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
              "pretraining_tp": 1, "rms_norm_eps": 1e-05,
              "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                               "original_max_position_embeddings": 8192, "rope_type": "llama3"},
              "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
              "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256
            }""";

    static final String MISTRAL = """
            {
              "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
              "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
              "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
              "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
              "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16", "vocab_size": 32768
            }""";

    static final String QWEN2 = """
            {
              "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
              "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
              "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21,
              "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
              "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": true,
              "torch_dtype": "bfloat16", "use_cache": true, "use_sliding_window": false, "vocab_size": 151936
            }""";

    @Test
    void llama31() {
        ModelConfig c = ModelConfig.parse(LLAMA31);
        assertEquals("LlamaForCausalLM", c.architecture());
        assertEquals("llama", c.modelType());
        assertEquals(128256, c.vocabSize());
        assertEquals(2048, c.hiddenSize());
        assertEquals(8192, c.intermediateSize());
        assertEquals(16, c.numHiddenLayers());
        assertEquals(32, c.numAttentionHeads());
        assertEquals(8, c.numKeyValueHeads());
        assertEquals(4, c.kvGroups());
        assertEquals(64, c.headDim());
        assertEquals(131072, c.maxPositionEmbeddings());
        assertEquals(1e-5, c.rmsNormEps());
        assertEquals(500000.0, c.ropeTheta());
        assertEquals(new RopeScaling("llama3", 32.0, 1.0, 4.0, 8192, null, null, null, null, null, null), c.ropeScaling());
        assertTrue(c.tieWordEmbeddings());
        assertFalse(c.qkvBias());
        assertFalse(c.oBias());
        assertFalse(c.mlpBias());
        assertNull(c.slidingWindow());
        assertNull(c.slidingWindow(3));
        assertEquals(128000, c.bosTokenId());
        assertArrayEquals(new int[] {128001, 128008, 128009}, c.eosTokenIds());
        assertNull(c.padTokenId());
        assertEquals(DType.BF16, c.torchDtype());
        assertEquals("silu", c.hiddenAct());
        assertNull(c.quantizationConfig());
    }

    @Test
    void llamaAttentionBiasAppliesToAllFourProjections() {
        ModelConfig c = ModelConfig.parse(LLAMA31.replace("\"attention_bias\": false", "\"attention_bias\": true")
                .replace("\"mlp_bias\": false", "\"mlp_bias\": true"));
        assertTrue(c.qkvBias());
        assertTrue(c.oBias());
        assertTrue(c.mlpBias());
    }

    @Test
    void mistral() {
        ModelConfig c = ModelConfig.parse(MISTRAL);
        assertEquals("mistral", c.modelType());
        assertEquals(128, c.headDim());
        assertNull(c.slidingWindow(), "sliding_window: null means full attention");
        assertEquals(1, c.bosTokenId());
        assertArrayEquals(new int[] {2}, c.eosTokenIds());
        assertFalse(c.qkvBias() || c.oBias() || c.mlpBias());
        assertNull(c.ropeScaling());
        assertEquals(1_000_000.0, c.ropeTheta());
    }

    @Test
    void mistralSlidingWindowDefaultsTo4096WhenAbsentAndAppliesToEveryLayer() {
        ModelConfig c = ModelConfig.parse(MISTRAL.replace("\"sliding_window\": null,", ""));
        assertEquals(4096, c.slidingWindow());
        for (int i = 0; i < c.numHiddenLayers(); i++) assertEquals(4096, c.slidingWindow(i));
        ModelConfig w = ModelConfig.parse(MISTRAL.replace("\"sliding_window\": null", "\"sliding_window\": 1024"));
        assertEquals(1024, w.slidingWindow(0));
    }

    @Test
    void qwen2() {
        ModelConfig c = ModelConfig.parse(QWEN2);
        assertEquals("Qwen2ForCausalLM", c.architecture());
        assertEquals(64, c.headDim());
        assertEquals(2, c.numKeyValueHeads());
        assertTrue(c.qkvBias(), "Qwen2 always has q/k/v biases");
        assertFalse(c.oBias(), "Qwen2's o_proj has no bias");
        assertFalse(c.mlpBias());
        assertNull(c.slidingWindow(), "use_sliding_window=false disables the window even though sliding_window is set");
        assertEquals(151643, c.bosTokenId());
        assertArrayEquals(new int[] {151645}, c.eosTokenIds());
    }

    @Test
    void qwen2SlidingWindowStartsAtMaxWindowLayers() {
        ModelConfig c = ModelConfig.parse(QWEN2.replace("\"use_sliding_window\": false", "\"use_sliding_window\": true")
                .replace("\"sliding_window\": 32768", "\"sliding_window\": 4096"));
        assertEquals(4096, c.slidingWindow());
        assertNull(c.slidingWindow(20));
        assertEquals(4096, c.slidingWindow(21));
        assertEquals(4096, c.slidingWindow(23));
        assertEquals(ModelConfig.FULL_ATTENTION, c.layerTypes().get(0));
        assertEquals(ModelConfig.SLIDING_ATTENTION, c.layerTypes().get(21));
    }

    @Test
    void transformersDefaultsForAbsentKeys() {
        ModelConfig l = ModelConfig.parse("{\"architectures\": [\"LlamaForCausalLM\"]}");
        assertEquals(32000, l.vocabSize());
        assertEquals(4096, l.hiddenSize());
        assertEquals(11008, l.intermediateSize());
        assertEquals(32, l.numHiddenLayers());
        assertEquals(32, l.numKeyValueHeads(), "Llama: num_key_value_heads defaults to num_attention_heads");
        assertEquals(128, l.headDim());
        assertEquals(2048, l.maxPositionEmbeddings());
        assertEquals(1e-6, l.rmsNormEps());
        assertEquals(10000.0, l.ropeTheta());
        assertEquals(1, l.bosTokenId());
        assertArrayEquals(new int[] {2}, l.eosTokenIds());
        assertFalse(l.tieWordEmbeddings());
        assertNull(l.torchDtype());

        ModelConfig m = ModelConfig.parse("{\"model_type\": \"mistral\"}");
        assertEquals("MistralForCausalLM", m.architecture());
        assertEquals(8, m.numKeyValueHeads());
        assertEquals(14336, m.intermediateSize());
        assertEquals(131072, m.maxPositionEmbeddings());
        assertEquals(4096, m.slidingWindow());

        ModelConfig q = ModelConfig.parse("{\"model_type\": \"qwen2\"}");
        assertEquals(151936, q.vocabSize());
        assertEquals(32768, q.maxPositionEmbeddings());
        assertNull(q.bosTokenId());
        assertEquals(0, q.eosTokenIds().length);
        assertNull(q.slidingWindow());

        ModelConfig nullKv = ModelConfig.parse("{\"model_type\": \"mistral\", \"num_key_value_heads\": null}");
        assertEquals(32, nullKv.numKeyValueHeads());
    }

    @Test
    void transformers5RopeParametersAndDtypeKey() {
        ModelConfig c = ModelConfig.parse("""
                {"architectures": ["LlamaForCausalLM"], "hidden_size": 256, "num_attention_heads": 4,
                 "dtype": "float16",
                 "rope_parameters": {"rope_type": "linear", "rope_theta": 250000.0, "factor": 2.0}}""");
        assertEquals(250000.0, c.ropeTheta());
        assertEquals("linear", c.ropeScaling().ropeType());
        assertEquals(2.0, c.ropeScaling().factor());
        assertEquals(DType.F16, c.torchDtype());

        ModelConfig plain = ModelConfig.parse("""
                {"architectures": ["Qwen2ForCausalLM"], "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}""");
        assertNull(plain.ropeScaling());
        assertEquals(1e6, plain.ropeTheta());

        ModelConfig legacyType = ModelConfig.parse("""
                {"model_type": "llama", "rope_scaling": {"type": "dynamic", "factor": 2.0}}""");
        assertEquals("dynamic", legacyType.ropeScaling().ropeType());
    }

    @Test
    void quantizationConfigIsKeptRaw() {
        ModelConfig c = ModelConfig.parse(QWEN2.replace("\"use_cache\": true", """
                "use_cache": true, "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": true,
                "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": true}"""));
        assertEquals("bitsandbytes", c.quantizationConfig().get("quant_method").asText());
        assertTrue(c.quantizationConfig().get("bnb_4bit_use_double_quant").asBoolean());
    }

    @Test
    void unsupportedArchitectureNamesTheSupportedOnes() {
        var e = assertThrows(UnsupportedArchitectureException.class, () -> ModelConfig.parse(
                "{\"architectures\": [\"GPT2LMHeadModel\"], \"model_type\": \"gpt2\"}"));
        assertEquals("architecture GPT2LMHeadModel (model_type 'gpt2')", e.found());
        assertTrue(e.getMessage().contains("LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"), e.getMessage());
        assertTrue(e.getMessage().contains("GPT2LMHeadModel"));
        var byType = assertThrows(UnsupportedArchitectureException.class,
                () -> ModelConfig.parse("{\"model_type\": \"gemma\"}"));
        assertTrue(byType.getMessage().contains("model_type 'gemma'"), byType.getMessage());
        var mismatch = assertThrows(UnsupportedArchitectureException.class, () -> ModelConfig.parse(
                "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"qwen3\"}"));
        assertTrue(mismatch.getMessage().contains("expected 'llama'"), mismatch.getMessage());
        var none = assertThrows(IllegalArgumentException.class, () -> ModelConfig.parse("{}"));
        assertTrue(none.getMessage().contains("architectures"), none.getMessage());
    }

    @Test
    void validationMessagesNameTheKeys() {
        assertMessage("hidden_size (100) must be divisible by num_attention_heads (32)",
                "{\"model_type\": \"llama\", \"hidden_size\": 100}");
        assertMessage("num_attention_heads (32) must be divisible by num_key_value_heads (5)",
                "{\"model_type\": \"llama\", \"num_key_value_heads\": 5}");
        assertMessage("vocab_size must be > 0, got 0", "{\"model_type\": \"llama\", \"vocab_size\": 0}");
        assertMessage("num_hidden_layers must be > 0, got -1", "{\"model_type\": \"llama\", \"num_hidden_layers\": -1}");
        assertMessage("hidden_act 'gelu' is not supported", "{\"model_type\": \"llama\", \"hidden_act\": \"gelu\"}");
        assertMessage("\"hidden_size\" must be an integer, got \"big\"", "{\"model_type\": \"llama\", \"hidden_size\": \"big\"}");
        assertMessage("rope type 'longrope' is not supported",
                "{\"model_type\": \"llama\", \"rope_scaling\": {\"rope_type\": \"longrope\", \"factor\": 2.0}}");
        assertMessage("needs 'low_freq_factor' and 'high_freq_factor'",
                "{\"model_type\": \"llama\", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0}}");
        assertMessage("needs a 'factor'", "{\"model_type\": \"llama\", \"rope_scaling\": {\"rope_type\": \"linear\"}}");
        assertMessage("torch_dtype: unknown dtype 'float8'", "{\"model_type\": \"llama\", \"torch_dtype\": \"float8\"}");
        assertMessage("is not valid JSON", "{\"model_type\": ");
    }

    private static void assertMessage(String expected, String json) {
        var e = assertThrows(IllegalArgumentException.class, () -> ModelConfig.parse(json));
        assertTrue(e.getMessage().contains(expected), "message was: " + e.getMessage());
        assertTrue(e.getMessage().contains("config.json"), "message should name the file: " + e.getMessage());
    }

    @Test
    void toJsonRoundTripsAndKeepsUnknownKeys(@TempDir Path dir) throws Exception {
        for (String json : List.of(LLAMA31, MISTRAL, QWEN2)) {
            ModelConfig c = ModelConfig.parse(json);
            String out = c.toJson();
            assertEquals(c, ModelConfig.parse(out));
            var tree = new ObjectMapper().readTree(out);
            assertEquals(0.02, tree.get("initializer_range").asDouble(), "unknown keys are carried through");
            assertTrue(tree.get("rope_theta").isNumber());
        }
        ModelConfig q = ModelConfig.parse(LLAMA31).withTorchDtype(DType.F16)
                .withQuantizationConfig(new ObjectMapper().readTree("{\"quant_method\": \"bitsandbytes\"}"));
        q.save(dir);
        ModelConfig back = ModelConfig.load(dir);
        assertEquals(q, back);
        assertEquals(DType.F16, back.torchDtype());
        var tree = new ObjectMapper().readTree(Files.readString(dir.resolve("config.json")));
        assertEquals("float16", tree.get("torch_dtype").asText());
        assertEquals("llama3", tree.get("rope_scaling").get("rope_type").asText());
        assertEquals(3, tree.get("eos_token_id").size());
        try (var files = Files.list(dir)) {
            assertEquals(1, files.count(), "no temp file left behind");
        }
    }

    @Test
    void missingFileSaysWhichFile(@TempDir Path dir) {
        var e = assertThrows(NoSuchFileException.class, () -> ModelConfig.load(dir));
        assertTrue(e.getMessage().contains("config.json"), e.getMessage());
    }
}
