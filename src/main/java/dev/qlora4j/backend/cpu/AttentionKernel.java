package dev.qlora4j.backend.cpu;

import java.util.Arrays;

/**
 * Causal grouped-query attention against the KV cache, in float32.
 *
 * <p>Layouts: q [B*T, heads*D], k and v [B*T, kvHeads*D], cache arrays
 * [B, kvHeads, capacity, D], out [B*T, heads*D]. Query head h reads kv head h / (heads/kvHeads).
 * The query of new token t of row b sits in slot s = start + t and attends to slots
 * j in [max(padStart[b], s - window + 1 when window > 0), s]. As in HF's eager attention:
 * scores = (q . k_j) * scale, p = softmax(scores) with the max subtracted, out = sum_j p_j v_j.
 * A query with no visible slot (a padding position) yields zeros.
 */
final class AttentionKernel {
    private AttentionKernel() {}

    record Shape(int batch, int tokens, int heads, int kvHeads, int headDim, int capacity) {}

    /** Copies the new keys and values of every row into cache slots [start, start + T). */
    static void writeCache(Shape s, float[] k, float[] v, float[] kc, float[] vc, int start) {
        int d = s.headDim();
        int kvWidth = s.kvHeads() * d;
        for (int b = 0; b < s.batch(); b++) {
            for (int t = 0; t < s.tokens(); t++) {
                int src = (b * s.tokens() + t) * kvWidth;
                for (int kh = 0; kh < s.kvHeads(); kh++) {
                    int dst = ((b * s.kvHeads() + kh) * s.capacity() + start + t) * d;
                    System.arraycopy(k, src + kh * d, kc, dst, d);
                    System.arraycopy(v, src + kh * d, vc, dst, d);
                }
            }
        }
    }

    /** Computes the outputs of (batch row, query head) pairs [p0, p1), pair = b * heads + h. */
    static void attend(Shape s, float[] q, float[] kc, float[] vc, int start, int[] padStart,
                       float scale, int window, float[] out, int p0, int p1) {
        int d = s.headDim();
        int qWidth = s.heads() * d;
        int group = s.heads() / s.kvHeads();
        float[] scores = new float[start + s.tokens()];
        for (int p = p0; p < p1; p++) {
            int b = p / s.heads();
            int h = p % s.heads();
            int cacheBase = (b * s.kvHeads() + h / group) * s.capacity() * d;
            for (int t = 0; t < s.tokens(); t++) {
                int slot = start + t;
                int qo = (b * s.tokens() + t) * qWidth + h * d;
                int lo = Math.max(padStart[b], window > 0 ? slot - window + 1 : 0);
                int len = slot - lo + 1;
                if (len <= 0) {
                    Arrays.fill(out, qo, qo + d, 0f);
                    continue;
                }
                for (int j = 0; j < len; j++) {
                    scores[j] = VectorMath.dot(q, qo, kc, cacheBase + (lo + j) * d, d) * scale;
                }
                float max = VectorMath.max(scores, 0, len);
                float sum = VectorMath.expShiftedInPlace(scores, 0, len, max);
                Arrays.fill(out, qo, qo + d, 0f);
                for (int j = 0; j < len; j++) {
                    VectorMath.axpy(scores[j] / sum, vc, cacheBase + (lo + j) * d, out, qo, d);
                }
            }
        }
    }
}
