package dev.qlora4j.quant;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.qlora4j.json.PythonJson;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.HostStorage;
import dev.qlora4j.tensor.Tensor;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Objects;
import java.util.function.Function;

/**
 * A bitsandbytes 4-bit weight: the packed codes plus bitsandbytes' {@code QuantState} (same field names:
 * absmax, shape, code = quant_map, dtype, blocksize, quant_type, offset, state2).
 *
 * <p>Layout: the weight of {@link #shape()} is flattened row-major (n values) and split into blocks of
 * {@link #blocksize()}; {@link #weight()} is U8 [(n+1)/2, 1], value 2i in the high nibble of byte i and
 * value 2i+1 in the low nibble (an odd count is padded with the code of 0). {@link #absmax()} is F32
 * [blocks], or U8 [blocks] when nested (double quantization), in which case the real absmax is
 * {@code state2.code[q] * state2.absmax[i / state2.blocksize] + offset} in float32.
 *
 * <p>Host tensors only (heap or memory-mapped); copy device tensors to the host first.
 */
public final class QuantState4bit {
    /** The nested statistics of double quantization. absmax: F32 [ceil(blocks / blocksize)], code: [256]. */
    public record Nested(Tensor absmax, float[] code, int blocksize, DType dtype) {
        public Nested {
            Objects.requireNonNull(absmax, "state2.absmax");
            Objects.requireNonNull(code, "state2.code");
            if (code.length != 256) throw new IllegalArgumentException("state2.code (nested_quant_map) must have 256 values, got " + code.length);
            if (absmax.dtype() != DType.F32) throw new IllegalArgumentException("state2.absmax (nested_absmax) must be F32, got " + absmax.dtype());
            if (dtype != DType.F32) throw new IllegalArgumentException("state2.dtype (nested_dtype) must be float32, got " + dtype);
            if (blocksize <= 0) throw new IllegalArgumentException("state2.blocksize (nested_blocksize) must be positive, got " + blocksize);
            code = code.clone();
        }

        @Override
        public float[] code() { return code.clone(); }
    }

    static final String QUANT_STATE_KEY = "quant_state.bitsandbytes__";
    private static final ObjectMapper JSON = new ObjectMapper();

    private final Tensor weight;      // U8 [(n+1)/2, 1] packed codes (other 1..4-byte storage dtypes are read as raw bytes)
    private final Tensor absmax;      // F32 [blocks], or U8 [blocks] when nested
    private final int[] shape;        // original weight shape, e.g. [out, in]
    private final float[] code;       // quant_map [16]
    private final DType dtype;        // original weight dtype (F32, F16, BF16): dequantize's default output
    private final int blocksize;
    private final QuantType quantType;
    private final float offset;       // mean of the absmax values (nested only, else 0)
    private final Nested state2;      // null unless nested
    private final long numel;
    private volatile float[] absmaxValues; // effective float32 absmax per block, computed once

    public QuantState4bit(Tensor weight, Tensor absmax, int[] shape, float[] code, DType dtype, int blocksize,
                          QuantType quantType, float offset, Nested state2) {
        this.weight = Objects.requireNonNull(weight, "weight");
        this.absmax = Objects.requireNonNull(absmax, "absmax");
        this.shape = Objects.requireNonNull(shape, "shape").clone();
        this.code = Objects.requireNonNull(code, "code").clone();
        this.dtype = Objects.requireNonNull(dtype, "dtype");
        this.quantType = Objects.requireNonNull(quantType, "quantType");
        this.blocksize = blocksize;
        this.offset = state2 == null ? 0f : offset;
        this.state2 = state2;
        Blockwise8bit.checkBlocksize(blocksize);
        this.numel = Tensor.numel(shape);
        if (numel > Integer.MAX_VALUE - 8) {
            throw new IllegalArgumentException("weight of shape " + Arrays.toString(shape) + " has more than 2^31 values; split it");
        }
        if (dtype != DType.F32 && dtype != DType.F16 && dtype != DType.BF16) {
            throw new IllegalArgumentException("dtype must be float32, float16 or bfloat16, got " + dtype.torchName());
        }
        if (code.length != 16) throw new IllegalArgumentException("code (quant_map) must have 16 values, got " + code.length);
        long needBytes = (numel + 1) / 2;
        if (weight.dtype() == DType.U8 ? weight.byteSize() != needBytes : weight.byteSize() < numel / 2) {
            throw new IllegalArgumentException("packed weight has " + weight.byteSize() + " bytes but shape "
                    + Arrays.toString(shape) + " needs " + needBytes);
        }
        long blocks = blocks();
        if (absmax.numel() != blocks) {
            throw new IllegalArgumentException("absmax has " + absmax.numel() + " values but shape " + Arrays.toString(shape)
                    + " with blocksize " + blocksize + " has " + blocks + " blocks");
        }
        DType wantAbsmax = state2 == null ? DType.F32 : DType.U8;
        if (absmax.dtype() != wantAbsmax) {
            throw new IllegalArgumentException("absmax must be " + wantAbsmax + (state2 == null ? " (not nested)" : " (nested)")
                    + ", got " + absmax.dtype());
        }
        if (state2 != null) {
            long nestedBlocks = (blocks + state2.blocksize() - 1) / state2.blocksize();
            if (state2.absmax().numel() != nestedBlocks) {
                throw new IllegalArgumentException("nested absmax has " + state2.absmax().numel() + " values but " + blocks
                        + " absmax values in blocks of " + state2.blocksize() + " need " + nestedBlocks);
            }
        }
    }

    // ---- bitsandbytes' fields ----

    /** Packed codes, U8 [(n+1)/2, 1]. */
    public Tensor weight() { return weight; }

    /** F32 [blocks], or the U8 [blocks] 8-bit codes when {@link #nested()}. */
    public Tensor absmax() { return absmax; }

    public int[] shape() { return shape.clone(); }

    /** quant_map, 16 values (a copy). */
    public float[] code() { return code.clone(); }

    /** Alias of {@link #code()} under its on-disk name. */
    public float[] quantMap() { return code(); }

    public DType dtype() { return dtype; }

    public int blocksize() { return blocksize; }

    public QuantType quantType() { return quantType; }

    /** Mean of the absmax values subtracted before double quantization (0 when not nested). */
    public float offset() { return offset; }

    public Nested state2() { return state2; }

    public boolean nested() { return state2 != null; }

    // ---- derived ----

    public long numel() { return numel; }

    public int blocks() { return (int) ((numel + blocksize - 1) / blocksize); }

    /** The float32 absmax of every block (double quantization undone), a copy. */
    public float[] dequantizedAbsmax() { return absmaxValues().clone(); }

    /** Cached effective absmax; callers must not modify it. */
    float[] absmaxValues() {
        float[] a = absmaxValues;
        if (a == null) {
            a = computeAbsmax();
            absmaxValues = a;
        }
        return a;
    }

    private float[] computeAbsmax() {
        if (state2 == null) return absmax.toFloatArray();
        MemorySegment q = absmax.segment();
        float[] nestedAbsmax = state2.absmax().toFloatArray();
        float[] nestedCode = state2.code;
        int nb = state2.blocksize();
        int blocks = blocks();
        float[] out = new float[blocks];
        for (int i = 0; i < blocks; i++) {
            // kDequantizeBlockwise: code[q] * absmax in float32, then torch adds the offset in float32
            float v = nestedCode[q.get(ValueLayout.JAVA_BYTE, i) & 0xFF] * nestedAbsmax[i / nb];
            out[i] = v + offset;
        }
        return out;
    }

    /** The packed bytes. */
    MemorySegment packed() { return weight.segment(); }

    // ---- safetensors ----

    /**
     * The tensors bitsandbytes' Linear4bit saves under a module prefix P: P.weight, P.weight.absmax,
     * P.weight.quant_map, [P.weight.nested_absmax, P.weight.nested_quant_map,]
     * P.weight.quant_state.bitsandbytes__nf4|fp4 (U8 UTF-8 JSON of the non-tensor fields).
     */
    public Map<String, Tensor> toSafetensors(String prefix) {
        Map<String, Tensor> out = new LinkedHashMap<>();
        String w = key(prefix, "weight");
        out.put(w, weight);
        out.put(w + ".absmax", absmax);
        out.put(w + ".quant_map", Tensor.of(code.clone(), 16));
        if (state2 != null) {
            out.put(w + ".nested_absmax", state2.absmax());
            out.put(w + ".nested_quant_map", Tensor.of(state2.code.clone(), 256));
        }
        out.put(w + "." + QUANT_STATE_KEY + quantType.bnbName(), jsonTensor(quantStateJson()));
        return out;
    }

    /** The JSON bitsandbytes packs into the quant_state tensor (QuantState.as_dict(packed=True)). */
    public String quantStateJson() {
        Map<String, Object> d = new LinkedHashMap<>();
        d.put("quant_type", quantType.bnbName());
        d.put("blocksize", blocksize);
        d.put("dtype", dtype.torchName());
        d.put("shape", shape.clone());
        if (state2 != null) {
            d.put("nested_blocksize", state2.blocksize());
            d.put("nested_dtype", state2.dtype().torchName());
            d.put("nested_offset", (double) offset); // offset.item(): the float32 value as a Python float
        }
        return PythonJson.dumps(d); // json.dumps defaults, as bitsandbytes packs it
    }

    private static Tensor jsonTensor(String json) {
        byte[] bytes = json.getBytes(StandardCharsets.UTF_8);
        return new Tensor(new HostStorage(MemorySegment.ofArray(bytes), null), DType.U8, true, bytes.length);
    }

    /** Reads the state saved under prefix P from a map of tensors (e.g. a loaded safetensors file). */
    public static QuantState4bit fromSafetensors(String prefix, Map<String, Tensor> tensors) {
        return fromSafetensors(prefix, (Function<String, Tensor>) tensors::get);
    }

    /**
     * Reads the state saved under prefix P; {@code lookup} returns null for a missing key. Missing or
     * inconsistent entries throw IllegalArgumentException naming the key and the problem.
     */
    public static QuantState4bit fromSafetensors(String prefix, Function<String, Tensor> lookup) {
        String w = key(prefix, "weight");
        Tensor weight = lookup.apply(w);
        if (weight == null) throw new IllegalArgumentException("missing '" + w + "' (the packed 4-bit weight)");
        String nf4Key = w + "." + QUANT_STATE_KEY + "nf4";
        String fp4Key = w + "." + QUANT_STATE_KEY + "fp4";
        Tensor nf4State = lookup.apply(nf4Key);
        Tensor fp4State = lookup.apply(fp4Key);
        if (nf4State == null && fp4State == null) {
            throw new IllegalArgumentException("missing '" + nf4Key + "' (or '..__fp4'): '" + w
                    + "' has no bitsandbytes 4-bit quant_state; is this weight really 4-bit quantized?");
        }
        if (nf4State != null && fp4State != null) {
            throw new IllegalArgumentException("both '" + nf4Key + "' and '" + fp4Key + "' are present; keep exactly one");
        }
        String stateKey = nf4State != null ? nf4Key : fp4Key;
        QuantType keyType = nf4State != null ? QuantType.NF4 : QuantType.FP4;
        JsonNode json = parseJson(stateKey, nf4State != null ? nf4State : fp4State);

        QuantType type;
        try {
            type = QuantType.fromBnbName(text(json, stateKey, "quant_type"));
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("'" + stateKey + "': " + e.getMessage());
        }
        if (type != keyType) {
            throw new IllegalArgumentException("'" + stateKey + "' says quant_type '" + type.bnbName() + "' but its key ends in __" + keyType.bnbName());
        }
        int blocksize = integer(json, stateKey, "blocksize");
        try {
            Blockwise8bit.checkBlocksize(blocksize);
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("'" + stateKey + "': " + e.getMessage());
        }
        DType dtype = floatDType(stateKey, "dtype", text(json, stateKey, "dtype"));
        JsonNode shapeNode = json.get("shape");
        if (shapeNode == null || !shapeNode.isArray()) {
            throw new IllegalArgumentException("'" + stateKey + "' has no \"shape\" list (the original weight shape)");
        }
        int[] shape = new int[shapeNode.size()];
        for (int i = 0; i < shape.length; i++) {
            if (!shapeNode.get(i).canConvertToInt() || shapeNode.get(i).asInt() < 0) {
                throw new IllegalArgumentException("'" + stateKey + "' has a bad shape " + shapeNode);
            }
            shape[i] = shapeNode.get(i).asInt();
        }
        long n = Tensor.numel(shape);
        long blocks = (n + blocksize - 1) / blocksize;
        long needBytes = (n + 1) / 2;
        if (weight.dtype() == DType.U8 ? weight.byteSize() != needBytes : weight.byteSize() < n / 2) {
            throw new IllegalArgumentException("'" + w + "' has " + weight.byteSize() + " bytes but shape "
                    + Arrays.toString(shape) + " from '" + stateKey + "' needs " + needBytes + " (two 4-bit codes per byte)");
        }

        boolean nestedJson = json.has("nested_blocksize") || json.has("nested_offset") || json.has("nested_dtype");
        String nestedAbsmaxKey = w + ".nested_absmax";
        String nestedMapKey = w + ".nested_quant_map";
        Tensor nestedAbsmax = lookup.apply(nestedAbsmaxKey);
        boolean nested = nestedJson || nestedAbsmax != null;
        if (nestedJson && nestedAbsmax == null) {
            throw new IllegalArgumentException("'" + stateKey + "' describes double quantization but '" + nestedAbsmaxKey + "' is missing");
        }
        if (!nestedJson && nestedAbsmax != null) {
            throw new IllegalArgumentException("'" + nestedAbsmaxKey + "' is present but '" + stateKey
                    + "' has no nested_blocksize / nested_offset / nested_dtype");
        }

        String absmaxKey = w + ".absmax";
        Tensor absmax = lookup.apply(absmaxKey);
        if (absmax == null) throw new IllegalArgumentException("missing '" + absmaxKey + "' (per-block scales)");
        DType wantAbsmax = nested ? DType.U8 : DType.F32;
        if (absmax.dtype() != wantAbsmax) {
            throw new IllegalArgumentException("'" + absmaxKey + "' is " + absmax.dtype() + " but must be " + wantAbsmax
                    + (nested ? " (double-quantized codes)" : " (float32 scales)"));
        }
        if (absmax.numel() != blocks) {
            throw new IllegalArgumentException("'" + absmaxKey + "' has " + absmax.numel() + " values but shape "
                    + Arrays.toString(shape) + " with blocksize " + blocksize + " has " + blocks + " blocks");
        }

        String mapKey = w + ".quant_map";
        float[] code = floats(lookup, mapKey, 16);
        float[] standard = type.quantMap();
        for (int i = 0; i < 16; i++) {
            if (code[i] != standard[i]) {
                throw new IllegalArgumentException("'" + mapKey + "'[" + i + "] = " + code[i] + " differs from bitsandbytes' "
                        + type.bnbName() + " table (" + standard[i] + "); the 4-bit kernels use the fixed table, so a custom map cannot be honoured");
            }
        }

        Nested state2 = null;
        float offset = 0f;
        if (nested) {
            int nestedBlocksize = integer(json, stateKey, "nested_blocksize");
            DType nestedDtype = floatDType(stateKey, "nested_dtype", text(json, stateKey, "nested_dtype"));
            if (nestedDtype != DType.F32) {
                throw new IllegalArgumentException("'" + stateKey + "': nested_dtype must be float32, got " + nestedDtype.torchName());
            }
            JsonNode off = json.get("nested_offset");
            if (off == null || !off.isNumber()) {
                throw new IllegalArgumentException("'" + stateKey + "' has no numeric nested_offset (mean of the absmax values)");
            }
            offset = (float) off.asDouble();
            if (nestedBlocksize <= 0) {
                throw new IllegalArgumentException("'" + stateKey + "': nested_blocksize must be positive, got " + nestedBlocksize);
            }
            if (nestedAbsmax.dtype() != DType.F32) {
                throw new IllegalArgumentException("'" + nestedAbsmaxKey + "' is " + nestedAbsmax.dtype() + " but must be F32");
            }
            long nestedBlocks = (blocks + nestedBlocksize - 1) / nestedBlocksize;
            if (nestedAbsmax.numel() != nestedBlocks) {
                throw new IllegalArgumentException("'" + nestedAbsmaxKey + "' has " + nestedAbsmax.numel() + " values but "
                        + blocks + " absmax codes in blocks of " + nestedBlocksize + " need " + nestedBlocks);
            }
            float[] nestedCode = floats(lookup, nestedMapKey, 256);
            state2 = new Nested(nestedAbsmax, nestedCode, nestedBlocksize, DType.F32);
        }
        return new QuantState4bit(weight, absmax, shape, code, dtype, blocksize, type, offset, state2);
    }

    private static JsonNode parseJson(String key, Tensor t) {
        if (t.dtype() != DType.U8 && t.dtype() != DType.I8) {
            throw new IllegalArgumentException("'" + key + "' must be a U8 tensor of UTF-8 JSON, got " + t.dtype());
        }
        byte[] bytes = t.segment().asSlice(0, t.byteSize()).toArray(ValueLayout.JAVA_BYTE);
        try {
            JsonNode node = JSON.readTree(new String(bytes, StandardCharsets.UTF_8));
            if (node == null || !node.isObject()) throw new IOException("not a JSON object");
            return node;
        } catch (IOException e) {
            throw new IllegalArgumentException("'" + key + "' does not hold a JSON object: " + e.getMessage());
        }
    }

    private static String text(JsonNode json, String key, String field) {
        JsonNode v = json.get(field);
        if (v == null || !v.isTextual()) throw new IllegalArgumentException("'" + key + "' has no string \"" + field + "\"");
        return v.asText();
    }

    private static int integer(JsonNode json, String key, String field) {
        JsonNode v = json.get(field);
        if (v == null || !v.isIntegralNumber() || !v.canConvertToInt()) {
            throw new IllegalArgumentException("'" + key + "' has no integer \"" + field + "\"");
        }
        return v.asInt();
    }

    private static DType floatDType(String key, String field, String name) {
        DType d;
        try {
            d = DType.fromTorchName(name);
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("'" + key + "': " + field + " '" + name + "' is not float32, float16 or bfloat16");
        }
        if (d != DType.F32 && d != DType.F16 && d != DType.BF16) {
            throw new IllegalArgumentException("'" + key + "': " + field + " '" + name + "' is not float32, float16 or bfloat16");
        }
        return d;
    }

    private static float[] floats(Function<String, Tensor> lookup, String key, int count) {
        Tensor t = lookup.apply(key);
        if (t == null) throw new IllegalArgumentException("missing '" + key + "'");
        if (t.dtype() != DType.F32) throw new IllegalArgumentException("'" + key + "' is " + t.dtype() + " but must be F32");
        if (t.numel() != count) throw new IllegalArgumentException("'" + key + "' has " + t.numel() + " values, expected " + count);
        return t.toFloatArray();
    }

    static String key(String prefix, String suffix) {
        return prefix == null || prefix.isEmpty() ? suffix : prefix + "." + suffix;
    }

    @Override
    public String toString() {
        return "QuantState4bit(" + quantType.bnbName() + ", " + dtype.torchName() + Arrays.toString(shape)
                + ", blocksize " + blocksize + (state2 != null ? ", nested" : "") + ")";
    }
}
