package dev.qlora4j.backend.cpu;

/**
 * Rotary position embedding in HF's rotate_half layout: within each head, element i pairs with
 * element i + headDim/2. Like HF, the angle positions[row] * invFreq[i] is a float32 product,
 * and cos/sin (times attentionScaling) are rounded to float32 before they multiply x.
 *
 * <p>The forward maps (a, b) to (a c - b s, b c + a s) with c = cos(angle) * scaling and
 * s = sin(angle) * scaling; its transpose, the backward, maps the gradient (ga, gb) to
 * (ga c + gb s, gb c - ga s): the same rotation with s negated. Negation is exact in float32, so
 * both directions share one loop and the backward is bit for bit what it would be written out.
 */
final class Rope {
    private Rope() {}

    /** Forward: rows [r0, r1) of x [n, heads * headDim], in place. */
    static void apply(float[] x, int[] positions, float[] invFreq, int heads, int headDim,
                      float attentionScaling, int r0, int r1) {
        rotate(x, positions, invFreq, heads, headDim, attentionScaling, r0, r1, false);
    }

    /** Backward (rotation by -angle): rows [r0, r1) of grad [n, heads * headDim], in place. */
    static void applyBackward(float[] grad, int[] positions, float[] invFreq, int heads, int headDim,
                              float attentionScaling, int r0, int r1) {
        rotate(grad, positions, invFreq, heads, headDim, attentionScaling, r0, r1, true);
    }

    private static void rotate(float[] x, int[] positions, float[] invFreq, int heads, int headDim,
                               float attentionScaling, int r0, int r1, boolean inverse) {
        int half = headDim / 2;
        int width = heads * headDim;
        float[] cos = new float[half];
        float[] sin = new float[half];
        for (int r = r0; r < r1; r++) {
            float pos = positions[r];
            for (int i = 0; i < half; i++) {
                float angle = pos * invFreq[i];
                cos[i] = (float) Math.cos(angle) * attentionScaling;
                float s = (float) Math.sin(angle) * attentionScaling;
                sin[i] = inverse ? -s : s;
            }
            for (int h = 0; h < heads; h++) {
                int o = r * width + h * headDim;
                for (int i = 0; i < half; i++) {
                    float a = x[o + i];
                    float b = x[o + i + half];
                    x[o + i] = a * cos[i] - b * sin[i];
                    x[o + i + half] = b * cos[i] + a * sin[i];
                }
            }
        }
    }
}
