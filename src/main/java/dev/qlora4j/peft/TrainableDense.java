package dev.qlora4j.peft;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.nn.Linear;
import dev.qlora4j.optim.Param;
import dev.qlora4j.tensor.Tensor;

import java.util.ArrayList;
import java.util.List;

/**
 * A fully trainable float32 linear layer: peft's modules_to_save copy of a linear module
 * (e.g. lm_head), with weight [out, in] and optional bias [out] and their gradients.
 */
public final class TrainableDense implements Linear {
    private final String paramPrefix;     // e.g. "base_model.model.lm_head.modules_to_save.default."
    private final TrainableTensor weight; // [out, in]
    private final TrainableTensor bias;   // [out] or null

    public TrainableDense(String paramPrefix, TrainableTensor weight, TrainableTensor bias) {
        if (weight.shape().length != 2) throw new IllegalArgumentException("weight must be [out, in]");
        if (bias != null && bias.shape()[0] != weight.shape()[0]) throw new IllegalArgumentException("bias does not match weight");
        this.paramPrefix = paramPrefix;
        this.weight = weight;
        this.bias = bias;
    }

    /** A float32 copy of a dense (or dequantized) weight and bias. */
    static TrainableDense copyOf(Backend b, String paramPrefix, float[] w, int out, int in, float[] bias) {
        return new TrainableDense(paramPrefix, TrainableTensor.of(b, w, out, in), bias == null ? null : TrainableTensor.of(b, bias, out));
    }

    public TrainableTensor weight() { return weight; }

    public TrainableTensor bias() { return bias; }

    @Override
    public Tensor forward(Backend b, Tensor x) {
        return b.linear(x, weight.value(), bias == null ? null : bias.value());
    }

    @Override
    public Tensor backward(Backend b, Tensor x, Tensor gradOut) {
        b.linearBackwardWeight(gradOut, x, weight.gradForAccumulation(b));
        if (bias != null) b.sumRowsInto(gradOut, bias.gradForAccumulation(b));
        return b.linearBackwardInput(gradOut, weight.value());
    }

    @Override
    public List<Param> trainableParameters() {
        List<Param> out = new ArrayList<>();
        out.add(weight.param(paramPrefix + "weight"));
        if (bias != null) out.add(bias.param(paramPrefix + "bias"));
        return out;
    }

    long numel() { return weight.numel() + (bias == null ? 0 : bias.numel()); }

    void zeroGrad() {
        weight.zeroGrad();
        if (bias != null) bias.zeroGrad();
    }

    @Override public int inFeatures() { return weight.shape()[1]; }

    @Override public int outFeatures() { return weight.shape()[0]; }

    @Override public long weightBytes() { return numel() * 4; }

    @Override
    public void close() {
        weight.close();
        if (bias != null) bias.close();
    }
}
