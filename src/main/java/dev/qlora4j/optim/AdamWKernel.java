package dev.qlora4j.optim;

/**
 * torch.optim.AdamW's per-element update (single-tensor path, amsgrad off), the CPU twin of the
 * CUDA adamw kernel: the launcher computes {@link Scalars} once per parameter and step and every
 * element range applies the same float arithmetic.
 *
 * <pre>
 *   p  = p * (1 - lr*wd)                        decoupled weight decay, before the moments
 *   m  = lerp(m, g, 1 - beta1)                  torch lerp: fma(w, g - m, m) for w &lt; 0.5
 *   v  = v*beta2 + ((1 - beta2)*g)*g
 *   p  = p + (-lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps),   bc_i = 1 - beta_i^step
 * </pre>
 */
public final class AdamWKernel {
    private AdamWKernel() {}

    /**
     * Per-step scalars, computed in double as torch's Python code does and rounded to float where
     * the tensor ops use them.
     */
    public record Scalars(float decay, float lerpWeight, float beta2, float oneMinusBeta2, float negStepSize, float bias2Sqrt, float eps) {
        public static Scalars of(double lr, double beta1, double beta2, double eps, double weightDecay, long step) {
            double bc1 = 1 - Math.pow(beta1, step);
            double bc2 = 1 - Math.pow(beta2, step);
            return new Scalars((float) (1 - lr * weightDecay), (float) (1 - beta1), (float) beta2, (float) (1 - beta2),
                    (float) (-(lr / bc1)), (float) Math.sqrt(bc2), (float) eps);
        }
    }

    /** Updates elements [from, to) of p [n], m [n], v [n] from g [n]. */
    public static void update(float[] p, float[] g, float[] m, float[] v, int from, int to, Scalars s) {
        boolean lerpFromStart = Math.abs(s.lerpWeight()) < 0.5f;
        for (int i = from; i < to; i++) {
            float pi = p[i] * s.decay();
            float gi = g[i];
            float mi = m[i];
            // torch's lerp, fused as its vectorized CPU and CUDA kernels evaluate it
            mi = lerpFromStart ? Math.fma(s.lerpWeight(), gi - mi, mi) : Math.fma(-(gi - mi), 1f - s.lerpWeight(), gi);
            float vi = v[i] * s.beta2() + s.oneMinusBeta2() * gi * gi;
            float denom = (float) Math.sqrt(vi) / s.bias2Sqrt() + s.eps();
            p[i] = pi + s.negStepSize() * mi / denom;
            m[i] = mi;
            v[i] = vi;
        }
    }
}
