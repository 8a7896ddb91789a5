package dev.qlora4j.quant;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.qlora4j.tensor.DType;

import java.util.ArrayList;
import java.util.List;
import java.util.Set;

/**
 * transformers' BitsAndBytesConfig (config.json "quantization_config" with quant_method "bitsandbytes").
 *
 * @param llmInt8SkipModules modules kept unquantized; null means transformers' default (the output head,
 *                           see {@link #effectiveSkipModules()})
 * @param blocksize          4-bit blocksize (qlora4j extension, bitsandbytes' default 64; each saved weight
 *                           records its own blocksize, so files stay readable by bitsandbytes)
 */
public record QuantizationConfig(
        boolean loadIn8bit,
        boolean loadIn4bit,
        double llmInt8Threshold,
        List<String> llmInt8SkipModules,
        boolean llmInt8EnableFp32CpuOffload,
        boolean llmInt8HasFp16Weight,
        DType bnb4bitComputeDType,
        QuantType bnb4bitQuantType,
        boolean bnb4bitUseDoubleQuant,
        DType bnb4bitQuantStorage,
        int blocksize) {

    public static final String QUANT_METHOD = "bitsandbytes";
    public static final int DEFAULT_BLOCKSIZE = 64;
    /** Key under which a non-default blocksize is written (transformers ignores unknown keys). */
    static final String BLOCKSIZE_KEY = "bnb_4bit_blocksize";
    private static final Set<DType> STORAGE = Set.of(DType.F16, DType.F32, DType.I8, DType.U8, DType.F64, DType.BF16);

    public QuantizationConfig {
        if (loadIn4bit && loadIn8bit) {
            throw new IllegalArgumentException("load_in_4bit and load_in_8bit are both true; choose one");
        }
        if (bnb4bitComputeDType != DType.F32 && bnb4bitComputeDType != DType.F16 && bnb4bitComputeDType != DType.BF16) {
            throw new IllegalArgumentException("bnb_4bit_compute_dtype must be float32, float16 or bfloat16, got " + bnb4bitComputeDType);
        }
        if (bnb4bitQuantType == null) throw new IllegalArgumentException("bnb_4bit_quant_type is required (nf4 or fp4)");
        if (!STORAGE.contains(bnb4bitQuantStorage)) {
            throw new IllegalArgumentException("bnb_4bit_quant_storage must be one of float16, float32, int8, uint8, float64, bfloat16; got "
                    + bnb4bitQuantStorage);
        }
        if (!(llmInt8Threshold >= 0)) throw new IllegalArgumentException("llm_int8_threshold must be >= 0, got " + llmInt8Threshold);
        Blockwise8bit.checkBlocksize(blocksize);
        llmInt8SkipModules = llmInt8SkipModules == null ? null : List.copyOf(llmInt8SkipModules);
    }

    /** BitsAndBytesConfig() defaults: nothing quantized, fp4, float32 compute, threshold 6.0. */
    public static QuantizationConfig defaults() {
        return new QuantizationConfig(false, false, 6.0, null, false, false, DType.F32, QuantType.FP4, false, DType.U8, DEFAULT_BLOCKSIZE);
    }

    /** The QLoRA setup: 4-bit NF4, double quantization, bfloat16 compute. */
    public static QuantizationConfig qlora() {
        return new QuantizationConfig(false, true, 6.0, null, false, false, DType.BF16, QuantType.NF4, true, DType.U8, DEFAULT_BLOCKSIZE);
    }

    /** LLM.int8 with the default outlier threshold 6.0. */
    public static QuantizationConfig int8() {
        return new QuantizationConfig(true, false, 6.0, null, false, false, DType.F32, QuantType.FP4, false, DType.U8, DEFAULT_BLOCKSIZE);
    }

    /** The modules kept in full precision: the explicit list, or ["lm_head"] as transformers does by default. */
    public List<String> effectiveSkipModules() {
        return llmInt8SkipModules != null ? llmInt8SkipModules : List.of("lm_head");
    }

    /**
     * Parses config.json's quantization_config. quant_method must be "bitsandbytes" (a missing quant_method
     * is read as bitsandbytes, as early transformers versions wrote none). Unknown fields are ignored.
     */
    public static QuantizationConfig fromJson(JsonNode node) {
        if (node == null || !node.isObject()) {
            throw new IllegalArgumentException("quantization_config must be a JSON object");
        }
        JsonNode method = node.get("quant_method");
        if (method != null && !method.isNull() && !QUANT_METHOD.equals(method.asText())) {
            throw new IllegalArgumentException("quantization_config.quant_method is '" + method.asText()
                    + "'; qlora4j reads only bitsandbytes quantization (quant_method \"bitsandbytes\"): "
                    + "load the unquantized model and quantize it with load_in_4bit or load_in_8bit instead");
        }
        QuantizationConfig d = defaults();
        boolean in8 = bool(node, "load_in_8bit", bool(node, "_load_in_8bit", false));
        boolean in4 = bool(node, "load_in_4bit", bool(node, "_load_in_4bit", false));
        double threshold = node.has("llm_int8_threshold") && !node.get("llm_int8_threshold").isNull()
                ? number(node, "llm_int8_threshold") : d.llmInt8Threshold();
        List<String> skip = null;
        JsonNode skipNode = node.get("llm_int8_skip_modules");
        if (skipNode != null && !skipNode.isNull()) {
            if (!skipNode.isArray()) {
                throw new IllegalArgumentException("quantization_config.llm_int8_skip_modules must be a list of module names, got " + skipNode);
            }
            skip = new ArrayList<>();
            for (JsonNode s : skipNode) skip.add(s.asText());
        }
        DType compute = dtype(node, "bnb_4bit_compute_dtype", DType.F32);
        DType storage = dtype(node, "bnb_4bit_quant_storage", DType.U8);
        QuantType type = QuantType.FP4;
        JsonNode typeNode = node.get("bnb_4bit_quant_type");
        if (typeNode != null && !typeNode.isNull()) {
            try {
                type = QuantType.fromBnbName(typeNode.asText());
            } catch (IllegalArgumentException e) {
                throw new IllegalArgumentException("quantization_config.bnb_4bit_quant_type: " + e.getMessage());
            }
        }
        int blocksize = node.has(BLOCKSIZE_KEY) ? (int) number(node, BLOCKSIZE_KEY) : DEFAULT_BLOCKSIZE;
        try {
            return new QuantizationConfig(in8, in4, threshold, skip,
                    bool(node, "llm_int8_enable_fp32_cpu_offload", false), bool(node, "llm_int8_has_fp16_weight", false),
                    compute, type, bool(node, "bnb_4bit_use_double_quant", false), storage, blocksize);
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("quantization_config: " + e.getMessage());
        }
    }

    /** What transformers writes (BitsAndBytesConfig.to_dict, keys sorted as in config.json). */
    public ObjectNode toJsonNode() {
        ObjectNode n = JsonNodeFactory.instance.objectNode();
        n.put("_load_in_4bit", loadIn4bit);
        n.put("_load_in_8bit", loadIn8bit);
        n.put("bnb_4bit_compute_dtype", bnb4bitComputeDType.torchName());
        n.put("bnb_4bit_quant_storage", bnb4bitQuantStorage.torchName());
        n.put("bnb_4bit_quant_type", bnb4bitQuantType.bnbName());
        n.put("bnb_4bit_use_double_quant", bnb4bitUseDoubleQuant);
        if (blocksize != DEFAULT_BLOCKSIZE) n.put(BLOCKSIZE_KEY, blocksize);
        n.put("llm_int8_enable_fp32_cpu_offload", llmInt8EnableFp32CpuOffload);
        n.put("llm_int8_has_fp16_weight", llmInt8HasFp16Weight);
        if (llmInt8SkipModules == null) {
            n.putNull("llm_int8_skip_modules");
        } else {
            ArrayNode a = n.putArray("llm_int8_skip_modules");
            llmInt8SkipModules.forEach(a::add);
        }
        n.put("llm_int8_threshold", llmInt8Threshold);
        n.put("load_in_4bit", loadIn4bit);
        n.put("load_in_8bit", loadIn8bit);
        n.put("quant_method", QUANT_METHOD);
        return n;
    }

    /**
     * Stored bits per weight value of one [rows, cols] linear layer under this config: packed codes plus
     * scales (absmax, or 8-bit absmax + nested absmax + offset + the 256-entry map) plus the 16-entry map
     * for 4-bit; codes plus one float32 SCB per row for 8-bit. The JSON quant_state is not counted.
     */
    public double bitsPerParameter(long rows, long cols) {
        long n = rows * cols;
        if (n <= 0) throw new IllegalArgumentException("layer must have at least one value, got " + rows + " x " + cols);
        if (loadIn8bit) return (n * 8.0 + rows * 32.0) / n;
        if (!loadIn4bit) throw new IllegalStateException("config quantizes nothing (load_in_4bit and load_in_8bit are false)");
        long blocks = (n + blocksize - 1) / blocksize;
        long bytes = (n + 1) / 2 + 16 * 4;
        if (bnb4bitUseDoubleQuant) {
            long nested = (blocks + Quant4bit.NESTED_BLOCKSIZE - 1) / Quant4bit.NESTED_BLOCKSIZE;
            bytes += blocks + nested * 4 + 256 * 4 + 4;
        } else {
            bytes += blocks * 4;
        }
        return bytes * 8.0 / n;
    }

    /** Asymptotic bits per value for a layer of {@code params} values (as {@link #bitsPerParameter(long, long)}, one row). */
    public double bitsPerParameter(long params) {
        return bitsPerParameter(1, params);
    }

    private static boolean bool(JsonNode node, String field, boolean dflt) {
        JsonNode v = node.get(field);
        if (v == null || v.isNull()) return dflt;
        if (!v.isBoolean()) throw new IllegalArgumentException("quantization_config." + field + " must be true or false, got " + v);
        return v.asBoolean();
    }

    private static double number(JsonNode node, String field) {
        JsonNode v = node.get(field);
        if (v == null || !v.isNumber()) throw new IllegalArgumentException("quantization_config." + field + " must be a number, got " + v);
        return v.asDouble();
    }

    private static DType dtype(JsonNode node, String field, DType dflt) {
        JsonNode v = node.get(field);
        if (v == null || v.isNull()) return dflt;
        try {
            return DType.fromTorchName(v.asText());
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("quantization_config." + field + ": " + e.getMessage());
        }
    }
}
