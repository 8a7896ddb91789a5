package dev.qlora4j.backend.cpu;

import java.util.Arrays;

/**
 * Causal grouped-query self-attention for training (no KV cache), forward and backward, in
 * float32, with flash-attention's bookkeeping: the forward saves each query's log-sum-exp of its
 * scaled scores, the backward recomputes the probabilities from it instead of storing them.
 *
 * <p>Layouts: q, out, grad_q [B*T, heads*D]; k, v, grad_k, grad_v [B*T, kvHeads*D];
 * lse [B, heads, T]; segments [B*T] or null. Query head h reads kv head h / (heads/kvHeads).
 * Query t of row b sees key s when s <= t, t - s < window (window > 0) and
 * segments[b*T+s] == segments[b*T+t] (when segments is not null).
 *
 * <p>Forward, per query: scores = (q . k_s) * scale over the visible s in increasing order,
 * p = exp(scores - max) / sum, out = sum_s p_s v_s: the same float32 operations in the same
 * order as AttentionKernel, so without segments and padding the output equals the cached
 * attention's bit for bit. lse = max + log(sum).
 *
 * <p>Backward: P_ts = exp(S_ts - lse_t), D_t = dO_t . O_t, dP_ts = dO_t . V_s,
 * dS_ts = P_ts (dP_ts - D_t); dQ_t = scale sum_s dS_ts K_s, dK_s = scale sum_t dS_ts Q_t,
 * dV_s = sum_t P_ts dO_t. Work is split over (row, query head) pairs; with grouped heads each
 * pair writes its dK, dV into its own scratch and the group is summed afterwards in head order,
 * so the result does not depend on the thread count.
 */
final class TrainAttention {
    private TrainAttention() {}

    record Shape(int batch, int tokens, int heads, int kvHeads, int headDim) {
        int group() { return heads / kvHeads; }
        int qWidth() { return heads * headDim; }
        int kvWidth() { return kvHeads * headDim; }
    }

    /**
     * The visible keys of query t of row b, in increasing order, into idx; returns how many.
     */
    private static int visible(Shape s, int[] segments, int b, int t, int window, int[] idx) {
        int lo = window > 0 ? Math.max(0, t - window + 1) : 0;
        int len = 0;
        if (segments == null) {
            for (int j = lo; j <= t; j++) idx[len++] = j;
        } else {
            int base = b * s.tokens();
            int seg = segments[base + t];
            for (int j = lo; j <= t; j++) {
                if (segments[base + j] == seg) idx[len++] = j;
            }
        }
        return len;
    }

    /** Forward of (row, query head) pairs [p0, p1), pair = b * heads + h. */
    static void forward(Shape s, float[] q, float[] k, float[] v, int[] segments, float scale, int window,
                        float[] out, float[] lse, int p0, int p1) {
        int d = s.headDim(), T = s.tokens();
        int qWidth = s.qWidth(), kvWidth = s.kvWidth();
        float[] scores = new float[T];
        int[] idx = new int[T];
        for (int p = p0; p < p1; p++) {
            int b = p / s.heads();
            int h = p % s.heads();
            int kvBase = b * T * kvWidth + (h / s.group()) * d;
            for (int t = 0; t < T; t++) {
                int qo = (b * T + t) * qWidth + h * d;
                int len = visible(s, segments, b, t, window, idx);
                Arrays.fill(out, qo, qo + d, 0f);
                if (len == 0) {
                    lse[p * T + t] = Float.NEGATIVE_INFINITY;
                    continue;
                }
                for (int j = 0; j < len; j++) {
                    scores[j] = VectorMath.dot(q, qo, k, kvBase + idx[j] * kvWidth, d) * scale;
                }
                float max = VectorMath.max(scores, 0, len);
                float sum = VectorMath.expShiftedInPlace(scores, 0, len, max);
                for (int j = 0; j < len; j++) {
                    VectorMath.axpy(scores[j] / sum, v, kvBase + idx[j] * kvWidth, out, qo, d);
                }
                lse[p * T + t] = max + (float) Math.log(sum);
            }
        }
    }

    /**
     * Backward of pairs [p0, p1): writes grad_q rows of each pair, and adds dK, dV of key s of
     * pair p at gk/gv[base(p) + s * stride] (the pair's scratch, or grad_k/grad_v directly when
     * heads are not grouped).
     */
    static void backward(Shape s, float[] q, float[] k, float[] v, int[] segments, float[] out, float[] lse,
                         float[] gradOut, float scale, int window, float[] gq, float[] gk, float[] gv,
                         boolean direct, int p0, int p1) {
        int d = s.headDim(), T = s.tokens();
        int qWidth = s.qWidth(), kvWidth = s.kvWidth();
        float[] probs = new float[T];
        int[] idx = new int[T];
        for (int p = p0; p < p1; p++) {
            int b = p / s.heads();
            int h = p % s.heads();
            int kvBase = b * T * kvWidth + (h / s.group()) * d;
            int gBase = direct ? kvBase : p * T * d;
            int gStride = direct ? kvWidth : d;
            for (int t = 0; t < T; t++) {
                int qo = (b * T + t) * qWidth + h * d;
                Arrays.fill(gq, qo, qo + d, 0f);
                int len = visible(s, segments, b, t, window, idx);
                if (len == 0) continue;
                float rowLse = lse[p * T + t];
                float dt = VectorMath.dot(gradOut, qo, out, qo, d);
                for (int j = 0; j < len; j++) {
                    probs[j] = VectorMath.dot(q, qo, k, kvBase + idx[j] * kvWidth, d) * scale;
                }
                VectorMath.expShiftedInPlace(probs, 0, len, rowLse);
                for (int j = 0; j < len; j++) {
                    int ko = kvBase + idx[j] * kvWidth;
                    int go = gBase + idx[j] * gStride;
                    float pj = probs[j];
                    float dp = VectorMath.dot(gradOut, qo, v, ko, d);
                    float ds = pj * (dp - dt) * scale;
                    VectorMath.axpy(ds, k, ko, gq, qo, d);
                    VectorMath.axpy(ds, q, qo, gk, go, d);
                    VectorMath.axpy(pj, gradOut, qo, gv, go, d);
                }
            }
        }
    }

    /**
     * Rows [r0, r1) of grad_k and grad_v [B*T, kvHeads*D]: the sum over each kv head's query
     * heads, in head order, of the per-pair scratch [B, heads, T, D].
     */
    static void sumGroups(Shape s, float[] gkPairs, float[] gvPairs, float[] gk, float[] gv, int r0, int r1) {
        int d = s.headDim(), T = s.tokens(), group = s.group();
        int kvWidth = s.kvWidth();
        for (int row = r0; row < r1; row++) {
            int b = row / T, t = row % T;
            for (int kh = 0; kh < s.kvHeads(); kh++) {
                int dst = row * kvWidth + kh * d;
                Arrays.fill(gk, dst, dst + d, 0f);
                Arrays.fill(gv, dst, dst + d, 0f);
                for (int g = 0; g < group; g++) {
                    int src = ((b * s.heads() + kh * group + g) * T + t) * d;
                    ColumnSums.addSlice(gkPairs, src, gk, dst, d);
                    ColumnSums.addSlice(gvPairs, src, gv, dst, d);
                }
            }
        }
    }
}
