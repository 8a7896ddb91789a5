package dev.qlora4j.backend;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Arrays;

/**
 * The argument checks {@link Backend#prefixAttention} and {@link Backend#prefixAttentionBackward}
 * share on every backend, with messages that name the argument and the expected shape.
 */
public final class PrefixAttentionShapes {
    private PrefixAttentionShapes() {}

    /** Checks q, the prefix and an attention result of q; returns the tokens per row T. */
    public static int check(String op, Tensor q, Tensor kPrefix, Tensor vPrefix, AttentionResult attn, int batch, int heads,
                            int kvHeads, int headDim) {
        if (heads < 1 || kvHeads < 1 || heads % kvHeads != 0 || headDim < 1) {
            throw new IllegalArgumentException(op + ": heads (" + heads + ") must be a positive multiple of kvHeads (" + kvHeads
                    + ") and headDim (" + headDim + ") positive");
        }
        if (q.rank() != 2 || q.dim(1) != heads * headDim || batch < 1 || q.dim(0) % batch != 0) {
            throw new IllegalArgumentException(op + ": q " + Arrays.toString(q.shape()) + " must be [B*T, " + heads + "*" + headDim
                    + "] with B = " + batch);
        }
        int p = kPrefix.rank() == 2 ? kPrefix.dim(0) : -1;
        if (p < 1 || kPrefix.dim(1) != kvHeads * headDim || !Arrays.equals(kPrefix.shape(), vPrefix.shape())) {
            throw new IllegalArgumentException(op + ": kPrefix " + Arrays.toString(kPrefix.shape()) + " and vPrefix "
                    + Arrays.toString(vPrefix.shape()) + " must both be [P >= 1, " + kvHeads + "*" + headDim + "]");
        }
        int tokens = q.dim(0) / batch;
        if (!Arrays.equals(attn.out().shape(), q.shape())) {
            throw new IllegalArgumentException(op + ": attention output " + Arrays.toString(attn.out().shape())
                    + " must be shaped like q " + Arrays.toString(q.shape()));
        }
        if (attn.lse().dtype() != DType.F32 || attn.lse().numel() != (long) batch * heads * tokens) {
            throw new IllegalArgumentException(op + ": lse " + attn.lse() + " must be F32 [" + batch + ", " + heads + ", " + tokens
                    + "]; pass the AttentionResult of attentionTrain (or prefixAttention) for this q");
        }
        return tokens;
    }

    /** Checks gradOut/gradQ (shaped like q) and the F32 prefix gradient accumulators (shaped like kPrefix). */
    public static void checkGradients(String op, Tensor q, Tensor kPrefix, Tensor gradOut, Tensor gradQ, Tensor gradK, Tensor gradV) {
        if (!Arrays.equals(gradOut.shape(), q.shape()) || !Arrays.equals(gradQ.shape(), q.shape())) {
            throw new IllegalArgumentException(op + ": gradOut " + Arrays.toString(gradOut.shape()) + " and gradQ "
                    + Arrays.toString(gradQ.shape()) + " must be shaped like q " + Arrays.toString(q.shape()));
        }
        for (Tensor g : new Tensor[] {gradK, gradV}) {
            if (g.dtype() != DType.F32 || !Arrays.equals(g.shape(), kPrefix.shape())) {
                throw new IllegalArgumentException(op + ": the prefix gradients must be F32 accumulators shaped like kPrefix "
                        + Arrays.toString(kPrefix.shape()) + ", got " + g);
            }
        }
    }
}
