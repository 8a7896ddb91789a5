package dev.qlora4j.peft.config;

import java.util.Arrays;

/** peft's LoRA bias setting: which biases train alongside the adapter. */
public enum LoraBias {
    /** No bias is trained (the default). */
    NONE("none"),
    /** Every bias of the model is trained. */
    ALL("all"),
    /** Only the biases of layers that carry LoRA are trained. */
    LORA_ONLY("lora_only");

    private final String json;

    LoraBias(String json) { this.json = json; }

    public String json() { return json; }

    public static LoraBias parse(String s) {
        return Arrays.stream(values()).filter(b -> b.json.equals(s)).findFirst()
                .orElseThrow(() -> new IllegalArgumentException("bias must be \"none\", \"all\" or \"lora_only\", got \"" + s + "\""));
    }
}
