package dev.qlora4j.optim;

import java.util.List;

/** torch.nn.utils.clip_grad_norm_ (L2 norm) over the gradients of a parameter list. */
public final class GradClip {
    private GradClip() {}

    /** {@link #clipByGlobalNorm(List, double, boolean)} with error_if_nonfinite=False (torch's default). */
    public static float clipByGlobalNorm(List<? extends Param> params, double maxNorm) {
        return clipByGlobalNorm(params, maxNorm, false);
    }

    /**
     * Scales all gradients in place by min(1, maxNorm / (total + 1e-6)) and returns the total norm
     * before clipping. As torch on the CPU: each gradient's norm is accumulated in double and
     * rounded to float, the total is the norm of those norms, and the scale is computed in float.
     * Parameters without a gradient are skipped; with none at all the norm is 0.
     *
     * @throws IllegalStateException when the norm is NaN or infinite and {@code errorIfNonfinite}
     *         (otherwise, as torch, the non-finite scale is applied)
     */
    public static float clipByGlobalNorm(List<? extends Param> params, double maxNorm, boolean errorIfNonfinite) {
        double sumOfSquares = 0;
        for (Param p : params) {
            if (p.grad() == null) continue;
            float[] g = HostFloats.view(p.grad(), "gradient of '" + p.name() + "'");
            double s = 0;
            for (float x : g) s += (double) x * x;
            float norm = (float) Math.sqrt(s);
            sumOfSquares += (double) norm * norm;
        }
        float total = (float) Math.sqrt(sumOfSquares);
        if (errorIfNonfinite && !Float.isFinite(total)) {
            throw new IllegalStateException("The total norm of order 2.0 for gradients from `parameters` is non-finite, so it cannot be clipped. "
                    + "Check the loss and learning rate for the step that produced it, or pass errorIfNonfinite=false");
        }
        float coef = (float) maxNorm / (total + 1e-6f);
        float clamped = Math.min(coef, 1.0f);
        if (!(clamped == 1.0f)) { // multiplying by exactly 1 changes nothing; NaN scales are applied, as torch does
            for (Param p : params) {
                if (p.grad() == null) continue;
                float[] g = HostFloats.view(p.grad(), "gradient of '" + p.name() + "'");
                for (int i = 0; i < g.length; i++) g[i] *= clamped;
                HostFloats.store(p.grad(), g);
            }
        }
        return total;
    }
}
