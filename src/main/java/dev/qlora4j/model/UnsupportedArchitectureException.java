package dev.qlora4j.model;

import java.util.List;

/**
 * A config.json declares an architecture qlora4j cannot run. The message names what was found,
 * the architectures that are supported and what to do about it.
 */
public final class UnsupportedArchitectureException extends IllegalArgumentException {
    private final String found;
    private final List<String> supported;

    public UnsupportedArchitectureException(String source, String found, List<String> supported) {
        super(source + " declares " + found + ", which qlora4j does not support. Supported architectures: "
                + String.join(", ", supported)
                + ". Use a checkpoint of one of these families (a fine-tune of Llama, Mistral or Qwen2 keeps its"
                + " base architecture), or convert the model with transformers first.");
        this.found = found;
        this.supported = List.copyOf(supported);
    }

    /** The architecture (or model_type) the config declared. */
    public String found() { return found; }

    /** The architecture class names qlora4j supports. */
    public List<String> supported() { return supported; }
}
