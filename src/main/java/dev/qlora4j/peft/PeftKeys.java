package dev.qlora4j.peft;

/**
 * Tensor names in peft's adapter_model.safetensors (utils/save_and_load.py
 * get_peft_model_state_dict): the in-memory name with the adapter name removed, and DoRA's
 * magnitude without its ".weight" suffix. A module at path P (as in the base model,
 * e.g. "model.layers.0.self_attn.q_proj") saves as:
 *
 * <pre>
 *   base_model.model.P.lora_A.weight             [r, in]
 *   base_model.model.P.lora_B.weight             [out, r]
 *   base_model.model.P.lora_magnitude_vector     [out]      (use_dora)
 *   base_model.model.lm_head.weight              [vocab, hidden]  (modules_to_save ["lm_head"])
 *   base_model.model.model.embed_tokens.weight   [vocab, hidden]  (modules_to_save ["embed_tokens"])
 * </pre>
 *
 * In memory (trainable parameter names) the adapter name sits before the last component:
 * "...q_proj.lora_A.default.weight", "...q_proj.lora_magnitude_vector.default.weight",
 * "base_model.model.lm_head.modules_to_save.default.weight".
 */
public final class PeftKeys {
    private PeftKeys() {}

    public static final String PREFIX = "base_model.model.";
    public static final String WEIGHTS_FILE = "adapter_model.safetensors";
    public static final String LM_HEAD = "lm_head";
    public static final String EMBED_TOKENS = "model.embed_tokens";

    public static String loraA(String modulePath) { return PREFIX + modulePath + ".lora_A.weight"; }

    public static String loraB(String modulePath) { return PREFIX + modulePath + ".lora_B.weight"; }

    public static String magnitude(String modulePath) { return PREFIX + modulePath + ".lora_magnitude_vector"; }

    /** A modules_to_save module's saved tensor ("weight" or "bias"). */
    public static String savedModule(String modulePath, String tensor) { return PREFIX + modulePath + "." + tensor; }

    /** A modules_to_save copy's in-memory parameter prefix, e.g. "base_model.model.lm_head.modules_to_save.default.". */
    public static String modulesToSavePrefix(String modulePath, String adapter) {
        return PREFIX + modulePath + ".modules_to_save." + adapter + ".";
    }
}
