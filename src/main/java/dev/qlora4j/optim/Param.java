package dev.qlora4j.optim;

import dev.qlora4j.tensor.Tensor;

/**
 * One trainable tensor as an optimizer sees it: a stable name (used for weight-decay grouping
 * and as the key of its optimizer state in checkpoints), its value, and its gradient.
 *
 * <p>The optimizers of this package run on host tensors; a CUDA optimizer implements the same
 * {@link Optimizer} contract over the same Params whose tensors live on the device. Keeping the
 * value and gradient as {@link Tensor}s (not float arrays) is what lets both share one type.
 */
public interface Param {
    /** Dotted parameter name, e.g. "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight". */
    String name();

    /** The value, any shape; updated in place by {@link Optimizer#step()}. */
    Tensor value();

    /** The gradient (same element count as the value), or null when this parameter got none this step. */
    Tensor grad();

    /**
     * A BF16 copy of the value that an optimizer may rewrite in the same pass that updates the value (the CUDA
     * AdamW does: the BF16 copies of the LoRA weights that the GPU's BF16 path reads, see
     * dev.qlora4j.peft.TrainableTensor#castCopy), or null. The optimizer reads it after {@link #value()} and,
     * once it has written every element, calls {@link #copyRefreshed()}; one that does not leaves it stale, and its
     * owner re-makes it on next use.
     */
    default Tensor refreshableCopy() { return null; }

    /** Tells the owner that {@link #refreshableCopy()} now holds the updated value, rounded to BF16. */
    default void copyRefreshed() {}

    /** A host parameter over plain float arrays (wrapped without copying; both arrays are [numel]). */
    static Param of(String name, float[] value, float[] grad) {
        if (grad != null && grad.length != value.length) {
            throw new IllegalArgumentException("parameter '" + name + "': gradient has " + grad.length
                    + " elements but the value has " + value.length);
        }
        return new TensorParam(name, Tensor.of(value, value.length), grad == null ? null : Tensor.of(grad, grad.length));
    }

    /** The plain implementation: a name and two tensors. */
    record TensorParam(String name, Tensor value, Tensor grad) implements Param {
        public TensorParam {
            if (name == null || name.isEmpty()) throw new IllegalArgumentException("a parameter needs a non-empty name");
            if (value == null) throw new IllegalArgumentException("parameter '" + name + "' has no value tensor");
            if (grad != null && grad.numel() != value.numel()) {
                throw new IllegalArgumentException("parameter '" + name + "': gradient " + grad + " does not match value " + value);
            }
        }
    }
}
