package dev.qlora4j.peft.config;

import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * peft's PromptTuningConfig (peft_type "PROMPT_TUNING"): num_virtual_tokens learned input
 * embeddings, initialized randomly, from the embeddings of a text, or from sampled vocabulary.
 */
public record PromptTuningConfig(
        int numVirtualTokens, Integer tokenDim, Integer numTransformerSubmodules, Integer numAttentionHeads, Integer numLayers,
        Init promptTuningInit, String promptTuningInitText, String tokenizerNameOrPath, Map<String, Object> tokenizerKwargs,
        List<String> modulesToSave, String taskType, String baseModelNameOrPath, String revision, boolean inferenceMode,
        Map<String, Object> extra) implements PeftConfig {

    public static final String PEFT_TYPE = "PROMPT_TUNING";

    /** peft's PromptTuningInit. */
    public enum Init {
        TEXT, RANDOM, SAMPLE_VOCAB;

        static Init parse(String s) {
            String name = s.startsWith("PromptTuningInit.") ? s.substring("PromptTuningInit.".length()) : s;
            return Arrays.stream(values()).filter(v -> v.name().equals(name)).findFirst()
                    .orElseThrow(() -> new IllegalArgumentException("prompt_tuning_init must be one of " + Arrays.toString(values()) + ", got \"" + s + "\""));
        }
    }

    public PromptTuningConfig {
        if (numVirtualTokens <= 0) throw new IllegalArgumentException("num_virtual_tokens must be a positive integer, got " + numVirtualTokens);
        checkPositive("token_dim", tokenDim);
        checkPositive("num_transformer_submodules", numTransformerSubmodules);
        checkPositive("num_attention_heads", numAttentionHeads);
        checkPositive("num_layers", numLayers);
        if (promptTuningInit == null) promptTuningInit = Init.RANDOM;
        if (promptTuningInit == Init.TEXT && (tokenizerNameOrPath == null || tokenizerNameOrPath.isEmpty())) {
            throw new IllegalArgumentException("When prompt_tuning_init='TEXT', tokenizer_name_or_path can't be " + pyNone(tokenizerNameOrPath) + ".");
        }
        if (promptTuningInit == Init.TEXT && promptTuningInitText == null) {
            throw new IllegalArgumentException("When prompt_tuning_init='TEXT', prompt_tuning_init_text can't be None.");
        }
        if (tokenizerKwargs != null && !tokenizerKwargs.isEmpty() && promptTuningInit != Init.TEXT) {
            throw new IllegalArgumentException("tokenizer_kwargs only valid when using prompt_tuning_init='TEXT'.");
        }
        tokenizerKwargs = tokenizerKwargs == null ? null : Collections.unmodifiableMap(new TreeMap<>(tokenizerKwargs));
        modulesToSave = modulesToSave == null ? null : List.copyOf(modulesToSave);
        PeftConfig.checkTaskType(taskType);
        extra = Collections.unmodifiableMap(new TreeMap<>(extra == null ? Map.of() : extra));
    }

    /** Random-init causal-LM prompt of {@code numVirtualTokens} tokens. */
    public static PromptTuningConfig random(int numVirtualTokens) {
        return new PromptTuningConfig(numVirtualTokens, null, null, null, null, Init.RANDOM, null, null, null, null,
                "CAUSAL_LM", null, null, false, Map.of());
    }

    /** Causal-LM prompt initialized from the embeddings of {@code text} tokenized by {@code tokenizer}. */
    public static PromptTuningConfig fromText(int numVirtualTokens, String text, String tokenizer) {
        return new PromptTuningConfig(numVirtualTokens, null, null, null, null, Init.TEXT, text, tokenizer, null, null,
                "CAUSAL_LM", null, null, false, Map.of());
    }

    @Override public String peftType() { return PEFT_TYPE; }

    /** Fills unset dimensions from the model, as {@link PrefixTuningConfig#resolve}. */
    public PromptTuningConfig resolve(int numHiddenLayers, int hiddenSize, int numAttentionHeads) {
        return new PromptTuningConfig(numVirtualTokens, tokenDim != null ? tokenDim : hiddenSize,
                numTransformerSubmodules != null ? numTransformerSubmodules : ("SEQ_2_SEQ_LM".equals(taskType) ? 2 : 1),
                this.numAttentionHeads != null ? this.numAttentionHeads : numAttentionHeads,
                numLayers != null ? numLayers : numHiddenLayers, promptTuningInit, promptTuningInitText, tokenizerNameOrPath,
                tokenizerKwargs, modulesToSave, taskType, baseModelNameOrPath, revision, inferenceMode, extra);
    }

    @Override
    public Map<String, Object> toMap() {
        Map<String, Object> m = new TreeMap<>();
        m.put("auto_mapping", null);
        m.putAll(extra);
        putPromptLearning(m, PEFT_TYPE, numVirtualTokens, tokenDim, numTransformerSubmodules, numAttentionHeads, numLayers,
                modulesToSave, taskType, baseModelNameOrPath, revision, inferenceMode);
        m.put("prompt_tuning_init", promptTuningInit.name());
        m.put("prompt_tuning_init_text", promptTuningInitText);
        m.put("tokenizer_kwargs", tokenizerKwargs);
        m.put("tokenizer_name_or_path", tokenizerNameOrPath);
        return m;
    }

    static PromptTuningConfig fromFields(Fields f) {
        f.take("peft_type");
        Integer tokens = f.integer("num_virtual_tokens", null);
        if (tokens == null) throw new IllegalArgumentException(f.source() + ": \"num_virtual_tokens\" is required for PROMPT_TUNING");
        String init = f.string("prompt_tuning_init", "RANDOM");
        Object rawKwargs = f.take("tokenizer_kwargs");
        if (rawKwargs != null && !(rawKwargs instanceof Map<?, ?>)) throw f.bad("tokenizer_kwargs", "an object or null", rawKwargs);
        Map<String, Object> kwargs = rawKwargs == null ? null : toStringKeyed((Map<?, ?>) rawKwargs);
        return new PromptTuningConfig(tokens, f.integer("token_dim", null), f.integer("num_transformer_submodules", null),
                f.integer("num_attention_heads", null), f.integer("num_layers", null),
                Init.parse(init == null ? "RANDOM" : init), f.string("prompt_tuning_init_text", null),
                f.string("tokenizer_name_or_path", null), kwargs, f.strings("modules_to_save", false),
                f.string("task_type", null), f.string("base_model_name_or_path", null), f.string("revision", null),
                f.bool("inference_mode", false), withoutNullAutoMapping(f.rest()));
    }

    private static Map<String, Object> toStringKeyed(Map<?, ?> m) {
        Map<String, Object> out = new TreeMap<>();
        m.forEach((k, v) -> out.put((String) k, v));
        return out;
    }

    @Override
    public PromptTuningConfig withInferenceMode(boolean v) {
        return new PromptTuningConfig(numVirtualTokens, tokenDim, numTransformerSubmodules, numAttentionHeads, numLayers, promptTuningInit,
                promptTuningInitText, tokenizerNameOrPath, tokenizerKwargs, modulesToSave, taskType, baseModelNameOrPath, revision, v, extra);
    }

    @Override
    public PromptTuningConfig withBaseModel(String base, String rev) {
        return new PromptTuningConfig(numVirtualTokens, tokenDim, numTransformerSubmodules, numAttentionHeads, numLayers, promptTuningInit,
                promptTuningInitText, tokenizerNameOrPath, tokenizerKwargs, modulesToSave, taskType, base, rev, inferenceMode, extra);
    }

    // ---- shared with PrefixTuningConfig (peft's PromptLearningConfig fields) ----

    static void putPromptLearning(Map<String, Object> m, String peftType, int numVirtualTokens, Integer tokenDim,
                                  Integer numTransformerSubmodules, Integer numAttentionHeads, Integer numLayers,
                                  List<String> modulesToSave, String taskType, String base, String revision, boolean inferenceMode) {
        m.put("base_model_name_or_path", base);
        m.put("inference_mode", inferenceMode);
        m.put("modules_to_save", modulesToSave);
        m.put("num_attention_heads", numAttentionHeads);
        m.put("num_layers", numLayers);
        m.put("num_transformer_submodules", numTransformerSubmodules);
        m.put("num_virtual_tokens", numVirtualTokens);
        m.put("peft_type", peftType);
        m.put("revision", revision);
        m.put("task_type", taskType);
        m.put("token_dim", tokenDim);
    }

    static void checkPositive(String key, Integer v) {
        if (v != null && v <= 0) throw new IllegalArgumentException(key + " must be a positive integer, got " + v);
    }

    /** auto_mapping null is peft's default and always written; keep it out of extra. */
    static Map<String, Object> withoutNullAutoMapping(Map<String, Object> rest) {
        Map<String, Object> m = new TreeMap<>(rest);
        if (m.containsKey("auto_mapping") && m.get("auto_mapping") == null) m.remove("auto_mapping");
        return m;
    }

    private static String pyNone(String s) { return s == null ? "None" : s; }
}
