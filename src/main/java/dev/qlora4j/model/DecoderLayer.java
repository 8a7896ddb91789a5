package dev.qlora4j.model;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.KvCache;
import dev.qlora4j.nn.Linear;
import dev.qlora4j.peft.SharedInputLinears;
import dev.qlora4j.peft.LayerHooks;
import dev.qlora4j.tensor.Tensor;

/**
 * One Llama-family decoder layer (Llama, Mistral, Qwen2 share it):
 * h = x + o(attn(rope(q(norm1 x)), rope(k(norm1 x)), v(norm1 x)));  out = h + down(silu(gate(norm2 h)) * up(norm2 h)).
 */
public final class DecoderLayer implements AutoCloseable {
    final int index;
    // Not final: weight offload replaces them (and the base projections) by views of a streaming slot.
    Tensor inputNorm;      // [hidden]
    Tensor postAttnNorm;   // [hidden]
    // Not final: adapters (LoRA, DoRA) replace a projection by a wrapper around it.
    Linear q, k, v, o;     // q [heads*headDim, hidden], k/v [kvHeads*headDim, hidden], o [hidden, heads*headDim]
    Linear gate, up, down; // gate/up [intermediate, hidden], down [hidden, intermediate]
    /** Called after each sublayer (bottleneck adapters); set by TransformerLM.setHooks. */
    LayerHooks hooks = LayerHooks.NONE;
    /** Prefix tuning's learned keys/values in training attention, or null; set by TransformerLM.setTrainingPrefix. */
    TransformerLM.TrainingPrefix prefix;

    /** Projection names as HF module paths use them, relative to the layer. */
    static final String[] PROJECTIONS = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};

    Linear projection(String name) {
        return switch (name) {
            case "self_attn.q_proj" -> q; case "self_attn.k_proj" -> k; case "self_attn.v_proj" -> v;
            case "self_attn.o_proj" -> o; case "mlp.gate_proj" -> gate; case "mlp.up_proj" -> up;
            case "mlp.down_proj" -> down;
            default -> throw new IllegalArgumentException("no projection '" + name + "' in a decoder layer");
        };
    }

    void setProjection(String name, Linear l) {
        switch (name) {
            case "self_attn.q_proj" -> q = l; case "self_attn.k_proj" -> k = l; case "self_attn.v_proj" -> v = l;
            case "self_attn.o_proj" -> o = l; case "mlp.gate_proj" -> gate = l; case "mlp.up_proj" -> up = l;
            case "mlp.down_proj" -> down = l;
            default -> throw new IllegalArgumentException("no projection '" + name + "' in a decoder layer");
        }
    }

    DecoderLayer(int index, Tensor inputNorm, Tensor postAttnNorm, Linear q, Linear k, Linear v, Linear o,
                 Linear gate, Linear up, Linear down) {
        this.index = index;
        this.inputNorm = inputNorm;
        this.postAttnNorm = postAttnNorm;
        this.q = q; this.k = k; this.v = v; this.o = o;
        this.gate = gate; this.up = up; this.down = down;
    }

    /**
     * Output of an inference layer: out [B*T, hidden], and rmsNorm(out) with the next norm's weight when one was
     * given (the next layer's input norm, or the model's final norm), computed in the same pass as out's last add.
     */
    record Output(Tensor out, Tensor normed) {}

    /**
     * x [B*T, hidden] -> [B*T, hidden]; see {@link Backend#attention} for the cache arguments (cacheLayer: this
     * layer's index in cache, which holds only the layers of one device on a split model). h is rmsNorm(x) by
     * this layer's input norm when the caller has it (the previous layer's {@link Output#normed}), else null.
     * nextNorm [hidden] or null: the weight of the norm applied to this layer's output next. The residual adds are
     * fused with the norm after them and RoPE runs on q and k with the cache write ({@link Backend#addInPlaceRmsNorm},
     * {@link Backend#ropeQkAttention}): the same numbers as the separate ops, fewer launches per decode step.
     */
    Output forward(Backend b, ModelConfig c, Tensor x, Tensor h, Tensor nextNorm, Tensor positions, Tensor invFreq,
                   float ropeScaling, KvCache cache, int cacheLayer, int start, Tensor padStart) {
        int heads = c.numAttentionHeads(), kvHeads = c.numKeyValueHeads(), hd = c.headDim();
        float eps = (float) c.rmsNormEps();
        if (h == null) h = b.rmsNorm(x, inputNorm, eps);
        Tensor[] qkv = SharedInputLinears.forward(b, h, q, k, v); // one grouped quantized GEMV at decode when all three allow it
        Tensor qs = qkv[0], ks = qkv[1], vs = qkv[2];
        Integer w = c.slidingWindow(index); // Qwen2 uses full attention below max_window_layers
        int window = w == null ? 0 : w;
        // RoPE then attention; a GPU rotates k straight into the cache in the launch that rotates q (ks is not read after)
        Tensor attn = b.ropeQkAttention(qs, ks, vs, positions, invFreq, ropeScaling, cache, cacheLayer, start, padStart,
                heads, kvHeads, hd, (float) (1.0 / Math.sqrt(hd)), window);
        qs.close(); ks.close(); vs.close();
        Tensor resid = afterAttention(h, o.forward(b, attn)); // owned here: becomes x + attention output in place
        attn.close();
        h.close();
        Tensor h2 = b.addInPlaceRmsNorm(resid, x, postAttnNorm, eps);

        Tensor act = swiGlu(b, h2, null);
        Tensor mlp = afterMlp(h2, down.forward(b, act));
        act.close();
        h2.close();
        Tensor normed = null;
        if (nextNorm == null) b.addInPlace(resid, mlp);
        else normed = b.addInPlaceRmsNorm(resid, mlp, nextNorm, eps);
        mlp.close();
        return new Output(resid, normed);
    }

    /**
     * Training forward over B rows of T tokens (no KV cache): x [B*T, hidden]. The layer output is returned; save
     * decides what else is kept:
     * <ul>
     *   <li>null: nothing (evaluation, or a checkpointed forward that keeps only the layer input);</li>
     *   <li>{@link LayerActivations#checkpointKept}: the attention result and/or the attention block's output resid
     *       (a checkpointed forward that keeps them so the backward's recompute need not run the attention, or the o
     *       projection, again);</li>
     *   <li>otherwise every activation backward needs (no checkpointing).</li>
     * </ul>
     * Under checkpointing the backward refills the activations with {@link #recomputeForBackward} instead.
     */
    Tensor forwardTrain(Backend b, ModelConfig c, Tensor x, Tensor positions, Tensor segments, Tensor invFreq,
                        float ropeScaling, int batch, LayerActivations save) {
        if (save != null && !save.isCheckpointKept()) return trainForward(b, c, x, positions, segments, invFreq, ropeScaling, batch, save, true);
        try (LayerActivations all = new LayerActivations()) {
            Tensor out = trainForward(b, c, x, positions, segments, invFreq, ropeScaling, batch, all, true);
            if (save != null && save.keepAttention) save.attn = all.takeAttention();
            if (save != null && save.keepResidual) save.resid = all.takeResidual();
            return out;   // the rest closes with all
        }
    }

    /**
     * The recompute of gradient checkpointing: re-runs this layer's training forward on its kept input x
     * [B*T, hidden] only as far as backward reads it, filling every activation of save (which must hold every
     * activation, not {@link LayerActivations#checkpointKept}). It stops at act, down's input: the down projection,
     * the MLP hook and the final residual add only make the layer output, which backward never reads (with hooks,
     * {@link #backwardTrain} recomputes down's output itself for the hook's backward). Skipping the MLP hook is safe
     * because a hook's backward re-derives everything (dropout masks included) from the inputs it is handed
     * ({@link LayerHooks}), so it needs no forward call before it. When save.attn is already set (what the
     * checkpointed forward kept) it is used as this layer's attention result instead of running the attention: the
     * training attention is deterministic and its inputs (q, k, v, the prefix) are the same, so the kept result is
     * bit for bit the one the attention would return. Likewise a save.resid already set is the attention block's
     * output kept by the checkpointed forward: the o projection, the attention hook and the residual add are skipped
     * (only the norm after them runs), with the same bits as remaking it.
     */
    void recomputeForBackward(Backend b, ModelConfig c, Tensor x, Tensor positions, Tensor segments, Tensor invFreq,
                              float ropeScaling, int batch, LayerActivations save) {
        if (save == null || save.isCheckpointKept()) {
            throw new IllegalArgumentException("recomputeForBackward fills every activation: pass a full LayerActivations");
        }
        trainForward(b, c, x, positions, segments, invFreq, ropeScaling, batch, save, false);
    }

    /**
     * The training forward shared by {@link #forwardTrain} and {@link #recomputeForBackward}. withOutput false
     * stops after act (see recomputeForBackward) and returns null. A save with attn already set (only from the
     * recompute under keep-attention) supplies the attention result.
     */
    private Tensor trainForward(Backend b, ModelConfig c, Tensor x, Tensor positions, Tensor segments, Tensor invFreq,
                                float ropeScaling, int batch, LayerActivations save, boolean withOutput) {
        float eps = (float) c.rmsNormEps();
        Tensor resid, h2;
        if (save != null && save.resid != null) {
            // The recompute with the attention block output kept: only the MLP half runs here. backwardTrain
            // recomputes the attention half's inputs (h1, q, k, v) after the MLP backward, so they and their
            // dequantized weights are not alive during it (that is where a step's memory peaks).
            resid = save.resid;   // x + hook(o(attn)), as made below
            h2 = hooks == LayerHooks.NONE   // what addInPlaceRmsNorm normed: the rounded sum
                    ? SharedInputLinears.normedInput(b, resid, postAttnNorm, eps, gate, up) : b.rmsNorm(resid, postAttnNorm, eps);
        } else {
            recomputeAttentionInputs(b, c, x, positions, segments, invFreq, ropeScaling, batch, save);
            // The attention hook runs in the recompute too: its output is part of resid, which backward reads.
            // resid = x + attention output, summed into the output's buffer (owned here; x stays: it is the
            // checkpoint) by the launch that norms it: the numbers of add then rmsNorm, one pass fewer over resid.
            resid = afterAttention(save.h1, o.forward(b, save.attn.out()));
            // h2 may be written into gate/up's fold buffer (read by those projections only: no hook reads it)
            h2 = hooks == LayerHooks.NONE ? SharedInputLinears.addNormedInput(b, resid, x, postAttnNorm, eps, gate, up)
                    : b.addInPlaceRmsNorm(resid, x, postAttnNorm, eps);
        }
        Tensor act = swiGlu(b, h2, save);
        Tensor out = null;
        if (withOutput) {
            Tensor mlp = afterMlp(h2, down.forward(b, act));
            out = b.add(resid, mlp);
            mlp.close();
        }
        save.resid = resid; save.h2 = h2; save.act = act;
        return out;
    }

    /**
     * The attention half's inputs into s: h1 = norm1(x), q, k, v (after RoPE), and the attention result unless s
     * already holds it (kept by a checkpointed forward: the attention is deterministic, so it is bit for bit the
     * one it would return; q, k, v are still made because the attention backward reads them).
     */
    private void recomputeAttentionInputs(Backend b, ModelConfig c, Tensor x, Tensor positions, Tensor segments,
                                          Tensor invFreq, float ropeScaling, int batch, LayerActivations s) {
        int heads = c.numAttentionHeads(), kvHeads = c.numKeyValueHeads(), hd = c.headDim();
        Integer w = c.slidingWindow(index);
        // h1 may be written into q/k/v's fold buffer when only those projections read it (no hook, no prefix)
        s.h1 = hooks == LayerHooks.NONE && prefix == null
                ? SharedInputLinears.normedInput(b, x, inputNorm, (float) c.rmsNormEps(), q, k, v)
                : b.rmsNorm(x, inputNorm, (float) c.rmsNormEps());
        Tensor[] qkv = SharedInputLinears.forward(b, s.h1, q, k, v);   // LoRA on the CUDA BF16 path: x read once (LoraGroup)
        s.q = qkv[0]; s.k = qkv[1]; s.v = qkv[2];
        b.ropeQkInPlace(s.q, s.k, positions, invFreq, heads, kvHeads, hd, ropeScaling);   // one pass for q and k
        if (s.attn == null) {
            dev.qlora4j.backend.AttentionResult attn = b.attentionTrain(s.q, s.k, s.v, segments, batch, heads, kvHeads, hd,
                    (float) (1.0 / Math.sqrt(hd)), w == null ? 0 : w);
            s.attn = prefix != null ? withPrefix(b, attn, s.q, batch, heads, kvHeads, hd, w) : attn;
        }
    }

    /**
     * silu(gate(h2)) * up(h2). gate/up run as one GEMM where the backend joins them (one [n, 2 * intermediate]
     * activation), else as two. keep null: the projections' outputs are freed here; else they go into keep (gateUp,
     * or gate and up) for the backward.
     */
    private Tensor swiGlu(Backend b, Tensor h2, LayerActivations keep) {
        if (keep == null) {  // inference: one joint op where the backend has one (CUDA decode: the joint gate / up GEMV)
            Tensor act = dev.qlora4j.nn.LinearGroup.swiGlu(b, h2, gate, up);
            if (act != null) return act;
        }
        Tensor gateUp = SharedInputLinears.forwardJoined(b, h2, gate, up);
        if (gateUp != null) {
            if (keep == null) {
                try (gateUp) { return b.siluMulHalves(gateUp); }
            }
            keep.gateUp = gateUp;
            return b.siluMulHalves(gateUp);
        }
        Tensor[] gu = SharedInputLinears.forward(b, h2, gate, up);
        if (keep == null) {
            try (Tensor g = gu[0]; Tensor u = gu[1]) { return b.siluMul(g, u); }
        }
        keep.gate = gu[0];
        keep.up = gu[1];
        return b.siluMul(gu[0], gu[1]);
    }

    /**
     * Backward of {@link #forwardTrain}: returns grad_x; adapters accumulate their parameter gradients. inputGrad
     * false (the first layer when nothing before it trains, e.g. a frozen embedding): grad_x is not formed and null
     * is returned; the q/k/v base layers' input-gradient GEMMs and the first norm's backward are skipped (Llama-7B:
     * ~0.3 ms of a step).
     */
    Tensor backwardTrain(Backend b, ModelConfig c, Tensor x, Tensor positions, Tensor segments, Tensor invFreq,
                         float ropeScaling, int batch, LayerActivations s, Tensor gradOut, boolean inputGrad) {
        int heads = c.numAttentionHeads(), kvHeads = c.numKeyValueHeads(), hd = c.headDim();
        float eps = (float) c.rmsNormEps();
        Integer w = c.slidingWindow(index);
        // MLP block: out = resid + hook(h2, down(silu(gate(h2)) * up(h2))), h2 = norm2(resid)
        LayerHooks.HookGrads mlpHook = hooks == LayerHooks.NONE ? new LayerHooks.HookGrads(gradOut, null)
                : hookBackward(b, s.h2, down.forward(b, s.act), gradOut, false);
        Tensor gAct = down.backward(b, s.act, mlpHook.gradSublayerOut());
        if (mlpHook.gradSublayerOut() != gradOut) mlpHook.gradSublayerOut().close();
        // Activations are freed as soon as the backward is past them: the MLP backward is where a step peaks.
        s.act.close();
        s.act = null;
        Tensor gH2;   // gate's grad_x + up's
        if (s.gateUp != null) {   // the forward ran gate/up as one GEMM: their gradients side by side in its buffer
            Tensor gGateUp = b.siluMulHalvesBackwardInPlace(s.gateUp, gAct);   // takes gateUp, writes over it
            s.gateUp = null;
            gAct.close();
            // without a hook gradient to add, gH2's only reader is the norm backward below, which reads a wider
            // gradient: it may come back as the first columns of [grad_x | GH] (one GEMM for both)
            boolean wideOk = mlpHook.gradSublayerIn() == null;
            try (gGateUp) { gH2 = SharedInputLinears.backwardJoined(b, s.h2, gGateUp, wideOk, gate, up); }
        } else {
            Tensor[] gGU = b.siluMulBackwardInPlace(s.gate, s.up, gAct);   // takes gate and up (may reuse their memory)
            s.gate = s.up = null;
            gAct.close();
            gH2 = SharedInputLinears.backward(b, s.h2, gGU, gate, up);
            gGU[0].close(); gGU[1].close();
        }
        addAndClose(b, gH2, mlpHook.gradSublayerIn());
        Tensor gResid = b.rmsNormBackwardAdd(s.resid, postAttnNorm, eps, gH2, null, gradOut);   // norm path + skip path
        gH2.close();
        // A recompute that had the attention block output kept made only the MLP half (see trainForward).
        if (s.q == null) recomputeAttentionInputs(b, c, x, positions, segments, invFreq, ropeScaling, batch, s);
        // Attention block: resid = x + hook(h1, o(attn(rope(q(h1)), rope(k(h1)), v(h1)))), h1 = norm1(x)
        LayerHooks.HookGrads attnHook = hooks == LayerHooks.NONE ? new LayerHooks.HookGrads(gResid, null)
                : hookBackward(b, s.h1, o.forward(b, s.attn.out()), gResid, true);
        Tensor gAttn = o.backward(b, s.attn.out(), attnHook.gradSublayerOut());
        if (attnHook.gradSublayerOut() != gResid) attnHook.gradSublayerOut().close();
        Tensor gH1 = qkvBackward(b, s, gAttn, segments, positions, invFreq, ropeScaling, batch, heads, kvHeads, hd, w,
                inputGrad, attnHook.gradSublayerIn() == null);   // q's grad_x + k's + v's; closes gAttn
        if (!inputGrad) {
            if (attnHook.gradSublayerIn() != null) attnHook.gradSublayerIn().close();
            gResid.close();
            return null;
        }
        addAndClose(b, gH1, attnHook.gradSublayerIn());
        Tensor gx = b.rmsNormBackwardAdd(x, inputNorm, eps, gH1, null, gResid);
        gH1.close();
        gResid.close();
        return gx;
    }

    /**
     * The attention backward from gAttn (closed here) through RoPE into the q/k/v projections: their grad_x summed
     * (null when inputGrad is false: only the adapters' gradients are formed). Where the backend forms dQ, dK, dV in
     * one buffer and the projections run as a joined group (no prefix), that buffer goes straight into one
     * input-gradient GEMM (SharedInputLinears#backwardJoined); else the three gradients go separately. wideOk: the
     * result may be wider than h1 (grad_x in its first columns), for a caller that only hands it to the norm backward.
     */
    private Tensor qkvBackward(Backend b, LayerActivations s, Tensor gAttn, Tensor segments, Tensor positions,
                               Tensor invFreq, float ropeScaling, int batch, int heads, int kvHeads, int hd, Integer w,
                               boolean inputGrad, boolean wideOk) {
        float scale = (float) (1.0 / Math.sqrt(hd));
        int window = w == null ? 0 : w;
        Tensor gJoined = null;
        try {
            if (prefix == null && SharedInputLinears.joinedApplies(b, s.h1, q, k, v)) {
                gJoined = b.attentionBackwardJoined(s.q, s.k, s.v, segments, s.attn, gAttn, batch, heads, kvHeads, hd,
                        scale, window);
            }
        } catch (RuntimeException e) {
            gAttn.close();
            throw e;
        }
        if (gJoined == null) return qkvBackwardSeparate(b, s, gAttn, segments, positions, invFreq, ropeScaling, batch,
                heads, kvHeads, hd, window, inputGrad);
        gAttn.close();
        try (Tensor g = gJoined) {
            b.ropeQkBackwardJoinedInPlace(g, positions, invFreq, heads, kvHeads, hd, ropeScaling);
            if (!inputGrad) {
                SharedInputLinears.backwardJoinedParametersOnly(b, s.h1, g, q, k, v);
                return null;
            }
            return SharedInputLinears.backwardJoined(b, s.h1, g, wideOk, q, k, v);
        }
    }

    /** qkvBackward with dQ, dK, dV as three tensors; closes gAttn as soon as the attention backward is past it. */
    private Tensor qkvBackwardSeparate(Backend b, LayerActivations s, Tensor gAttn, Tensor segments, Tensor positions,
                                       Tensor invFreq, float ropeScaling, int batch, int heads, int kvHeads, int hd,
                                       int window, boolean inputGrad) {
        float scale = (float) (1.0 / Math.sqrt(hd));
        Tensor[] gQKV;
        try (gAttn) {
            gQKV = b.attentionBackward(s.q, s.k, s.v, segments, s.attn, gAttn, batch, heads, kvHeads, hd, scale, window);
            if (prefix != null) { // the prefix's share of grad_q (before rope's backward, like the rest) and its own gradients
                try {
                    b.prefixAttentionBackward(s.q, prefix.keys(index), prefix.values(index), s.attn, gAttn, gQKV[0],
                            prefix.keyGradients(index), prefix.valueGradients(index), batch, heads, kvHeads, hd, scale);
                } catch (RuntimeException e) {
                    for (Tensor t : gQKV) t.close();
                    throw e;
                }
            }
        }
        try {
            b.ropeQkBackwardInPlace(gQKV[0], gQKV[1], positions, invFreq, heads, kvHeads, hd, ropeScaling);
            if (!inputGrad) {
                SharedInputLinears.backwardParametersOnly(b, s.h1, gQKV, q, k, v);
                return null;
            }
            return SharedInputLinears.backward(b, s.h1, gQKV, q, k, v);
        } finally {
            for (Tensor t : gQKV) t.close();
        }
    }

    /**
     * The causal attention over the sequence merged with attention over the training prefix (every
     * query sees all P prefix slots). attentionBackward on the merged result gives the sequence
     * part's gradients; backwardTrain adds the prefix part. Closes seq.
     */
    private dev.qlora4j.backend.AttentionResult withPrefix(Backend b, dev.qlora4j.backend.AttentionResult seq, Tensor qs,
                                                           int batch, int heads, int kvHeads, int hd, Integer window) {
        int tokens = qs.dim(0) / batch;
        if (window != null && window > 0 && tokens + prefix.length() > window) {
            seq.close();
            throw new UnsupportedOperationException("prefix tuning with a sliding window: " + tokens + " tokens after " + prefix.length()
                    + " prefix slots exceed the window of " + window + " (layer " + index + "), where the prefix would leave the window; "
                    + "train with max_seq_length <= " + (window - prefix.length()));
        }
        try (seq) {
            return b.prefixAttention(qs, prefix.keys(index), prefix.values(index), seq, batch, heads, kvHeads, hd,
                    (float) (1.0 / Math.sqrt(hd)));
        }
    }

    /** The attention sublayer's contribution to the residual stream: the hook's output (attnOut itself, or a new tensor replacing it). */
    private Tensor afterAttention(Tensor attnIn, Tensor attnOut) {
        Tensor r = hooks.afterAttention(index, attnIn, attnOut);
        if (r != attnOut) attnOut.close();
        return r;
    }

    private Tensor afterMlp(Tensor mlpIn, Tensor mlpOut) {
        Tensor r = hooks.afterMlp(index, mlpIn, mlpOut);
        if (r != mlpOut) mlpOut.close();
        return r;
    }

    /**
     * A hook's backward. The sublayer output before the hook is not among the saved activations, so it is
     * recomputed here (one projection; only when hooks are set) from the saved projection input.
     */
    private LayerHooks.HookGrads hookBackward(Backend b, Tensor sublayerIn, Tensor sublayerOut, Tensor gradOut,
                                              boolean attention) {
        try (sublayerOut) {
            return attention ? hooks.afterAttentionBackward(index, sublayerIn, sublayerOut, gradOut)
                    : hooks.afterMlpBackward(index, sublayerIn, sublayerOut, gradOut);
        }
    }

    private static void addAndClose(Backend b, Tensor into, Tensor extra) {
        if (extra == null) return;
        b.addInPlace(into, extra);
        extra.close();
    }

    /**
     * Replaces the frozen weights (norms and projections) through r; done at load time, before adapters wrap
     * the projections (weight offload moves them into a streaming slot). The caller owns the old objects.
     */
    public void remapWeights(WeightRemap r) {
        inputNorm = r.tensor(inputNorm);
        postAttnNorm = r.tensor(postAttnNorm);
        q = r.linear(q); k = r.linear(k); v = r.linear(v); o = r.linear(o);
        gate = r.linear(gate); up = r.linear(up); down = r.linear(down);
    }

    public int index() { return index; }

    long weightBytes() {
        long n = inputNorm.byteSize() + postAttnNorm.byteSize();
        for (Linear l : new Linear[] {q, k, v, o, gate, up, down}) n += l.weightBytes();
        return n;
    }

    @Override
    public void close() {
        inputNorm.close();
        postAttnNorm.close();
        for (Linear l : new Linear[] {q, k, v, o, gate, up, down}) l.close();
    }
}
