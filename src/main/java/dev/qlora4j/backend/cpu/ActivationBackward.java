package dev.qlora4j.backend.cpu;

import dev.qlora4j.tensor.Lanes;

import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;

/** Backward passes of RMSNorm and SwiGLU, in float32. */
final class ActivationBackward {
    private ActivationBackward() {}

    private static final VectorSpecies<Float> F = HalfVectors.F;

    /**
     * Rows [r0, r1) of RMSNorm's grad_x. With r = 1/sqrt(mean(x^2) + eps) computed as the forward
     * does and y_j = x_j r w_j:
     * grad_x_k = r (g_k w_k) - (r^3 / h) x_k sum_j g_j w_j x_j.
     * Also stores r per row in inv (the weight gradient needs x_j r).
     */
    static void rmsNorm(float[] x, float[] w, float eps, float[] g, int h, float[] gradX, float[] inv, int r0, int r1) {
        int lanes = F.length();
        int bound = h - h % lanes;
        for (int row = r0; row < r1; row++) {
            int o = row * h;
            float mean = VectorMath.sumSquares(x, o, h) / h;
            float r = (float) (1.0 / Math.sqrt(mean + eps));
            inv[row] = r;
            // sum_j (g_j w_j) x_j
            FloatVector acc = FloatVector.zero(F);
            int i = 0;
            for (; i < bound; i += lanes) {
                FloatVector gw = FloatVector.fromArray(F, g, o + i).mul(FloatVector.fromArray(F, w, i));
                acc = gw.fma(FloatVector.fromArray(F, x, o + i), acc);
            }
            float dot = dev.qlora4j.tensor.Lanes.sum(acc);
            for (; i < h; i++) dot = Math.fma(g[o + i] * w[i], x[o + i], dot);
            float coef = r * r * r * dot / h;
            i = 0;
            for (; i < bound; i += lanes) {
                FloatVector gw = FloatVector.fromArray(F, g, o + i).mul(FloatVector.fromArray(F, w, i));
                gw.mul(r).sub(FloatVector.fromArray(F, x, o + i).mul(coef)).intoArray(gradX, o + i);
            }
            for (; i < h; i++) gradX[o + i] = (g[o + i] * w[i]) * r - x[o + i] * coef;
        }
    }

    /**
     * Columns [c0, c1) of RMSNorm's weight gradient over all n rows: gradW[j] += sum_rows g_j (x_j r),
     * the rows summed in order into a float32 partial first, then added.
     */
    static void rmsNormWeight(float[] x, float[] g, float[] inv, int n, int h, float[] gradW, int c0, int c1) {
        int width = c1 - c0;
        float[] acc = new float[width];
        int lanes = F.length();
        int bound = width - width % lanes;
        for (int row = 0; row < n; row++) {
            int o = row * h + c0;
            float r = inv[row];
            int i = 0;
            for (; i < bound; i += lanes) {
                FloatVector xr = FloatVector.fromArray(F, x, o + i).mul(r);
                xr.fma(FloatVector.fromArray(F, g, o + i), FloatVector.fromArray(F, acc, i)).intoArray(acc, i);
            }
            for (; i < width; i++) acc[i] = Math.fma(x[o + i] * r, g[o + i], acc[i]);
        }
        for (int i = 0; i < width; i++) gradW[c0 + i] += acc[i];
    }

    /**
     * Elements [i0, i1) of SwiGLU's backward, out = silu(gate) * up with s = sigmoid(gate):
     * grad_up = g silu(gate), grad_gate = g up s (1 + gate (1 - s)).
     */
    static void siluMul(float[] gate, float[] up, float[] g, float[] gradGate, float[] gradUp, int i0, int i1) {
        int lanes = F.length();
        int i = i0;
        for (; i + lanes <= i1; i += lanes) {
            FloatVector x = FloatVector.fromArray(F, gate, i);
            FloatVector s = FloatVector.broadcast(F, 1f).div(Lanes.exp(x.neg()).add(1f));
            FloatVector go = FloatVector.fromArray(F, g, i);
            go.mul(x.mul(s)).intoArray(gradUp, i);
            FloatVector dsilu = s.mul(x.mul(s.neg().add(1f)).add(1f));
            go.mul(FloatVector.fromArray(F, up, i)).mul(dsilu).intoArray(gradGate, i);
        }
        for (; i < i1; i++) {
            float x = gate[i];
            float s = 1f / (1f + (float) Math.exp(-x));
            gradUp[i] = g[i] * (x * s);
            gradGate[i] = (g[i] * up[i]) * (s * (1f + x * (1f - s)));
        }
    }
}
