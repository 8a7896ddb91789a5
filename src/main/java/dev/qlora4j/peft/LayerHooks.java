package dev.qlora4j.peft;

import dev.qlora4j.tensor.Tensor;

/**
 * Hooks a decoder layer calls after its two sublayers, so that adapters which sit between
 * sublayers (bottleneck adapters) need no change to the layer code beyond these calls.
 * Integration contract for DecoderLayer (pre-norm Llama layout):
 *
 * <pre>
 *   hN   = input_layernorm(x)                      // attnIn
 *   a    = o_proj(attention(q(hN), k(hN), v(hN)))   // attnOut
 *   a'   = hooks.afterAttention(layer, hN, a)
 *   r    = x + a'
 *   h2N  = post_attention_layernorm(r)             // mlpIn
 *   m    = down(silu(gate(h2N)) * up(h2N))          // mlpOut
 *   m'   = hooks.afterMlp(layer, h2N, m)
 *   out  = r + m'
 * </pre>
 *
 * A hook returns its input {@code out} tensor itself when it changes nothing (the caller must not
 * close it twice). In backward, given d loss / d (hook output), the counterpart returns the
 * gradient w.r.t. the sublayer output and an extra gradient w.r.t. the sublayer input (null when
 * the hook did not read it), and accumulates the adapter's parameter gradients. The forward
 * inputs are passed again (saved or recomputed under gradient checkpointing); anything else,
 * dropout masks included, is recomputed from them. A backward must not rely on its forward having
 * run just before: under gradient checkpointing the backward's recompute calls afterAttention (its
 * result feeds the saved residual) but not afterMlp (its result is only the layer output).
 */
public interface LayerHooks {
    /** attnIn, attnOut [n, hidden] -> what the decoder adds to the residual stream. */
    Tensor afterAttention(int layer, Tensor attnIn, Tensor attnOut);

    /** mlpIn, mlpOut [n, hidden] -> what the decoder adds to the residual stream. */
    Tensor afterMlp(int layer, Tensor mlpIn, Tensor mlpOut);

    HookGrads afterAttentionBackward(int layer, Tensor attnIn, Tensor attnOut, Tensor gradOut);

    HookGrads afterMlpBackward(int layer, Tensor mlpIn, Tensor mlpOut, Tensor gradOut);

    /**
     * @param gradSublayerOut d loss / d (sublayer output) [n, hidden]; gradOut itself when the hook was the identity
     * @param gradSublayerIn  extra d loss / d (sublayer input) [n, hidden] to add to the one flowing back through
     *                        the sublayer, or null
     */
    record HookGrads(Tensor gradSublayerOut, Tensor gradSublayerIn) {}

    /** No hooks: the identity. */
    LayerHooks NONE = new LayerHooks() {
        @Override public Tensor afterAttention(int layer, Tensor in, Tensor out) { return out; }
        @Override public Tensor afterMlp(int layer, Tensor in, Tensor out) { return out; }
        @Override public HookGrads afterAttentionBackward(int layer, Tensor in, Tensor out, Tensor g) { return new HookGrads(g, null); }
        @Override public HookGrads afterMlpBackward(int layer, Tensor in, Tensor out, Tensor g) { return new HookGrads(g, null); }
    };
}
