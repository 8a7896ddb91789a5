package dev.qlora4j.backend.cpu;

import java.util.Arrays;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorSpecies;

/**
 * Cross-entropy forward and backward in one pass over each row of logits [*, vocab]. The loss
 * is computed exactly as {@link RowOps#crossEntropy} computes it (same max, same float32 sum of
 * exponentials), so it equals the forward op bit for bit; the gradient is
 * (softmax - onehot(target)) * gradScale with softmax_j = exp(l_j - max) * (1 / sum).
 */
final class CrossEntropyGrad {
    private CrossEntropyGrad() {}

    private static final VectorSpecies<Float> F = HalfVectors.F;

    /** Rows [r0, r1): loss[r] and grad[r, :] (grad rows of ignored targets are zero). */
    static void rows(float[] logits, int vocab, int[] targets, float gradScale, float[] loss, float[] grad, int r0, int r1) {
        int lanes = F.length();
        for (int r = r0; r < r1; r++) {
            int t = targets[r];
            int o = r * vocab;
            if (t == RowOps.IGNORE_INDEX) {
                loss[r] = 0f;
                Arrays.fill(grad, o, o + vocab, 0f);
                continue;
            }
            float max = VectorMath.max(logits, o, vocab);
            System.arraycopy(logits, o, grad, o, vocab);
            float sum = VectorMath.expShiftedInPlace(grad, o, vocab, max);
            loss[r] = (max - logits[o + t]) + (float) Math.log(sum);
            float factor = (1f / sum) * gradScale;
            int i = 0;
            for (; i + lanes <= vocab; i += lanes) {
                FloatVector.fromArray(F, grad, o + i).mul(factor).intoArray(grad, o + i);
            }
            for (; i < vocab; i++) grad[o + i] *= factor;
            grad[o + t] -= gradScale;
        }
    }
}
