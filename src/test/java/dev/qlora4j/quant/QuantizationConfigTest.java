package dev.qlora4j.quant;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.qlora4j.tensor.DType;
import org.junit.jupiter.api.Test;

import java.util.List;

import static org.junit.jupiter.api.Assertions.*;

class QuantizationConfigTest {
    static final ObjectMapper JSON = new ObjectMapper();

    /** quantization_config as transformers writes it for a QLoRA model (sorted keys). */
    static final String TRANSFORMERS_QLORA = """
            {"_load_in_4bit": true, "_load_in_8bit": false, "bnb_4bit_compute_dtype": "bfloat16",
             "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": true,
             "llm_int8_enable_fp32_cpu_offload": false, "llm_int8_has_fp16_weight": false,
             "llm_int8_skip_modules": null, "llm_int8_threshold": 6.0, "load_in_4bit": true, "load_in_8bit": false,
             "quant_method": "bitsandbytes"}""";

    @Test
    void parsesAndWritesWhatTransformersWrites() throws Exception {
        JsonNode node = JSON.readTree(TRANSFORMERS_QLORA);
        QuantizationConfig c = QuantizationConfig.fromJson(node);
        assertTrue(c.loadIn4bit());
        assertFalse(c.loadIn8bit());
        assertEquals(QuantType.NF4, c.bnb4bitQuantType());
        assertEquals(DType.BF16, c.bnb4bitComputeDType());
        assertTrue(c.bnb4bitUseDoubleQuant());
        assertEquals(DType.U8, c.bnb4bitQuantStorage());
        assertEquals(6.0, c.llmInt8Threshold());
        assertNull(c.llmInt8SkipModules());
        assertEquals(List.of("lm_head"), c.effectiveSkipModules());
        assertEquals(64, c.blocksize());
        assertEquals(QuantizationConfig.qlora(), c);
        assertEquals(node, c.toJsonNode(), "round trip gives the same JSON");
        List<String> names = new java.util.ArrayList<>();
        c.toJsonNode().fieldNames().forEachRemaining(names::add);
        List<String> sorted = new java.util.ArrayList<>(names);
        java.util.Collections.sort(sorted);
        assertEquals(sorted, names, "keys in transformers' (sorted) order");
        assertEquals(13, names.size());
    }

    @Test
    void defaultsAndOlderConfigs() throws Exception {
        QuantizationConfig c = QuantizationConfig.fromJson(JSON.readTree("{\"load_in_8bit\": true, \"llm_int8_skip_modules\": [\"lm_head\", \"classifier\"]}"));
        assertTrue(c.loadIn8bit());
        assertEquals(QuantType.FP4, c.bnb4bitQuantType(), "bnb_4bit_quant_type defaults to fp4");
        assertEquals(DType.F32, c.bnb4bitComputeDType(), "compute dtype defaults to float32");
        assertEquals(List.of("lm_head", "classifier"), c.effectiveSkipModules());
        assertEquals(6.0, c.llmInt8Threshold());
        QuantizationConfig blocks = QuantizationConfig.fromJson(JSON.readTree(
                "{\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true, \"bnb_4bit_blocksize\": 128}"));
        assertEquals(128, blocks.blocksize());
        assertEquals(128, blocks.toJsonNode().get("bnb_4bit_blocksize").asInt());
        assertFalse(QuantizationConfig.qlora().toJsonNode().has("bnb_4bit_blocksize"), "default blocksize is not written");
    }

    @Test
    void clearErrors() throws Exception {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> QuantizationConfig.fromJson(JSON.readTree("{\"quant_method\": \"gptq\", \"bits\": 4}")));
        assertTrue(e.getMessage().contains("gptq") && e.getMessage().contains("bitsandbytes"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class,
                () -> QuantizationConfig.fromJson(JSON.readTree("{\"load_in_4bit\": true, \"load_in_8bit\": true}")));
        assertTrue(e.getMessage().contains("both"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class,
                () -> QuantizationConfig.fromJson(JSON.readTree("{\"load_in_4bit\": true, \"bnb_4bit_quant_type\": \"int4\"}")));
        assertTrue(e.getMessage().contains("bnb_4bit_quant_type"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class,
                () -> QuantizationConfig.fromJson(JSON.readTree("{\"load_in_4bit\": true, \"bnb_4bit_compute_dtype\": \"int8\"}")));
        assertTrue(e.getMessage().contains("bnb_4bit_compute_dtype"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class,
                () -> QuantizationConfig.fromJson(JSON.readTree("{\"load_in_4bit\": \"yes\"}")));
        assertTrue(e.getMessage().contains("load_in_4bit"), e.getMessage());
    }

    @Test
    void bitsPerParameter() {
        QuantizationConfig q = QuantizationConfig.qlora();
        double bits = q.bitsPerParameter(4096, 4096);
        // 4 (codes) + 8/64 (8-bit absmax) + 32/(64*256) (nested absmax) + tables
        assertEquals(4.127, bits, 0.001);
        assertEquals((8_388_608 + 64 + 262_144 + 1024 * 4 + 1024 + 4) * 8.0 / 16_777_216, bits, 1e-12);
        QuantizationConfig noDq = new QuantizationConfig(false, true, 6.0, null, false, false, DType.BF16, QuantType.NF4, false, DType.U8, 64);
        assertEquals(4.5, noDq.bitsPerParameter(1L << 30), 1e-6);
        assertEquals(8 + 32.0 / 4096, QuantizationConfig.int8().bitsPerParameter(4096, 4096), 1e-12);
        assertThrows(IllegalStateException.class, () -> QuantizationConfig.defaults().bitsPerParameter(10, 10));
    }
}
