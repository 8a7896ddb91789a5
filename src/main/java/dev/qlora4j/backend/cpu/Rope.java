package dev.qlora4j.backend.cpu;

/**
 * Rotary position embedding in HF's rotate_half layout: within each head, element i pairs with
 * element i + headDim/2. Like HF, the angle positions[row] * invFreq[i] is a float32 product,
 * and cos/sin (times attentionScaling) are rounded to float32 before they multiply x.
 */
final class Rope {
    private Rope() {}

    /** Rows [r0, r1) of x [n, heads * headDim], in place. */
    static void apply(float[] x, int[] positions, float[] invFreq, int heads, int headDim,
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
                    float a = x[o + i];
                    float b = x[o + i + half];
                    x[o + i] = a * cos[i] - b * sin[i];
                    x[o + i + half] = b * cos[i] + a * sin[i];
                }
            }
        }
    }
}
