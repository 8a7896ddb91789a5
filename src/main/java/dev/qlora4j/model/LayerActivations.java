package dev.qlora4j.model;

import dev.qlora4j.backend.AttentionResult;
import dev.qlora4j.tensor.Tensor;

/**
 * What one decoder layer's backward needs from its forward (all [tokens, features] unless noted).
 * Under gradient checkpointing the layer input is kept (plus, with {@link #checkpointKept}, the
 * attention result and/or the attention block output), and the backward refills this with DecoderLayer.recomputeForBackward before using it.
 */
final class LayerActivations implements AutoCloseable {
    /**
     * For what a checkpointed forward keeps besides the layer input (see {@link #isCheckpointKept}): whether it keeps
     * the attention result ({@link #attn}) / the attention block's output ({@link #resid}); both false for room for
     * every activation.
     */
    final boolean keepAttention, keepResidual;

    Tensor h1;              // input_layernorm(x) [n, hidden]: input of q/k/v
    Tensor q, k, v;         // after rope: [n, heads*hd], [n, kv*hd], [n, kv*hd]
    AttentionResult attn;   // out [n, heads*hd] (input of o_proj) + lse
    Tensor resid;           // x + o(attn) [n, hidden]
    Tensor h2;              // post_attention_layernorm(resid): input of gate/up
    Tensor gate, up;        // [n, intermediate]; null when gateUp holds them
    Tensor gateUp;          // [n, 2 * intermediate]: gate's columns, then up's (the group ran as one GEMM), else null
    Tensor act;             // silu(gate) * up: input of down

    /** Room for every activation of a layer. */
    LayerActivations() { this(false, false); }

    private LayerActivations(boolean keepAttention, boolean keepResidual) {
        this.keepAttention = keepAttention;
        this.keepResidual = keepResidual;
    }

    /**
     * Room for what a checkpointed forward keeps besides the layer input, so the backward's recompute skips work:
     * the attention result (out [n, heads*hd] in the activation dtype + lse F32 [B, heads, T]; the recompute then
     * skips the attention forward) and/or resid (x + o(attention) [n, hidden]; the recompute then skips the o
     * projection and its residual add).
     */
    static LayerActivations checkpointKept(boolean attention, boolean residual) {
        if (!attention && !residual) throw new IllegalArgumentException("a checkpointed forward that keeps nothing passes null");
        return new LayerActivations(attention, residual);
    }

    /** True for what a checkpointed forward keeps besides the layer input ({@link #checkpointKept}), not room for everything. */
    boolean isCheckpointKept() { return keepAttention || keepResidual; }

    /** The attention result, handed over to the caller (this forgets it); null when none is held. */
    AttentionResult takeAttention() {
        AttentionResult r = attn;
        attn = null;
        return r;
    }

    /** resid, handed over to the caller (this forgets it); null when none is held. */
    Tensor takeResidual() {
        Tensor r = resid;
        resid = null;
        return r;
    }

    /** Bytes held (for the checkpointing report). */
    long bytes() {
        long n = 0;
        for (Tensor t : new Tensor[] {h1, q, k, v, resid, h2, gate, up, gateUp, act}) if (t != null) n += t.byteSize();
        if (attn != null) n += attn.out().byteSize() + attn.lse().byteSize();
        return n;
    }

    @Override
    public void close() {
        for (Tensor t : new Tensor[] {h1, q, k, v, resid, h2, gate, up, gateUp, act}) if (t != null) t.close();
        if (attn != null) attn.close();
        h1 = q = k = v = resid = h2 = gate = up = gateUp = act = null;
        attn = null;
    }
}
