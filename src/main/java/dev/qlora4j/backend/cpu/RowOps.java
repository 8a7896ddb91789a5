package dev.qlora4j.backend.cpu;

import dev.qlora4j.tensor.Lanes;

import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;

/** Row-wise and elementwise float32 kernels: RMSNorm, SwiGLU, addition, cross-entropy. */
final class RowOps {
    private RowOps() {}

    private static final VectorSpecies<Float> F = HalfVectors.F;

    /**
     * Rows [r0, r1) of x [*, h]: out = (x * rsqrt(mean(x^2) + eps)) * weight, all in float32 and
     * in that order, as HF's LlamaRMSNorm does for float32 hidden states.
     */
    static void rmsNorm(float[] x, float[] weight, float eps, int h, float[] out, int r0, int r1) {
        int lanes = F.length();
        int bound = h - h % lanes;
        for (int r = r0; r < r1; r++) {
            int o = r * h;
            float mean = VectorMath.sumSquares(x, o, h) / h;
            float inv = (float) (1.0 / Math.sqrt(mean + eps));
            int i = 0;
            for (; i < bound; i += lanes) {
                FloatVector.fromArray(F, x, o + i).mul(inv)
                        .mul(FloatVector.fromArray(F, weight, i))
                        .intoArray(out, o + i);
            }
            for (; i < h; i++) out[o + i] = (x[o + i] * inv) * weight[i];
        }
    }

    /** out[i] = silu(gate[i]) * up[i] = gate / (1 + exp(-gate)) * up, for i in [i0, i1). */
    static void siluMul(float[] gate, float[] up, float[] out, int i0, int i1) {
        int lanes = F.length();
        int i = i0;
        for (; i + lanes <= i1; i += lanes) {
            FloatVector g = FloatVector.fromArray(F, gate, i);
            FloatVector silu = g.div(Lanes.exp(g.neg()).add(1f));
            silu.mul(FloatVector.fromArray(F, up, i)).intoArray(out, i);
        }
        for (; i < i1; i++) {
            float g = gate[i];
            out[i] = g / (1f + (float) Math.exp(-g)) * up[i];
        }
    }

    /** out[i] = a[i] + b[i] for i in [i0, i1); out may be a. */
    static void add(float[] a, float[] b, float[] out, int i0, int i1) {
        int lanes = F.length();
        int i = i0;
        for (; i + lanes <= i1; i += lanes) {
            FloatVector.fromArray(F, a, i).add(FloatVector.fromArray(F, b, i)).intoArray(out, i);
        }
        for (; i < i1; i++) out[i] = a[i] + b[i];
    }

    /** Value of a target that contributes no loss (PyTorch's ignore_index default). */
    static final int IGNORE_INDEX = -100;

    /**
     * Rows [r0, r1) of logits [*, vocab]: loss = (max - row[target]) + log(sum exp(row - max)), with the max
     * subtracted before exp and the sum of exponentials accumulated in float32.
     */
    static void crossEntropy(float[] logits, int vocab, int[] targets, float[] loss, int r0, int r1) {
        for (int r = r0; r < r1; r++) {
            int t = targets[r];
            if (t == IGNORE_INDEX) {
                loss[r] = 0f;
                continue;
            }
            int o = r * vocab;
            float max = VectorMath.max(logits, o, vocab);
            float sum = VectorMath.sumExpShifted(logits, o, vocab, max);
            // (max - logit) first: exact for nearby values, so large logits lose no precision.
            loss[r] = (max - logits[o + t]) + (float) Math.log(sum);
        }
    }
}
