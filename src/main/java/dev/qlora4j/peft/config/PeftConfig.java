package dev.qlora4j.peft.config;

import java.util.List;
import java.util.Map;

/**
 * One adapter's configuration as stored in adapter_config.json. The fields every peft config has
 * are here; {@link #toJson()} writes the file as peft writes it.
 */
public sealed interface PeftConfig permits LoraConfig, PrefixTuningConfig, PromptTuningConfig, BottleneckConfig {
    /** peft's TaskType values (null is allowed too). */
    List<String> TASK_TYPES = List.of("SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION");

    /** "LORA", "PREFIX_TUNING", "PROMPT_TUNING" or "BOTTLENECK". */
    String peftType();

    /** "CAUSAL_LM" etc., or null. */
    String taskType();

    String baseModelNameOrPath();

    String revision();

    /** peft sets this to true in the saved file (PeftModel.save_pretrained). */
    boolean inferenceMode();

    /** Keys of the file this config does not model, kept so that they are written back. */
    Map<String, Object> extra();

    /** The dict peft serializes (before sorting). */
    Map<String, Object> toMap();

    /** adapter_config.json text, exactly as peft's json.dumps(..., indent=2, sort_keys=True). */
    default String toJson() { return PeftJson.dumps(toMap()); }

    PeftConfig withInferenceMode(boolean inferenceMode);

    PeftConfig withBaseModel(String baseModelNameOrPath, String revision);

    static String checkTaskType(String taskType) {
        if (taskType != null && !TASK_TYPES.contains(taskType)) {
            throw new IllegalArgumentException("Invalid task type: '" + taskType + "'. Must be one of the following task types: "
                    + String.join(", ", TASK_TYPES) + ".");
        }
        return taskType;
    }
}
