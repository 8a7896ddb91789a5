package dev.qlora4j;

import dev.qlora4j.quant.QuantizationConfig;

/**
 * How to load a model.
 *
 * @param device       "cpu", "cuda", "cuda:N" or "auto" (the GPU when one is usable)
 * @param quantization load_in_4bit / load_in_8bit settings (BitsAndBytesConfig), or null for the
 *                     checkpoint's own weights; a pre-quantized checkpoint's quantization_config wins
 */
public record LoadOptions(String device, QuantizationConfig quantization) {
    public static LoadOptions defaults() { return new LoadOptions("auto", null); }

    public static LoadOptions cpu() { return new LoadOptions("cpu", null); }

    public LoadOptions withDevice(String d) { return new LoadOptions(d, quantization); }

    public LoadOptions withQuantization(QuantizationConfig q) { return new LoadOptions(device, q); }
}
