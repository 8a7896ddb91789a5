package dev.qlora4j.nn;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.tensor.Tensor;

/**
 * A linear layer whose forward, in its current state, is a quantized linear layer's output followed by a step that
 * needs only x and that output: {@link QuantizedLinear} itself (no step), or a LoRA wrapper around one (the adapters'
 * terms added). Several such layers reading the same x (a decoder layer's q/k/v, gate/up) can then compute their
 * quantized parts in one {@link Backend#linearQuantizedGroup} call ({@link LinearGroup}), with the same results.
 */
public interface QuantizedBaseLinear extends Linear {
    /**
     * The quantized layer whose output {@link #forwardFromBase} continues from now, or null when forward does not
     * take that form in the current state (e.g. a merged LoRA layer): then only {@link #forward} may be used.
     */
    QuantizedLinear quantizedBase();

    /**
     * forward(b, x) given baseOut = quantizedBase().forward(b, x) [n, out]; only valid while quantizedBase() is not
     * null. Takes ownership of baseOut: returns it (possibly updated in place) or closes it, also when it throws.
     */
    Tensor forwardFromBase(Backend b, Tensor x, Tensor baseOut);
}
