package dev.qlora4j.nn;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.optim.Param;
import dev.qlora4j.tensor.Tensor;

import java.util.List;

/**
 * A linear layer y = x W^T + b with W [out, in]. Implementations differ in how W is stored:
 * dense 16/32-bit, LLM.int8, packed 4-bit; adapters (LoRA) wrap another Linear.
 */
public interface Linear extends AutoCloseable {
    /** x [n, in] -> [n, out]. */
    Tensor forward(Backend backend, Tensor x);

    int inFeatures();

    int outFeatures();

    /**
     * Backward through the layer: x [n, in] is the input the forward saw (saved, or recomputed
     * under gradient checkpointing), gradOut [n, out]. Returns grad_x [n, in] and accumulates the
     * gradients of trainable parameters (F32, in {@link #trainableParameters()}). Anything else the
     * backward needs (dropout masks, adapter intermediates) is recomputed from x.
     */
    Tensor backward(Backend backend, Tensor x, Tensor gradOut);

    /** Parameters this layer trains (empty for frozen layers), named as peft saves them. */
    default List<Param> trainableParameters() { return List.of(); }

    /** Bytes the weights occupy where they live (for memory reports). */
    long weightBytes();

    @Override
    default void close() {}
}
