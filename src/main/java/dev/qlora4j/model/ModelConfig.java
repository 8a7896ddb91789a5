package dev.qlora4j.model;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.qlora4j.tensor.DType;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/**
 * A decoder-only model's config.json (Llama, Mistral, Qwen2), with transformers' class defaults
 * applied to absent keys and unknown keys ignored (they are kept in {@link #raw} and written back
 * by {@link #toJson}).
 *
 * @param architecture          the transformers class: LlamaForCausalLM, MistralForCausalLM or Qwen2ForCausalLM
 * @param modelType             "llama", "mistral" or "qwen2"
 * @param headDim               explicit head_dim, else hidden_size / num_attention_heads
 * @param ropeTheta             RoPE base (rope_theta, or rope_parameters.rope_theta in transformers 5)
 * @param ropeScaling           scaled RoPE parameters; null for plain RoPE
 * @param qkvBias               q_proj/k_proj/v_proj have a bias (Llama: attention_bias; Qwen2: always)
 * @param oBias                 o_proj has a bias (Llama: attention_bias; Qwen2: never)
 * @param mlpBias               gate/up/down projections have a bias (Llama: mlp_bias)
 * @param slidingWindow         attention window in tokens for the layers {@link #layerTypes} marks
 *                              "sliding_attention"; null = full attention everywhere
 * @param layerTypes            per layer "full_attention" or "sliding_attention" [numHiddenLayers]
 * @param bosTokenId            nullable
 * @param eosTokenIds           int or list in config.json; empty when absent
 * @param padTokenId            nullable
 * @param torchDtype            dtype the weights were saved in ("torch_dtype", or "dtype" as transformers 5
 *                              writes it); null when config.json does not say
 * @param hiddenAct             always "silu" (or its alias "swish")
 * @param quantizationConfig    the raw quantization_config object (bitsandbytes ...), null when absent
 * @param raw                   the whole config.json as read (null for a config built in code)
 */
public record ModelConfig(
        String architecture, String modelType, int vocabSize, int hiddenSize, int intermediateSize,
        int numHiddenLayers, int numAttentionHeads, int numKeyValueHeads, int headDim,
        int maxPositionEmbeddings, double rmsNormEps, double ropeTheta, RopeScaling ropeScaling,
        boolean tieWordEmbeddings, boolean qkvBias, boolean oBias, boolean mlpBias,
        Integer slidingWindow, List<String> layerTypes, Integer bosTokenId, int[] eosTokenIds,
        Integer padTokenId, DType torchDtype, String hiddenAct, JsonNode quantizationConfig, JsonNode raw) {

    /** Architecture class name -> transformers model_type, for every architecture qlora4j runs. */
    public static final Map<String, String> SUPPORTED = Map.of(
            "LlamaForCausalLM", "llama",
            "MistralForCausalLM", "mistral",
            "Qwen2ForCausalLM", "qwen2");

    public static final String FULL_ATTENTION = "full_attention";
    public static final String SLIDING_ATTENTION = "sliding_attention";

    private static final ObjectMapper JSON = new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT);

    /** Keys this record owns; everything else in {@link #raw} is carried through {@link #toJson} untouched. */
    private static final List<String> OWN_KEYS = List.of("architectures", "model_type", "vocab_size", "hidden_size",
            "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
            "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
            "tie_word_embeddings", "attention_bias", "mlp_bias", "sliding_window", "use_sliding_window",
            "layer_types", "bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype", "dtype", "hidden_act",
            "quantization_config");

    public ModelConfig {
        Objects.requireNonNull(architecture, "architecture");
        Objects.requireNonNull(modelType, "modelType");
        eosTokenIds = eosTokenIds == null ? new int[0] : eosTokenIds.clone();
        positive("config.json (" + architecture + ")", "num_hidden_layers", numHiddenLayers);
        layerTypes = layerTypes == null ? Collections.nCopies(numHiddenLayers, slidingWindow == null
                ? FULL_ATTENTION : SLIDING_ATTENTION) : List.copyOf(layerTypes);
        hiddenAct = hiddenAct == null ? "silu" : hiddenAct;
        validate(architecture, vocabSize, hiddenSize, intermediateSize, numHiddenLayers, numAttentionHeads,
                numKeyValueHeads, headDim, maxPositionEmbeddings, rmsNormEps, ropeTheta, slidingWindow, layerTypes,
                hiddenAct);
    }

    /** Reads dir/config.json. */
    public static ModelConfig load(Path dir) throws IOException {
        Path file = dir.resolve("config.json");
        String text;
        try {
            text = Files.readString(file, StandardCharsets.UTF_8);
        } catch (NoSuchFileException e) {
            throw new NoSuchFileException(file.toString(), null,
                    "config.json is missing: pass a Hugging Face model folder (config.json, *.safetensors, tokenizer.json)");
        }
        return parse(text, file.toString());
    }

    /** Parses config.json text. */
    public static ModelConfig parse(String json) {
        return parse(json, "config.json");
    }

    private static ModelConfig parse(String json, String source) {
        JsonNode root;
        try {
            root = JSON.readTree(json);
        } catch (JsonProcessingException e) {
            throw new IllegalArgumentException(source + " is not valid JSON: " + e.getOriginalMessage(), e);
        }
        if (root == null || !root.isObject()) {
            throw new IllegalArgumentException(source + " must hold a JSON object");
        }
        return fromJson((ObjectNode) root, source);
    }

    private static ModelConfig fromJson(ObjectNode n, String source) {
        String[] arch = resolveArchitecture(n, source);
        String architecture = arch[0], modelType = arch[1];
        Defaults d = Defaults.of(modelType);
        Fields f = new Fields(n, source);

        int hidden = f.integer("hidden_size", d.hiddenSize);
        int heads = f.integer("num_attention_heads", d.heads);
        // null means "as many as query heads" (transformers' backward compatibility) for every family
        int kvHeads = n.has("num_key_value_heads") ? f.integer("num_key_value_heads", heads)
                : (d.kvHeads == null ? heads : d.kvHeads);
        if (heads <= 0) throw new IllegalArgumentException(source + ": num_attention_heads must be > 0, got " + heads);
        int headDim = f.integer("head_dim", hidden / heads);
        int layers = f.integer("num_hidden_layers", d.layers);
        int maxPos = f.integer("max_position_embeddings", d.maxPositionEmbeddings);

        // transformers 5 writes rope_parameters {rope_type, rope_theta, ...}; older files rope_theta + rope_scaling.
        JsonNode ropeParams = n.get("rope_parameters");
        JsonNode ropeScalingNode = n.get("rope_scaling");
        JsonNode scalingSource = ropeScalingNode != null && !ropeScalingNode.isNull() && !ropeScalingNode.isEmpty()
                ? ropeScalingNode : ropeParams;
        double ropeTheta;
        if (scalingSource != null && scalingSource.hasNonNull("rope_theta")) {
            ropeTheta = scalingSource.get("rope_theta").asDouble();
        } else if (ropeParams != null && ropeParams.hasNonNull("rope_theta")) {
            ropeTheta = ropeParams.get("rope_theta").asDouble();
        } else {
            ropeTheta = f.dbl("rope_theta", 10000.0);
        }
        RopeScaling rope = RopeScaling.fromJson(scalingSource, source);

        boolean qkvBias, oBias, mlpBias;
        Integer window;
        List<String> layerTypes = null;
        switch (modelType) {
            case "llama" -> {
                qkvBias = oBias = f.bool("attention_bias", false);
                mlpBias = f.bool("mlp_bias", false);
                window = null;
            }
            case "mistral" -> {
                qkvBias = oBias = mlpBias = false;
                window = n.has("sliding_window") ? f.nullableInt("sliding_window") : Integer.valueOf(4096);
            }
            case "qwen2" -> {
                qkvBias = true;
                oBias = mlpBias = false;
                boolean use = f.bool("use_sliding_window", false);
                window = !use ? null
                        : n.has("sliding_window") ? f.nullableInt("sliding_window") : Integer.valueOf(4096);
                if (window != null) {
                    layerTypes = f.stringList("layer_types");
                    if (layerTypes == null) {
                        int from = f.integer("max_window_layers", 28);
                        layerTypes = new ArrayList<>(layers);
                        for (int i = 0; i < layers; i++) layerTypes.add(i >= from ? SLIDING_ATTENTION : FULL_ATTENTION);
                    }
                }
            }
            default -> throw new IllegalStateException("unreachable: " + modelType);
        }

        DType dtype = null;
        String dtypeKey = n.hasNonNull("torch_dtype") ? "torch_dtype" : n.hasNonNull("dtype") ? "dtype" : null;
        if (dtypeKey != null) {
            try {
                dtype = DType.fromTorchName(n.get(dtypeKey).asText());
            } catch (IllegalArgumentException e) {
                throw new IllegalArgumentException(source + ": " + dtypeKey + ": " + e.getMessage(), e);
            }
        }
        JsonNode quant = n.get("quantization_config");

        try {
            return new ModelConfig(architecture, modelType,
                    f.integer("vocab_size", d.vocabSize), hidden, f.integer("intermediate_size", d.intermediateSize),
                    layers, heads, kvHeads, headDim, maxPos, f.dbl("rms_norm_eps", 1e-6), ropeTheta, rope,
                    f.bool("tie_word_embeddings", false), qkvBias, oBias, mlpBias, window, layerTypes,
                    n.has("bos_token_id") ? f.nullableInt("bos_token_id") : d.bosTokenId,
                    n.has("eos_token_id") ? tokenIds(n.get("eos_token_id"), source + ": eos_token_id")
                            : (d.eosTokenId == null ? new int[0] : new int[] {d.eosTokenId}),
                    f.nullableInt("pad_token_id"), dtype, f.string("hidden_act", "silu"),
                    quant == null || quant.isNull() ? null : quant.deepCopy(), n.deepCopy());
        } catch (IllegalArgumentException e) {
            if (e.getMessage() != null && e.getMessage().startsWith(source)) throw e;
            throw new IllegalArgumentException(source + ": " + e.getMessage(), e);
        }
    }

    /** Finds the architecture from "architectures" (first entry) and/or "model_type". */
    private static String[] resolveArchitecture(ObjectNode n, String source) {
        String modelType = n.hasNonNull("model_type") ? n.get("model_type").asText() : null;
        String architecture = null;
        JsonNode archs = n.get("architectures");
        if (archs != null && archs.isArray() && !archs.isEmpty()) architecture = archs.get(0).asText();
        List<String> supported = SUPPORTED.keySet().stream().sorted().toList();
        if (architecture != null) {
            String expectedType = SUPPORTED.get(architecture);
            if (expectedType == null) {
                throw new UnsupportedArchitectureException(source, "architecture " + architecture
                        + (modelType != null ? " (model_type '" + modelType + "')" : ""), supported);
            }
            if (modelType != null && !modelType.equals(expectedType)) {
                throw new UnsupportedArchitectureException(source, "architecture " + architecture
                        + " with model_type '" + modelType + "' (expected '" + expectedType + "')", supported);
            }
            return new String[] {architecture, expectedType};
        }
        if (modelType == null) {
            throw new IllegalArgumentException(source + " has neither \"architectures\" nor \"model_type\": add"
                    + " \"architectures\": [\"LlamaForCausalLM\"] (or Mistral/Qwen2) as transformers writes it");
        }
        for (Map.Entry<String, String> e : SUPPORTED.entrySet()) {
            if (e.getValue().equals(modelType)) return new String[] {e.getKey(), modelType};
        }
        throw new UnsupportedArchitectureException(source, "model_type '" + modelType + "'", supported);
    }

    private static void validate(String arch, int vocab, int hidden, int intermediate, int layers, int heads,
                                 int kvHeads, int headDim, int maxPos, double eps, double theta,
                                 Integer window, List<String> layerTypes, String act) {
        String w = "config.json (" + arch + ")";
        positive(w, "vocab_size", vocab);
        positive(w, "hidden_size", hidden);
        positive(w, "intermediate_size", intermediate);
        positive(w, "num_hidden_layers", layers);
        positive(w, "num_attention_heads", heads);
        positive(w, "num_key_value_heads", kvHeads);
        positive(w, "head_dim", headDim);
        positive(w, "max_position_embeddings", maxPos);
        if (hidden % heads != 0) {
            throw new IllegalArgumentException(w + ": hidden_size (" + hidden + ") must be divisible by"
                    + " num_attention_heads (" + heads + ")");
        }
        if (heads % kvHeads != 0) {
            throw new IllegalArgumentException(w + ": num_attention_heads (" + heads + ") must be divisible by"
                    + " num_key_value_heads (" + kvHeads + ") for grouped-query attention");
        }
        if (headDim % 2 != 0) {
            throw new IllegalArgumentException(w + ": head_dim (" + headDim + ") must be even for rotary embeddings");
        }
        if (!(eps > 0)) throw new IllegalArgumentException(w + ": rms_norm_eps must be > 0, got " + eps);
        if (!(theta > 0)) throw new IllegalArgumentException(w + ": rope_theta must be > 0, got " + theta);
        if (window != null && window <= 0) {
            throw new IllegalArgumentException(w + ": sliding_window must be > 0 or null, got " + window);
        }
        if (layerTypes.size() != layers) {
            throw new IllegalArgumentException(w + ": layer_types has " + layerTypes.size() + " entries but"
                    + " num_hidden_layers is " + layers);
        }
        for (String t : layerTypes) {
            if (!t.equals(FULL_ATTENTION) && !t.equals(SLIDING_ATTENTION)) {
                throw new IllegalArgumentException(w + ": layer_types entry '" + t + "' is not "
                        + FULL_ATTENTION + " or " + SLIDING_ATTENTION);
            }
        }
        if (!act.equals("silu") && !act.equals("swish")) {
            throw new IllegalArgumentException(w + ": hidden_act '" + act + "' is not supported; Llama, Mistral"
                    + " and Qwen2 use \"silu\" (SwiGLU MLP). Fix the config or use a supported checkpoint");
        }
    }

    private static void positive(String where, String key, int value) {
        if (value <= 0) throw new IllegalArgumentException(where + ": " + key + " must be > 0, got " + value);
    }

    /** Parses a token id field that may be an int, a list of ints or null (-> empty). */
    public static int[] tokenIds(JsonNode v, String what) {
        if (v == null || v.isNull()) return new int[0];
        if (v.isIntegralNumber()) return new int[] {v.asInt()};
        if (v.isArray()) {
            int[] ids = new int[v.size()];
            for (int i = 0; i < ids.length; i++) {
                if (!v.get(i).isIntegralNumber()) {
                    throw new IllegalArgumentException(what + " must be an int or a list of ints, got " + v);
                }
                ids[i] = v.get(i).asInt();
            }
            return ids;
        }
        throw new IllegalArgumentException(what + " must be an int or a list of ints, got " + v);
    }

    // ---------------------------------------------------------------- accessors beyond the components

    @Override
    public int[] eosTokenIds() { return eosTokenIds.clone(); }

    /** The sliding window of one layer, or null when that layer attends to the whole sequence. */
    public Integer slidingWindow(int layer) {
        return SLIDING_ATTENTION.equals(layerTypes.get(layer)) ? slidingWindow : null;
    }

    /** Number of query heads sharing one key/value head. */
    public int kvGroups() { return numAttentionHeads / numKeyValueHeads; }

    /** This config with another quantization_config (null removes it), for writing quantized checkpoints. */
    public ModelConfig withQuantizationConfig(JsonNode q) {
        return new ModelConfig(architecture, modelType, vocabSize, hiddenSize, intermediateSize, numHiddenLayers,
                numAttentionHeads, numKeyValueHeads, headDim, maxPositionEmbeddings, rmsNormEps, ropeTheta,
                ropeScaling, tieWordEmbeddings, qkvBias, oBias, mlpBias, slidingWindow, layerTypes, bosTokenId,
                eosTokenIds, padTokenId, torchDtype, hiddenAct, q == null ? null : q.deepCopy(), raw);
    }

    /** This config with another torch_dtype, for writing merged checkpoints. */
    public ModelConfig withTorchDtype(DType dtype) {
        return new ModelConfig(architecture, modelType, vocabSize, hiddenSize, intermediateSize, numHiddenLayers,
                numAttentionHeads, numKeyValueHeads, headDim, maxPositionEmbeddings, rmsNormEps, ropeTheta,
                ropeScaling, tieWordEmbeddings, qkvBias, oBias, mlpBias, slidingWindow, layerTypes, bosTokenId,
                eosTokenIds, padTokenId, dtype, hiddenAct, quantizationConfig, raw);
    }

    /** This config with tie_word_embeddings changed (a merged adapter's own lm_head unties it). */
    public ModelConfig withTieWordEmbeddings(boolean tie) {
        return new ModelConfig(architecture, modelType, vocabSize, hiddenSize, intermediateSize, numHiddenLayers,
                numAttentionHeads, numKeyValueHeads, headDim, maxPositionEmbeddings, rmsNormEps, ropeTheta,
                ropeScaling, tie, qkvBias, oBias, mlpBias, slidingWindow, layerTypes, bosTokenId,
                eosTokenIds, padTokenId, torchDtype, hiddenAct, quantizationConfig, raw);
    }

    // ---------------------------------------------------------------- writing

    /**
     * config.json text that transformers 4.x and 5 both load: rope_theta + rope_scaling (which
     * transformers 5 converts to rope_parameters itself), "torch_dtype", eos as an int or a list,
     * followed by every key of the original file this record does not model.
     */
    public String toJson() {
        ObjectNode o = JSON.createObjectNode();
        o.putArray("architectures").add(architecture);
        o.put("model_type", modelType);
        o.put("vocab_size", vocabSize);
        o.put("hidden_size", hiddenSize);
        o.put("intermediate_size", intermediateSize);
        o.put("num_hidden_layers", numHiddenLayers);
        o.put("num_attention_heads", numAttentionHeads);
        o.put("num_key_value_heads", numKeyValueHeads);
        o.put("head_dim", headDim);
        o.put("max_position_embeddings", maxPositionEmbeddings);
        o.put("rms_norm_eps", rmsNormEps);
        o.put("rope_theta", ropeTheta);
        if (ropeScaling == null) o.putNull("rope_scaling");
        else ropeScaling.writeTo(o.putObject("rope_scaling"));
        o.put("hidden_act", hiddenAct);
        o.put("tie_word_embeddings", tieWordEmbeddings);
        switch (modelType) {
            case "llama" -> {
                o.put("attention_bias", qkvBias);
                o.put("mlp_bias", mlpBias);
            }
            case "mistral" -> {
                if (slidingWindow == null) o.putNull("sliding_window");
                else o.put("sliding_window", slidingWindow);
            }
            case "qwen2" -> {
                o.put("use_sliding_window", slidingWindow != null);
                if (slidingWindow != null) {
                    o.put("sliding_window", slidingWindow);
                    ArrayNode lt = o.putArray("layer_types");
                    layerTypes.forEach(lt::add);
                } else if (raw != null && raw.has("sliding_window")) {
                    o.set("sliding_window", raw.get("sliding_window"));
                }
            }
            default -> throw new IllegalStateException("unreachable: " + modelType);
        }
        if (bosTokenId == null) o.putNull("bos_token_id");
        else o.put("bos_token_id", bosTokenId);
        if (eosTokenIds.length == 1) o.put("eos_token_id", eosTokenIds[0]);
        else if (eosTokenIds.length == 0) o.putNull("eos_token_id");
        else {
            ArrayNode a = o.putArray("eos_token_id");
            for (int id : eosTokenIds) a.add(id);
        }
        if (padTokenId == null) o.putNull("pad_token_id");
        else o.put("pad_token_id", padTokenId);
        if (torchDtype != null) o.put("torch_dtype", torchDtype.torchName());
        if (quantizationConfig != null) o.set("quantization_config", quantizationConfig.deepCopy());
        if (raw != null) {
            raw.fields().forEachRemaining(e -> {
                if (!OWN_KEYS.contains(e.getKey()) && !o.has(e.getKey())) o.set(e.getKey(), e.getValue().deepCopy());
            });
        }
        try {
            return JSON.writeValueAsString(o) + "\n";
        } catch (JsonProcessingException e) {
            throw new IllegalStateException(e);
        }
    }

    /** Writes dir/config.json atomically (temp file in dir, then rename). */
    public void save(Path dir) throws IOException {
        Files.createDirectories(dir);
        Path tmp = Files.createTempFile(dir, "config.json.", ".tmp");
        try {
            Files.writeString(tmp, toJson(), StandardCharsets.UTF_8);
            Files.move(tmp, dir.resolve("config.json"), StandardCopyOption.REPLACE_EXISTING,
                    StandardCopyOption.ATOMIC_MOVE);
        } finally {
            Files.deleteIfExists(tmp);
        }
    }

    // ---------------------------------------------------------------- equality without the raw JSON

    @Override
    public boolean equals(Object other) {
        return other instanceof ModelConfig c && architecture.equals(c.architecture) && modelType.equals(c.modelType)
                && vocabSize == c.vocabSize && hiddenSize == c.hiddenSize && intermediateSize == c.intermediateSize
                && numHiddenLayers == c.numHiddenLayers && numAttentionHeads == c.numAttentionHeads
                && numKeyValueHeads == c.numKeyValueHeads && headDim == c.headDim
                && maxPositionEmbeddings == c.maxPositionEmbeddings && rmsNormEps == c.rmsNormEps
                && ropeTheta == c.ropeTheta && Objects.equals(ropeScaling, c.ropeScaling)
                && tieWordEmbeddings == c.tieWordEmbeddings && qkvBias == c.qkvBias && oBias == c.oBias
                && mlpBias == c.mlpBias && Objects.equals(slidingWindow, c.slidingWindow)
                && layerTypes.equals(c.layerTypes) && Objects.equals(bosTokenId, c.bosTokenId)
                && Arrays.equals(eosTokenIds, c.eosTokenIds) && Objects.equals(padTokenId, c.padTokenId)
                && torchDtype == c.torchDtype && hiddenAct.equals(c.hiddenAct)
                && Objects.equals(quantizationConfig, c.quantizationConfig);
    }

    @Override
    public int hashCode() {
        return Objects.hash(architecture, vocabSize, hiddenSize, intermediateSize, numHiddenLayers,
                numAttentionHeads, numKeyValueHeads, headDim, ropeTheta, ropeScaling, Arrays.hashCode(eosTokenIds));
    }

    @Override
    public String toString() {
        return "ModelConfig[" + architecture + ", vocab=" + vocabSize + ", hidden=" + hiddenSize + ", intermediate="
                + intermediateSize + ", layers=" + numHiddenLayers + ", heads=" + numAttentionHeads + "/"
                + numKeyValueHeads + ", headDim=" + headDim + ", maxPos=" + maxPositionEmbeddings + ", theta="
                + ropeTheta + ", rope=" + ropeScaling + ", slidingWindow=" + slidingWindow + ", eos="
                + Arrays.toString(eosTokenIds) + ", dtype=" + torchDtype
                + (quantizationConfig != null ? ", quantized" : "") + "]";
    }

    /** transformers' class defaults for keys absent from config.json. */
    private record Defaults(int vocabSize, int hiddenSize, int intermediateSize, int layers, int heads,
                            Integer kvHeads, int maxPositionEmbeddings, Integer bosTokenId, Integer eosTokenId) {
        static Defaults of(String modelType) {
            return switch (modelType) {
                case "llama" -> new Defaults(32000, 4096, 11008, 32, 32, null, 2048, 1, 2);
                case "mistral" -> new Defaults(32000, 4096, 14336, 32, 32, 8, 4096 * 32, 1, 2);
                case "qwen2" -> new Defaults(151936, 4096, 22016, 32, 32, 32, 32768, null, null);
                default -> throw new IllegalStateException("unreachable: " + modelType);
            };
        }
    }

    /** Typed reads of config.json keys with messages that name the file and the key. */
    private record Fields(JsonNode n, String source) {
        int integer(String key, int dflt) {
            JsonNode v = n.get(key);
            if (v == null || v.isNull()) return dflt;
            if (!v.isIntegralNumber()) throw bad(key, "an integer", v);
            return v.asInt();
        }

        Integer nullableInt(String key) {
            JsonNode v = n.get(key);
            if (v == null || v.isNull()) return null;
            if (!v.isIntegralNumber()) throw bad(key, "an integer or null", v);
            return v.asInt();
        }

        double dbl(String key, double dflt) {
            JsonNode v = n.get(key);
            if (v == null || v.isNull()) return dflt;
            if (!v.isNumber()) throw bad(key, "a number", v);
            return v.asDouble();
        }

        boolean bool(String key, boolean dflt) {
            JsonNode v = n.get(key);
            if (v == null || v.isNull()) return dflt;
            if (!v.isBoolean()) throw bad(key, "true or false", v);
            return v.asBoolean();
        }

        String string(String key, String dflt) {
            JsonNode v = n.get(key);
            if (v == null || v.isNull()) return dflt;
            if (!v.isTextual()) throw bad(key, "a string", v);
            return v.asText();
        }

        List<String> stringList(String key) {
            JsonNode v = n.get(key);
            if (v == null || v.isNull()) return null;
            if (!v.isArray()) throw bad(key, "a list of strings", v);
            List<String> out = new ArrayList<>();
            v.forEach(e -> out.add(e.asText()));
            return out;
        }

        private IllegalArgumentException bad(String key, String expected, JsonNode v) {
            return new IllegalArgumentException(source + ": \"" + key + "\" must be " + expected + ", got " + v);
        }
    }
}
