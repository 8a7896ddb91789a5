package dev.qlora4j.backend;

/**
 * A quantized linear weight [out, in] made ready for one backend's kernels (bitsandbytes 4-bit
 * or LLM.int8). Each backend has its own representation; model code only passes it back to
 * {@link Backend#linearQuantized} and {@link Backend#dequantize}.
 */
public interface QuantizedWeight extends AutoCloseable {
    int outFeatures();

    int inFeatures();

    /** Bytes the weight occupies on its device (packed codes plus statistics). */
    long deviceBytes();

    @Override
    void close();
}
