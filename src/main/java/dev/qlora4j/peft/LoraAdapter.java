package dev.qlora4j.peft;

import dev.qlora4j.optim.Param;

import java.util.ArrayList;
import java.util.List;

/**
 * One named LoRA adapter on one linear layer [out, in], as peft's LoraLayer holds it per adapter
 * name: lora_A [r, in] and lora_B [out, r] in float32, the output scale (alpha / r, or
 * alpha / sqrt(r) with rsLoRA, per module through rank_pattern / alpha_pattern), the dropout
 * probability applied to the adapter's input while training, and for DoRA the magnitude vector
 * [out] (lora_magnitude_vector).
 */
public final class LoraAdapter implements AutoCloseable {
    private final String name;
    private final int rank;
    private final double alpha;
    private final double scaling;
    private final double dropout;
    private final TrainableTensor a;          // lora_A.weight [r, in]
    private final TrainableTensor b;          // lora_B.weight [out, r]
    private final TrainableTensor magnitude;  // lora_magnitude_vector [out], DoRA only, else null
    private boolean trainable;

    LoraAdapter(String name, int rank, double alpha, double scaling, double dropout,
                TrainableTensor a, TrainableTensor b, TrainableTensor magnitude, boolean trainable) {
        if (rank <= 0) throw new IllegalArgumentException("`r` should be a positive integer value but the value passed is " + rank);
        if (!(dropout >= 0 && dropout < 1)) throw new IllegalArgumentException("lora_dropout must be in [0, 1), got " + dropout);
        if (a.shape()[0] != rank || b.shape()[1] != rank) {
            throw new IllegalArgumentException("adapter '" + name + "': lora_A " + java.util.Arrays.toString(a.shape())
                    + " and lora_B " + java.util.Arrays.toString(b.shape()) + " do not have rank " + rank);
        }
        this.name = name;
        this.rank = rank;
        this.alpha = alpha;
        this.scaling = scaling;
        this.dropout = dropout;
        this.a = a;
        this.b = b;
        this.magnitude = magnitude;
        this.trainable = trainable;
    }

    public String name() { return name; }

    public int rank() { return rank; }

    public double alpha() { return alpha; }

    /** The factor on B A x: alpha / r, or alpha / sqrt(r) with use_rslora. */
    public double scaling() { return scaling; }

    public double dropout() { return dropout; }

    public boolean useDora() { return magnitude != null; }

    /** lora_A.weight [r, in]. */
    public TrainableTensor a() { return a; }

    /** lora_B.weight [out, r]. */
    public TrainableTensor b() { return b; }

    /** DoRA's lora_magnitude_vector [out], or null. */
    public TrainableTensor magnitude() { return magnitude; }

    /** False for adapters loaded for inference (peft's is_trainable=False). */
    public boolean trainable() { return trainable; }

    void setTrainable(boolean trainable) { this.trainable = trainable; }

    /**
     * The parameters under peft's in-memory names, e.g.
     * "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight".
     */
    public List<Param> parameters(String modulePath) {
        String p = "base_model.model." + modulePath + ".";
        List<Param> out = new ArrayList<>();
        out.add(a.param(p + "lora_A." + name + ".weight"));
        out.add(b.param(p + "lora_B." + name + ".weight"));
        if (magnitude != null) out.add(magnitude.param(p + "lora_magnitude_vector." + name + ".weight"));
        return out;
    }

    long numel() {
        return a.numel() + b.numel() + (magnitude == null ? 0 : magnitude.numel());
    }

    void zeroGrad() {
        a.zeroGrad();
        b.zeroGrad();
        if (magnitude != null) magnitude.zeroGrad();
    }

    @Override
    public void close() {
        a.close();
        b.close();
        if (magnitude != null) magnitude.close();
    }
}
