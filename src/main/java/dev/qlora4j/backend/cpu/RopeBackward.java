package dev.qlora4j.backend.cpu;

/**
 * The transpose of {@link Rope}: forward maps (a, b) to (a c - b s, b c + a s) with
 * c = cos(angle) * scaling and s = sin(angle) * scaling, so the gradient (ga, gb) maps to
 * (ga c + gb s, gb c - ga s), a rotation by -angle. c and s are computed exactly as the forward
 * computes them (float32 angle, float32 cos/sin times the scaling).
 */
final class RopeBackward {
    private RopeBackward() {}

    /** Rows [r0, r1) of grad [n, heads * headDim], in place. */
    static void apply(float[] grad, int[] positions, float[] invFreq, int heads, int headDim,
                      float attentionScaling, int r0, int r1) {
        int half = headDim / 2;
        int width = heads * headDim;
        float[] cos = new float[half];
        float[] sin = new float[half];
        for (int r = r0; r < r1; r++) {
            float pos = positions[r];
            for (int i = 0; i < half; i++) {
                float angle = pos * invFreq[i];
                cos[i] = (float) Math.cos(angle) * attentionScaling;
                sin[i] = (float) Math.sin(angle) * attentionScaling;
            }
            for (int h = 0; h < heads; h++) {
                int o = r * width + h * headDim;
                for (int i = 0; i < half; i++) {
                    float ga = grad[o + i];
                    float gb = grad[o + i + half];
                    grad[o + i] = ga * cos[i] + gb * sin[i];
                    grad[o + i + half] = gb * cos[i] - ga * sin[i];
                }
            }
        }
    }
}
