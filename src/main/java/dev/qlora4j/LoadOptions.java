package dev.qlora4j;

/**
 * How to load a model: on which device ("cpu", "cuda", "cuda:N", "auto").
 * Quantization and adapters add their own options.
 */
public record LoadOptions(String device) {
    public static LoadOptions defaults() { return new LoadOptions("auto"); }

    public static LoadOptions cpu() { return new LoadOptions("cpu"); }

    public LoadOptions withDevice(String d) { return new LoadOptions(d); }
}
