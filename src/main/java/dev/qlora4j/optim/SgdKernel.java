package dev.qlora4j.optim;

/**
 * torch.optim.SGD's per-element update (single-tensor path), CPU twin of a CUDA kernel:
 * <pre>
 *   d   = g + wd*p                                     (if wd != 0)
 *   buf = first step ? d : buf*momentum + (1 - dampening)*d   (if momentum != 0)
 *   d   = nesterov ? d + momentum*buf : buf            (if momentum != 0)
 *   p   = p + (-lr)*d
 * </pre>
 */
public final class SgdKernel {
    private SgdKernel() {}

    /** Elements [from, to); {@code buf} is null when momentum is 0. */
    public static void update(float[] p, float[] g, float[] buf, int from, int to, float lr, float weightDecay,
                       float momentum, float dampening, boolean nesterov, boolean firstStep) {
        float negLr = -lr;
        float keep = 1f - dampening;
        for (int i = from; i < to; i++) {
            float d = g[i];
            if (weightDecay != 0f) d = d + weightDecay * p[i];
            if (momentum != 0f) {
                float b = firstStep ? d : buf[i] * momentum + keep * d;
                buf[i] = b;
                d = nesterov ? d + momentum * b : b;
            }
            p[i] = p[i] + negLr * d;
        }
    }
}
