package dev.qlora4j.peft.config;

import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * peft's PrefixTuningConfig (peft_type "PREFIX_TUNING"): num_virtual_tokens learned key/value
 * prefixes per layer, optionally produced by a two-layer MLP (prefix_projection, hidden size
 * encoder_hidden_size) during training. The model dimensions may be null until
 * {@link #resolve(int, int, int)} fills them from the model config (peft's
 * _prepare_prompt_learning_config).
 */
public record PrefixTuningConfig(
        int numVirtualTokens, Integer tokenDim, Integer numTransformerSubmodules, Integer numAttentionHeads, Integer numLayers,
        Integer encoderHiddenSize, boolean prefixProjection, List<String> modulesToSave,
        String taskType, String baseModelNameOrPath, String revision, boolean inferenceMode,
        Map<String, Object> extra) implements PeftConfig {

    public static final String PEFT_TYPE = "PREFIX_TUNING";

    public PrefixTuningConfig {
        if (numVirtualTokens <= 0) throw new IllegalArgumentException("num_virtual_tokens must be a positive integer, got " + numVirtualTokens);
        PromptTuningConfig.checkPositive("token_dim", tokenDim);
        PromptTuningConfig.checkPositive("num_transformer_submodules", numTransformerSubmodules);
        PromptTuningConfig.checkPositive("num_attention_heads", numAttentionHeads);
        PromptTuningConfig.checkPositive("num_layers", numLayers);
        PromptTuningConfig.checkPositive("encoder_hidden_size", encoderHiddenSize);
        modulesToSave = modulesToSave == null ? null : List.copyOf(modulesToSave);
        PeftConfig.checkTaskType(taskType);
        extra = Collections.unmodifiableMap(new TreeMap<>(extra == null ? Map.of() : extra));
    }

    /** A causal-LM prefix of {@code numVirtualTokens} tokens, dimensions to be resolved from the model. */
    public static PrefixTuningConfig of(int numVirtualTokens, boolean prefixProjection) {
        return new PrefixTuningConfig(numVirtualTokens, null, null, null, null, null, prefixProjection, null,
                "CAUSAL_LM", null, null, false, Map.of());
    }

    @Override public String peftType() { return PEFT_TYPE; }

    /**
     * Fills unset dimensions from the model (num_hidden_layers, hidden_size, num_attention_heads);
     * encoder_hidden_size defaults to token_dim and num_transformer_submodules to 1 (2 for
     * SEQ_2_SEQ_LM), as peft does.
     */
    public PrefixTuningConfig resolve(int numHiddenLayers, int hiddenSize, int numAttentionHeads) {
        Integer dim = tokenDim != null ? tokenDim : hiddenSize;
        return new PrefixTuningConfig(numVirtualTokens, dim,
                numTransformerSubmodules != null ? numTransformerSubmodules : ("SEQ_2_SEQ_LM".equals(taskType) ? 2 : 1),
                this.numAttentionHeads != null ? this.numAttentionHeads : numAttentionHeads,
                numLayers != null ? numLayers : numHiddenLayers,
                encoderHiddenSize != null ? encoderHiddenSize : dim,
                prefixProjection, modulesToSave, taskType, baseModelNameOrPath, revision, inferenceMode, extra);
    }

    @Override
    public Map<String, Object> toMap() {
        Map<String, Object> m = new TreeMap<>();
        m.put("auto_mapping", null);
        m.putAll(extra);
        PromptTuningConfig.putPromptLearning(m, PEFT_TYPE, numVirtualTokens, tokenDim, numTransformerSubmodules, numAttentionHeads,
                numLayers, modulesToSave, taskType, baseModelNameOrPath, revision, inferenceMode);
        m.put("encoder_hidden_size", encoderHiddenSize);
        m.put("prefix_projection", prefixProjection);
        return m;
    }

    static PrefixTuningConfig fromFields(Fields f) {
        f.take("peft_type");
        Integer tokens = f.integer("num_virtual_tokens", null);
        if (tokens == null) throw new IllegalArgumentException(f.source() + ": \"num_virtual_tokens\" is required for PREFIX_TUNING");
        PrefixTuningConfig c = new PrefixTuningConfig(tokens, f.integer("token_dim", null), f.integer("num_transformer_submodules", null),
                f.integer("num_attention_heads", null), f.integer("num_layers", null), f.integer("encoder_hidden_size", null),
                f.bool("prefix_projection", false), f.strings("modules_to_save", false),
                f.string("task_type", null), f.string("base_model_name_or_path", null), f.string("revision", null),
                f.bool("inference_mode", false), PromptTuningConfig.withoutNullAutoMapping(f.rest()));
        return c;
    }

    @Override
    public PrefixTuningConfig withInferenceMode(boolean v) {
        return new PrefixTuningConfig(numVirtualTokens, tokenDim, numTransformerSubmodules, numAttentionHeads, numLayers,
                encoderHiddenSize, prefixProjection, modulesToSave, taskType, baseModelNameOrPath, revision, v, extra);
    }

    @Override
    public PrefixTuningConfig withBaseModel(String base, String rev) {
        return new PrefixTuningConfig(numVirtualTokens, tokenDim, numTransformerSubmodules, numAttentionHeads, numLayers,
                encoderHiddenSize, prefixProjection, modulesToSave, taskType, base, rev, inferenceMode, extra);
    }
}
