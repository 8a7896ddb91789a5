package dev.qlora4j.infer;

import dev.qlora4j.model.ModelConfig;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.*;

class GenerationConfigTest {
    static final ModelConfig MODEL = ModelConfig.parse("""
            {"architectures": ["LlamaForCausalLM"], "bos_token_id": 5, "eos_token_id": [6, 7], "pad_token_id": 0}""");

    @Test
    void missingFileGivesTransformersDefaultsWithModelIds(@TempDir Path dir) throws Exception {
        GenerationConfig g = GenerationConfig.load(dir, MODEL);
        assertEquals(5, g.bosTokenId());
        assertArrayEquals(new int[] {6, 7}, g.eosTokenIds());
        assertEquals(0, g.padTokenId());
        assertFalse(g.doSample());
        assertEquals(1.0, g.temperature());
        assertEquals(50, g.topK());
        assertEquals(1.0, g.topP());
        assertEquals(1.0, g.repetitionPenalty());
        assertNull(g.maxNewTokens());
        assertNull(g.minNewTokens());
        assertEquals(20, g.maxLength());
        assertEquals(0, g.minLength());
    }

    @Test
    void fileValuesWinAndAbsentKeysKeepDefaults(@TempDir Path dir) throws Exception {
        Files.writeString(dir.resolve("generation_config.json"), """
                {"_from_model_config": true, "bos_token_id": 128000, "do_sample": true,
                 "eos_token_id": [128001, 128009], "temperature": 0.6, "top_p": 0.9,
                 "max_new_tokens": 256, "transformers_version": "4.45.0"}""");
        GenerationConfig g = GenerationConfig.load(dir, MODEL);
        assertEquals(128000, g.bosTokenId());
        assertArrayEquals(new int[] {128001, 128009}, g.eosTokenIds());
        assertEquals(0, g.padTokenId(), "pad missing from the file comes from config.json");
        assertTrue(g.doSample());
        assertEquals(0.6, g.temperature());
        assertEquals(0.9, g.topP());
        assertEquals(50, g.topK());
        assertEquals(256, g.maxNewTokens());
    }

    @Test
    void eosAsSingleInt() {
        GenerationConfig g = GenerationConfig.parse("{\"eos_token_id\": 2, \"top_k\": 0}", null);
        assertArrayEquals(new int[] {2}, g.eosTokenIds());
        assertEquals(0, g.topK());
        assertNull(g.padTokenId());
    }

    @Test
    void invalidValuesAreRejectedWithTheKey() {
        var e = assertThrows(IllegalArgumentException.class, () -> GenerationConfig.parse("{\"top_p\": 1.5}", MODEL));
        assertTrue(e.getMessage().contains("top_p must be in (0, 1]"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> GenerationConfig.parse("{\"temperature\": 0}", MODEL));
        assertTrue(e.getMessage().contains("temperature must be > 0"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> GenerationConfig.parse("{\"top_k\": \"x\"}", MODEL));
        assertTrue(e.getMessage().contains("\"top_k\" must be an integer"), e.getMessage());
    }
}
