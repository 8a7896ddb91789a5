package dev.qlora4j.nn;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.tensor.Tensor;

/**
 * A frozen quantized linear layer (bitsandbytes Linear4bit or Linear8bitLt): the weight stays
 * packed on the device and is dequantized inside the matmul; the bias stays 16/32-bit.
 */
public final class QuantizedLinear implements QuantizedBaseLinear {
    private final QuantizedWeight weight; // [out, in], quantized
    private final Tensor bias;            // [out] or null

    public QuantizedLinear(QuantizedWeight weight, Tensor bias) {
        if (bias != null && (bias.rank() != 1 || bias.dim(0) != weight.outFeatures())) {
            throw new IllegalArgumentException("bias " + bias + " does not match the quantized weight ["
                    + weight.outFeatures() + ", " + weight.inFeatures() + "]");
        }
        this.weight = weight;
        this.bias = bias;
    }

    public QuantizedWeight weight() { return weight; }

    public Tensor bias() { return bias; }

    @Override
    public Tensor forward(Backend backend, Tensor x) {
        return backend.linearQuantized(x, weight, bias);
    }

    /** Itself: its forward is its quantized matmul. */
    @Override
    public QuantizedLinear quantizedBase() { return this; }

    /** baseOut is this layer's whole output. */
    @Override
    public Tensor forwardFromBase(Backend backend, Tensor x, Tensor baseOut) { return baseOut; }

    /** Frozen (as bitsandbytes' layers are): grad_x = gradOut dequant(W), no weight gradient. */
    @Override
    public Tensor backward(Backend backend, Tensor x, Tensor gradOut) {
        return backend.linearQuantizedBackwardInput(gradOut, weight);
    }

    @Override public int inFeatures() { return weight.inFeatures(); }

    @Override public int outFeatures() { return weight.outFeatures(); }

    @Override public long weightBytes() { return weight.deviceBytes() + (bias == null ? 0 : bias.byteSize()); }

    @Override
    public void close() {
        weight.close();
        if (bias != null) bias.close();
    }
}
