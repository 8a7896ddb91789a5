package dev.qlora4j.nn;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.tensor.Tensor;

/** Linear with a dense F32/BF16/F16 weight [out, in] and optional bias [out], on the backend's device. */
public final class DenseLinear implements Linear {
    private final Tensor weight; // [out, in]
    private final Tensor bias;   // [out] or null

    public DenseLinear(Tensor weight, Tensor bias) {
        if (weight.rank() != 2) {
            throw new IllegalArgumentException("linear weight must be 2-D [out, in], got " + weight);
        }
        if (bias != null && (bias.rank() != 1 || bias.dim(0) != weight.dim(0))) {
            throw new IllegalArgumentException("bias " + bias + " does not match weight " + weight);
        }
        this.weight = weight;
        this.bias = bias;
    }

    public Tensor weight() { return weight; }

    public Tensor bias() { return bias; }

    @Override
    public Tensor forward(Backend backend, Tensor x) {
        return backend.linear(x, weight, bias);
    }

    /** Frozen: only grad_x = gradOut W flows (bias and weight gradients belong to trainable wrappers). */
    @Override
    public Tensor backward(Backend backend, Tensor x, Tensor gradOut) {
        return backend.linearBackwardInput(gradOut, weight);
    }

    @Override public int inFeatures() { return weight.dim(1); }

    @Override public int outFeatures() { return weight.dim(0); }

    @Override public long weightBytes() { return weight.byteSize() + (bias == null ? 0 : bias.byteSize()); }

    @Override
    public void close() {
        weight.close();
        if (bias != null) bias.close();
    }
}
