package dev.qlora4j.model;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.nn.DenseLinear;
import dev.qlora4j.nn.Linear;

/**
 * Builds the linear layer stored at a module path (e.g. "model.layers.0.self_attn.q_proj").
 * The dense factory uploads weight and bias as they are; quantizing factories (4-bit, 8-bit)
 * replace it to quantize on load or to read pre-quantized bitsandbytes tensors.
 */
@FunctionalInterface
public interface LinearFactory {
    Linear create(String modulePath, WeightSource weights, Backend backend, boolean hasBias);

    LinearFactory DENSE = (path, weights, backend, hasBias) -> new DenseLinear(
            backend.upload(weights.get(path + ".weight")),
            hasBias ? backend.upload(weights.get(path + ".bias")) : null);
}
