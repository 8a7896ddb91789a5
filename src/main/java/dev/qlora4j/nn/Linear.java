package dev.qlora4j.nn;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.tensor.Tensor;

/**
 * A linear layer y = x W^T + b with W [out, in]. Implementations differ in how W is stored:
 * dense 16/32-bit, LLM.int8, packed 4-bit; adapters (LoRA) wrap another Linear.
 */
public interface Linear extends AutoCloseable {
    /** x [n, in] -> [n, out]. */
    Tensor forward(Backend backend, Tensor x);

    int inFeatures();

    int outFeatures();

    /** Bytes the weights occupy where they live (for memory reports). */
    long weightBytes();

    @Override
    default void close() {}
}
