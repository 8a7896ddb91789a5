package dev.qlora4j.peft.prefix;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.optim.Param;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/**
 * One trainable F32 tensor of a prompt-learning adapter on the backend's device, with a gradient
 * allocated (zero-filled) by the first backward that touches it and dropped by {@link #zeroGrad()}
 * (torch's zero_grad(set_to_none=True)). {@link #param()} is the optimizer's view, under peft's
 * in-memory name ("prompt_encoder.default.embedding.weight" ...).
 */
final class PrefixParameter implements AutoCloseable {
    private final String name;
    private Tensor value; // F32, on the device
    private Tensor grad;  // F32 like value, or null

    PrefixParameter(String name, Backend b, float[] host, int... shape) {
        this.name = name;
        this.value = b.upload(Tensor.of(host, shape));
    }

    String name() { return name; }

    Tensor value() { return value; }

    Tensor grad() { return grad; }

    int[] shape() { return value.shape(); }

    /** The gradient to add into, allocated zero-filled on first use. */
    Tensor gradForAccumulation(Backend b) {
        if (grad == null) grad = b.zeros(DType.F32, value.shape());
        return grad;
    }

    void zeroGrad() {
        if (grad != null) {
            grad.close();
            grad = null;
        }
    }

    float[] hostValues(Backend b) { return b.toHost(value).toFloatArray(); }

    /**
     * Overwrites the values (same element count) in place with host data, so the tensor the
     * optimizer holds stays the same: v += -1 * v (exactly 0 for finite v), then v += new.
     */
    void setHostValues(Backend b, float[] host) {
        if (host.length != value.numel()) {
            throw new IllegalArgumentException(name + ": " + host.length + " values do not fit " + value);
        }
        Tensor src = b.upload(Tensor.of(host.clone(), value.shape()));
        try {
            b.axpyInPlace(value, -1f, value);
            b.axpyInPlace(value, 1f, src);
        } finally {
            if (src != value) src.close();
        }
    }

    Param param() {
        PrefixParameter self = this;
        return new Param() {
            @Override public String name() { return self.name; }
            @Override public Tensor value() { return self.value; }
            @Override public Tensor grad() { return self.grad; }
            @Override public String toString() { return self.name + " " + self.value; }
        };
    }

    @Override
    public void close() {
        zeroGrad();
        value.close();
    }
}
