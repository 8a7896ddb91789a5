package dev.qlora4j.model;

import dev.qlora4j.nn.Linear;
import dev.qlora4j.tensor.Tensor;

/**
 * Replaces a decoder layer's frozen weights (weight offload rebuilds them as views of a streaming slot):
 * each method returns the replacement, or its argument unchanged.
 */
public interface WeightRemap {
    /** A norm weight [hidden]. */
    Tensor tensor(Tensor t);

    /** A projection (dense or quantized, before adapters wrap it). */
    Linear linear(Linear l);
}
