package dev.qlora4j.backend;

import dev.qlora4j.quant.Int8Weight;
import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Device;
import dev.qlora4j.tensor.Tensor;

/**
 * Every op the layers above need, implemented once per device. Model code calls these and
 * never branches on the device. The CPU backend is the reference each CUDA kernel is tested
 * against.
 *
 * <p>Conventions: activations are row-major 2-D {@code [rows, features]}; linear weights are
 * {@code [out, in]} as in PyTorch ({@code y = x W^T + b}); ops return new tensors in the
 * backend's activation dtype ({@link #activationDType()}) unless stated; integer index tensors
 * are I32. Weights may be F32, BF16 or F16 and are computed in float32 on the CPU.
 */
public interface Backend extends AutoCloseable {

    Device device();

    /** The dtype ops produce (F32 on the CPU; BF16 or F32 on CUDA as configured). */
    DType activationDType();

    /**
     * The memory of the device this backend computes on, in bytes, or -1 when it has no fixed budget of its own (the
     * CPU backend: host memory). Sizing heuristics (what gradient checkpointing keeps) scale with it.
     */
    default long deviceMemoryBytes() { return -1; }

    /**
     * A copy of read-only table t (one of this backend's tensors) in page-locked host memory that this backend's kernels
     * read directly, over the bus, or null when the backend has no such memory (the CPU backend: t is in host memory
     * already). The caller closes t and later the copy. For tables read a few rows at a time (the token embedding).
     */
    default Tensor hostMappedCopy(Tensor t) { return null; }

    // ---- memory ----

    /** An uninitialized tensor on this device. */
    Tensor empty(DType dtype, int... shape);

    /** A copy of a host tensor on this device, same dtype (the tensor itself on the CPU backend). */
    Tensor upload(Tensor host);

    /**
     * A zero-filled tensor on this device. A GPU backend fills it on its stream, in order with the work queued
     * before it: no host copy, and the host does not wait for the GPU (an upload of host zeros would, on a GPU,
     * wait for everything queued; gradients allocated on first use during a backward did that hundreds of times a
     * step).
     */
    default Tensor zeros(DType dtype, int... shape) { return upload(Tensor.zeros(dtype, shape)); }

    /** A host copy of a tensor of this device (the tensor itself on the CPU backend). */
    Tensor toHost(Tensor t);

    /** A copy converted to dtype, on this device. */
    Tensor cast(Tensor t, DType dtype);

    // ---- the forward ops of a decoder ----

    /** ids I32 [n], table [vocab, hidden] -> [n, hidden]. Ids outside the table are an error. */
    Tensor embedding(Tensor ids, Tensor table);

    /** x [n, h], weight [h] -> x / sqrt(mean(x^2) + eps) * weight, computed in float32 (as HF Llama/Qwen2 do). */
    Tensor rmsNorm(Tensor x, Tensor weight, float eps);

    /** x [n, k], w [m, k] dense, bias [m] or null -> x w^T + bias [n, m]. */
    Tensor linear(Tensor x, Tensor w, Tensor bias);

    /** Elementwise a + b, same shapes. */
    Tensor add(Tensor a, Tensor b);

    /** In place: a += b, same shapes. Returns a. */
    Tensor addInPlace(Tensor a, Tensor b);

    /** Elementwise silu(gate) * up (SwiGLU), same shapes. */
    Tensor siluMul(Tensor gate, Tensor up);

    /**
     * {@link #siluMul} for gate and up held as one buffer gateUp [n, 2 m] (gate's m columns, then up's: what a
     * backend that runs the gate/up projections as one GEMM returns, see SharedInputLinears#forwardJoined): [n, m].
     */
    default Tensor siluMulHalves(Tensor gateUp) { throw unsupported("siluMulHalves"); }

    /**
     * Rotary position embedding, HF "rotate_half" layout, in place on x [n, heads * headDim]:
     * for each head and i < headDim/2, with angle = positions[row] * invFreq[i],
     * (x_i, x_{i+d/2}) -> (x_i cos - x_{i+d/2} sin, x_{i+d/2} cos + x_i sin), cos and sin
     * multiplied by attentionScaling. positions I32 [n]; invFreq F32 [headDim/2].
     */
    void ropeInPlace(Tensor x, Tensor positions, Tensor invFreq, int heads, int headDim, float attentionScaling);

    // ---- fused forms of op sequences the decoder runs back to back (one launch instead of two on the GPU) ----

    /**
     * resid += y (rounded to resid's dtype, as {@link #addInPlace}), then returns rmsNorm(resid, weight, eps).
     * Same results as those two calls; backends with kernel launches fuse them.
     */
    default Tensor addInPlaceRmsNorm(Tensor resid, Tensor y, Tensor weight, float eps) {
        addInPlace(resid, y);
        return rmsNorm(resid, weight, eps);
    }

    /**
     * {@link #ropeInPlace} on q [n, heads * headDim] and k [n, kvHeads * headDim] with the same positions:
     * the same results as two calls, one pass on backends that fuse it.
     */
    default void ropeQkInPlace(Tensor q, Tensor k, Tensor positions, Tensor invFreq, int heads, int kvHeads, int headDim,
                               float attentionScaling) {
        ropeInPlace(q, positions, invFreq, heads, headDim, attentionScaling);
        ropeInPlace(k, positions, invFreq, kvHeads, headDim, attentionScaling);
    }

    /** A KV cache for layers x batch x kvHeads x capacity x headDim, in the activation dtype. */
    KvCache newKvCache(int layers, int batch, int kvHeads, int capacity, int headDim);

    /**
     * Causal self-attention with grouped-query heads against a KV cache, for a batch of B rows
     * each carrying T new tokens (prefill: T = prompt length; decode: T = 1).
     *
     * <p>q [B*T, heads*headDim], k and v [B*T, kvHeads*headDim] (rope already applied). The T new
     * keys/values of batch row b are written to cache slots [start, start+T) of layer {@code layer};
     * the query in slot s attends to slots j with padStart[b] <= j <= s (and j > s - window when
     * window > 0, Mistral's sliding window). padStart I32 [B]: slots before it are left padding.
     * Scores are scaled by {@code scale} (1/sqrt(headDim)); softmax in float32. Returns [B*T, heads*headDim].
     */
    Tensor attention(Tensor q, Tensor k, Tensor v, KvCache cache, int layer, int start, Tensor padStart,
                     int heads, int kvHeads, int headDim, float scale, int window);

    /**
     * {@link #ropeQkInPlace} on q and k, then {@link #attention} of the rotated q, k and v (same arguments as those
     * two calls; attentionScaling is the rope's factor on cos and sin, scale the attention's on the scores): the same
     * results, and the same cache contents, as the two calls. Backends with kernel launches rotate k straight into the
     * cache in the launch that rotates q, so afterwards q is rotated in place but k may hold either its input or
     * its rotation: read the keys from the cache, not from k.
     */
    default Tensor ropeQkAttention(Tensor q, Tensor k, Tensor v, Tensor positions, Tensor invFreq, float attentionScaling,
                                   KvCache cache, int layer, int start, Tensor padStart, int heads, int kvHeads,
                                   int headDim, float scale, int window) {
        ropeQkInPlace(q, k, positions, invFreq, heads, kvHeads, headDim, attentionScaling);
        return attention(q, k, v, cache, layer, start, padStart, heads, kvHeads, headDim, scale, window);
    }

    /** Rows of x [n, h] picked by rows I32 [r] -> [r, h]. */
    Tensor gatherRows(Tensor x, Tensor rows);

    /**
     * Per-row cross-entropy: logits [n, vocab], targets I32 [n] -> F32 [n] with
     * -log_softmax(logits)[target] computed in float32; rows whose target is -100 give 0.
     */
    Tensor crossEntropy(Tensor logits, Tensor targets);

    // ---- quantized weights (bitsandbytes formats) ----

    /**
     * Makes a 4-bit (NF4/FP4, optionally double-quantized) weight ready for this device. The
     * matmul dequantizes to computeDType (F32, BF16 or F16) and multiplies in that precision with
     * float32 accumulation, as bitsandbytes' Linear4bit does with bnb_4bit_compute_dtype.
     */
    QuantizedWeight prepare4bit(QuantState4bit weight, DType computeDType);

    /**
     * Quantizes a dense weight [out, in] (host or this device) to bitsandbytes 4-bit and prepares it,
     * bit-identical to {@link dev.qlora4j.quant.Quant4bit#quantize}. The default quantizes on the
     * host; the CUDA backend quantizes on the GPU (fast quantize-on-load, synthetic benchmark models).
     */
    default QuantizedWeight quantize4bit(Tensor weight, dev.qlora4j.quant.QuantType type, int blocksize,
                                         boolean doubleQuant, DType computeDType) {
        return prepare4bit(dev.qlora4j.quant.Quant4bit.quantize(toHost(weight), type, blocksize, doubleQuant), computeDType);
    }

    /** Makes an LLM.int8 weight (CB, SCB) ready for this device; threshold 0 means pure int8. */
    QuantizedWeight prepare8bit(Int8Weight weight, float threshold);

    /** x [n, in] times the quantized weight [out, in] transposed, + bias [out] or null -> [n, out]. */
    Tensor linearQuantized(Tensor x, QuantizedWeight w, Tensor bias);

    /**
     * {@link #linearQuantized} of one x [n, in] with several weights [out_i, in] (a decoder layer's q/k/v, or
     * gate/up): result i = linearQuantized(x, ws.get(i), biases.get(i)), [n, out_i], with the same values bit for bit.
     * biases has one entry per weight, null for none (e.g. {@code Arrays.asList(qb, null, null)}). Backends with
     * kernel launches may compute the group in one launch (the CUDA backend at decode); the default runs one
     * linearQuantized per weight.
     */
    default Tensor[] linearQuantizedGroup(Tensor x, java.util.List<? extends QuantizedWeight> ws, java.util.List<Tensor> biases) {
        if (ws.size() != biases.size()) {
            throw new IllegalArgumentException("linearQuantizedGroup needs one bias (or null) per weight: " + ws.size()
                    + " weights, " + biases.size() + " biases");
        }
        Tensor[] out = new Tensor[ws.size()];
        try {
            for (int i = 0; i < out.length; i++) out[i] = linearQuantized(x, ws.get(i), biases.get(i));
        } catch (RuntimeException e) {
            for (Tensor t : out) if (t != null) t.close();
            throw e;
        }
        return out;
    }

    /**
     * silu(x gate^T) * (x up^T) [n, out] in one op when the backend has a joint kernel for these weights and this x
     * (CUDA: the decode's joint gate / up GEMV on tiled 4-bit weights), the same values as the two
     * {@link #linearQuantized} calls (no bias) and {@link #siluMul}; null when it has none (nothing was run then).
     */
    default Tensor linearQuantizedSwiGlu(Tensor x, QuantizedWeight gate, QuantizedWeight up) { return null; }

    /** The dequantized weight [out, in] in dtype (for merges and for grad_input = grad_out @ W). */
    Tensor dequantize(QuantizedWeight w, DType dtype);

    // ---- training: backward passes and the ops adapters need ----
    // Defaults throw, so a backend can be built up op by op; the CPU backend implements all of them.
    // Gradients named grad* are w.r.t. the op's inputs; "accumulate" means += into an existing F32 tensor.

    /** Elementwise a * s. */
    default Tensor scale(Tensor a, float s) { throw unsupported("scale"); }

    /** In place: a += alpha * b, same shapes. Returns a. */
    default Tensor axpyInPlace(Tensor a, float alpha, Tensor b) { throw unsupported("axpyInPlace"); }

    /** Elementwise a * b, same shapes. */
    default Tensor mul(Tensor a, Tensor b) { throw unsupported("mul"); }

    /** Sum of squares of all elements, in float64 (gradient norms). */
    default double sumOfSquares(Tensor a) { throw unsupported("sumOfSquares"); }

    /**
     * Inverted dropout: zeroes each element with probability p and scales survivors by 1/(1-p).
     * The mask is a pure function of (seed, element index), so backward re-derives it from the seed.
     */
    default Tensor dropout(Tensor x, float p, long seed) { throw unsupported("dropout"); }

    /** x [n, h] -> per-row L2 norms F32 [n] (DoRA's weight norm). */
    default Tensor rowNorms(Tensor x) { throw unsupported("rowNorms"); }

    /** Multiplies each column j of x [n, m] by s[j] (s F32 [m]). */
    default Tensor scaleColumns(Tensor x, Tensor s) { throw unsupported("scaleColumns"); }

    /** Transpose of a 2-D tensor [n, m] -> [m, n]. */
    default Tensor transpose(Tensor x) { throw unsupported("transpose"); }

    /** grad_x of y = x w^T: gradOut [n, m], w [m, k] (dense, any float dtype) -> [n, k] = gradOut w. */
    default Tensor linearBackwardInput(Tensor gradOut, Tensor w) { throw unsupported("linearBackwardInput"); }

    /** grad_x through a frozen quantized weight: gradOut [n, out] -> gradOut dequant(W) [n, in]. */
    default Tensor linearQuantizedBackwardInput(Tensor gradOut, QuantizedWeight w) {
        throw unsupported("linearQuantizedBackwardInput");
    }

    /** Accumulate grad_w of y = x w^T: gradW [m, k] F32 += gradOut^T [m, n] x [n, k]. */
    default void linearBackwardWeight(Tensor gradOut, Tensor x, Tensor gradW) { throw unsupported("linearBackwardWeight"); }

    /** Accumulate the bias gradient: gradB [m] F32 += column sums of gradOut [n, m]. */
    default void sumRowsInto(Tensor gradOut, Tensor gradB) { throw unsupported("sumRowsInto"); }

    /**
     * RMSNorm backward: x [n, h], weight [h], gradOut [n, h] -> grad_x [n, h]; when gradWeight
     * (F32 [h]) is not null, accumulates the weight gradient into it.
     */
    default Tensor rmsNormBackward(Tensor x, Tensor weight, float eps, Tensor gradOut, Tensor gradWeight) {
        throw unsupported("rmsNormBackward");
    }

    /**
     * rmsNormBackward(x, weight, eps, gradOut, gradWeight) with addend added (rounded to the result's dtype, as
     * {@link #addInPlace}): the residual stream's gradient in a decoder layer's backward (norm path + skip path).
     * Same results as those two calls; backends with kernel launches fuse them (one pass over grad_x fewer).
     */
    default Tensor rmsNormBackwardAdd(Tensor x, Tensor weight, float eps, Tensor gradOut, Tensor gradWeight, Tensor addend) {
        Tensor gx = rmsNormBackward(x, weight, eps, gradOut, gradWeight);
        try {
            return addInPlace(gx, addend);
        } catch (RuntimeException e) {
            gx.close();
            throw e;
        }
    }

    /** SwiGLU backward: returns {grad_gate, grad_up} for out = silu(gate) * up. */
    default Tensor[] siluMulBackward(Tensor gate, Tensor up, Tensor gradOut) { throw unsupported("siluMulBackward"); }

    /**
     * {@link #siluMulBackward} that takes ownership of gate and up: it may write the gradients over them (the CUDA
     * backend does, saving two [tokens, intermediate] buffers where a training step's memory peaks). The caller must
     * not use or close gate and up afterwards; it closes the returned {grad_gate, grad_up}. Same values.
     */
    default Tensor[] siluMulBackwardInPlace(Tensor gate, Tensor up, Tensor gradOut) {
        try (gate; up) {
            return siluMulBackward(gate, up, gradOut);
        }
    }

    /**
     * {@link #siluMulBackwardInPlace} for gate and up held as one buffer gateUp [n, 2 m] ({@link #siluMulHalves}):
     * writes [grad_gate | grad_up] over it and returns it (ownership passes back to the caller, who closes it; on
     * failure it is closed here). Same values as the two-tensor form.
     */
    default Tensor siluMulHalvesBackwardInPlace(Tensor gateUp, Tensor gradOut) {
        throw unsupported("siluMulHalvesBackwardInPlace");
    }

    /**
     * {@link #attentionBackward} with its three gradients in ONE tensor [n, (heads + 2 kvHeads) headDim]: dQ's columns,
     * then dK's, then dV's (the layout the q/k/v projections' joined input-gradient GEMM reads), or null when this
     * backend does not form them that way for these arguments (nothing was run then: call attentionBackward).
     */
    default Tensor attentionBackwardJoined(Tensor q, Tensor k, Tensor v, Tensor segments, AttentionResult fwd, Tensor gradOut,
                                           int batch, int heads, int kvHeads, int headDim, float scale, int window) {
        return null;
    }

    /** {@link #ropeQkBackwardInPlace} on the dQ and dK columns of {@link #attentionBackwardJoined}'s result. */
    default void ropeQkBackwardJoinedInPlace(Tensor gradJoined, Tensor positions, Tensor invFreq, int heads, int kvHeads,
                                             int headDim, float attentionScaling) {
        throw unsupported("ropeQkBackwardJoinedInPlace");
    }

    /** RoPE backward in place (the transpose of the rotation: the same rotation by -angle). */
    default void ropeBackwardInPlace(Tensor grad, Tensor positions, Tensor invFreq, int heads, int headDim,
                                     float attentionScaling) {
        throw unsupported("ropeBackwardInPlace");
    }

    /**
     * {@link #ropeBackwardInPlace} on gradQ [n, heads * headDim] and gradK [n, kvHeads * headDim] with the same
     * positions: the same results as two calls, one pass on backends that fuse it.
     */
    default void ropeQkBackwardInPlace(Tensor gradQ, Tensor gradK, Tensor positions, Tensor invFreq, int heads, int kvHeads,
                                       int headDim, float attentionScaling) {
        ropeBackwardInPlace(gradQ, positions, invFreq, heads, headDim, attentionScaling);
        ropeBackwardInPlace(gradK, positions, invFreq, kvHeads, headDim, attentionScaling);
    }

    /** Embedding backward: gradTable [vocab, hidden] F32 += scatter of gradOut [n, hidden] rows at ids. */
    default void embeddingBackward(Tensor ids, Tensor gradOut, Tensor gradTable) { throw unsupported("embeddingBackward"); }

    /**
     * Causal self-attention for training, without a KV cache, over B rows of T tokens:
     * q [B*T, heads*headDim], k and v [B*T, kvHeads*headDim]. Query t of row b attends key s
     * when s <= t, segments[b*T+s] == segments[b*T+t] (packing: no attention across examples;
     * pass null for one segment per row), and t - s < window when window > 0. Softmax in float32.
     * A query with no visible key (cannot happen causally) would output zeros.
     */
    default AttentionResult attentionTrain(Tensor q, Tensor k, Tensor v, Tensor segments, int batch, int heads,
                                           int kvHeads, int headDim, float scale, int window) {
        throw unsupported("attentionTrain");
    }

    /** Attention backward: returns {grad_q, grad_k, grad_v} shaped like q, k, v (GQA heads summed). */
    default Tensor[] attentionBackward(Tensor q, Tensor k, Tensor v, Tensor segments, AttentionResult fwd,
                                       Tensor gradOut, int batch, int heads, int kvHeads, int headDim,
                                       float scale, int window) {
        throw unsupported("attentionBackward");
    }

    /**
     * Prefix tuning: training attention over P learned keys/values placed before every sequence.
     * {@code seq} is what {@link #attentionTrain} returned for q over the sequence; kPrefix and
     * vPrefix [P, kvHeads*headDim] (activation dtype, shared by all rows) are visible to every
     * query, whatever its segment or padding. With the prefix alone giving lse_p [B, heads, T] and
     * out_p (softmax of (q . k_p) * scale over the P keys), returns the attention over
     * [prefix ; sequence] as an LSE merge: lse = logaddexp(seq.lse, lse_p),
     * out = seq.out * exp(seq.lse - lse) + out_p * exp(lse_p - lse). A query that saw no sequence
     * key (lse -inf) gets out_p. The result goes to {@link #attentionBackward} as it is (whose
     * delta = rowsum(dO*out) and P = exp(s*scale - lse) then give exactly the sequence part's
     * gradients) and to {@link #prefixAttentionBackward}. seq stays the caller's.
     */
    default AttentionResult prefixAttention(Tensor q, Tensor kPrefix, Tensor vPrefix, AttentionResult seq, int batch,
                                            int heads, int kvHeads, int headDim, float scale) {
        throw unsupported("prefixAttention");
    }

    /**
     * The prefix part of {@link #prefixAttention}'s backward. merged = its result, gradOut
     * [B*T, heads*headDim]. With P_p = exp((q . k_p) * scale - lse), delta = rowsum(gradOut * out)
     * and dS = P_p * (gradOut . v_p - delta) * scale: gradQ (shaped like q, e.g. attentionBackward's
     * grad_q, activation dtype) += dS k_p in place; gradKPrefix and gradVPrefix (F32
     * [P, kvHeads*headDim]) += the sums over all tokens and the kv head's query heads of dS q and
     * P_p gradOut.
     */
    default void prefixAttentionBackward(Tensor q, Tensor kPrefix, Tensor vPrefix, AttentionResult merged, Tensor gradOut,
                                         Tensor gradQ, Tensor gradKPrefix, Tensor gradVPrefix, int batch, int heads,
                                         int kvHeads, int headDim, float scale) {
        throw unsupported("prefixAttentionBackward");
    }

    /**
     * Fused cross-entropy forward and backward: logits [n, vocab], targets I32 [n] (-100 ignored).
     * Returns {losses F32 [n], grad_logits [n, vocab] = (softmax - onehot(target)) * gradScale
     * (zero rows for ignored targets)}. Callers pass row chunks so [tokens x vocab] never exists whole.
     */
    default Tensor[] crossEntropyWithGrad(Tensor logits, Tensor targets, float gradScale) {
        throw unsupported("crossEntropyWithGrad");
    }

    /** Rows concatenated: parts [n_i, h] (same h and dtype) -> [sum n_i, h]. Default: through the host. */
    default Tensor concatRows(java.util.List<Tensor> parts) {
        int h = parts.get(0).dim(1), n = 0;
        for (Tensor p : parts) n += p.dim(0);
        Tensor out = Tensor.zeros(parts.get(0).dtype(), n, h);
        long offset = 0;
        for (Tensor p : parts) {
            Tensor host = toHost(p);
            java.lang.foreign.MemorySegment.copy(host.segment(), 0, out.segment(), offset, host.byteSize());
            offset += host.byteSize();
        }
        return upload(out);
    }

    private UnsupportedOperationException unsupported(String op) {
        return new UnsupportedOperationException(op + " is not implemented on the " + device()
                + " backend yet: train with --device cpu");
    }

    /** Waits for queued work (no-op on the CPU). */
    default void synchronize() {}

    /**
     * Under gradient checkpointing, the model calls this with true before a layer's recompute and with false after
     * that layer's backward: a backend that dequantizes weights per use may keep the recompute's dequantized weights
     * for the backward (the CUDA backend does, within a memory budget) and frees them at false. The default does
     * nothing.
     */
    default void keepDequantizedWeights(boolean keep) {}

    @Override
    default void close() {}
}
