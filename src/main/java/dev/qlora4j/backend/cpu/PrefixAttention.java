package dev.qlora4j.backend.cpu;

/**
 * Prefix tuning's attention over P learned keys/values in front of every sequence, in float32:
 * the CPU twin of native/prefix_attention.cu (see Backend.prefixAttention for the contract).
 *
 * <p>Layouts: q, out, dO, dQ [N = B*T, H*D]; kp, vp, dKp, dVp [P, KV*D]; lse [B, H, T]. A pair is
 * (token n, query head h), index n*H + h; query head h reads kv head h / (H/KV).
 *
 * <p>Forward per pair: s_j = (q . kp_j) * scale, lse_p = max + log(sum exp(s - max)),
 * out_p = sum_j exp(s_j - lse_p) vp_j; merged with the sequence part: lse = logaddexp(lse_s, lse_p),
 * out = out_s exp(lse_s - lse) + out_p exp(lse_p - lse).
 *
 * <p>Backward per pair: delta = dO . out, p_j = exp(s_j - lse), ds_j = p_j (dO . vp_j - delta) scale,
 * dQ += sum_j ds_j kp_j; p and ds go to scratch [N, H, P]. Then per (j, kv head), in token order and
 * head order within the group (independent of the thread count): dKp_j += sum ds q, dVp_j += sum p dO.
 */
final class PrefixAttention {
    private PrefixAttention() {}

    record Shape(int batch, int tokens, int heads, int kvHeads, int headDim, int prefix) {
        int group() { return heads / kvHeads; }
        int rows() { return batch * tokens; }
        int qWidth() { return heads * headDim; }
        int kvWidth() { return kvHeads * headDim; }
        int lseIndex(int n, int h) { return ((n / tokens) * heads + h) * tokens + n % tokens; }
    }

    /** Forward and merge of pairs [p0, p1). */
    static void forward(Shape s, float[] q, float[] kp, float[] vp, float[] outS, float[] lseS, float scale,
                        float[] out, float[] lse, int p0, int p1) {
        int d = s.headDim(), pLen = s.prefix();
        float[] scores = new float[pLen];
        float[] outP = new float[d];
        for (int pair = p0; pair < p1; pair++) {
            int n = pair / s.heads(), h = pair % s.heads();
            int qo = n * s.qWidth() + h * d;
            int kvo = (h / s.group()) * d;
            for (int j = 0; j < pLen; j++) scores[j] = VectorMath.dot(q, qo, kp, j * s.kvWidth() + kvo, d) * scale;
            float max = VectorMath.max(scores, 0, pLen);
            float sum = VectorMath.expShiftedInPlace(scores, 0, pLen, max);
            java.util.Arrays.fill(outP, 0f);
            for (int j = 0; j < pLen; j++) VectorMath.axpy(scores[j] / sum, vp, j * s.kvWidth() + kvo, outP, 0, d);
            float lseP = max + (float) Math.log(sum);
            int li = s.lseIndex(n, h);
            float lseSeq = lseS[li];
            // logaddexp; a query without sequence keys has lseSeq = -inf and gets the prefix part alone
            float m = Math.max(lseSeq, lseP);
            float total = m + (float) Math.log(Math.exp(lseSeq - m) + Math.exp(lseP - m));
            float ws = (float) Math.exp(lseSeq - total), wp = (float) Math.exp(lseP - total);
            for (int i = 0; i < d; i++) out[qo + i] = outS[qo + i] * ws + outP[i] * wp;
            lse[li] = total;
        }
    }

    /**
     * Backward, first part, for pairs [p0, p1): adds the prefix's dQ into gq and writes p and ds
     * of every prefix key to probs/dScores [N, H, P].
     */
    static void backwardQuery(Shape s, float[] q, float[] kp, float[] vp, float[] out, float[] lse, float[] gradOut,
                              float scale, float[] gq, float[] probs, float[] dScores, int p0, int p1) {
        int d = s.headDim(), pLen = s.prefix();
        for (int pair = p0; pair < p1; pair++) {
            int n = pair / s.heads(), h = pair % s.heads();
            int qo = n * s.qWidth() + h * d;
            int kvo = (h / s.group()) * d;
            float rowLse = lse[s.lseIndex(n, h)];
            float delta = VectorMath.dot(gradOut, qo, out, qo, d);
            for (int j = 0; j < pLen; j++) {
                int ko = j * s.kvWidth() + kvo;
                float p = (float) Math.exp(VectorMath.dot(q, qo, kp, ko, d) * scale - rowLse);
                float ds = p * (VectorMath.dot(gradOut, qo, vp, ko, d) - delta) * scale;
                VectorMath.axpy(ds, kp, ko, gq, qo, d);
                probs[pair * pLen + j] = p;
                dScores[pair * pLen + j] = ds;
            }
        }
    }

    /** Backward, second part, for (prefix slot j, kv head) units [u0, u1), unit = j * KV + kvHead. */
    static void backwardPrefix(Shape s, float[] q, float[] gradOut, float[] probs, float[] dScores,
                               float[] gk, float[] gv, int u0, int u1) {
        int d = s.headDim(), pLen = s.prefix(), group = s.group();
        for (int u = u0; u < u1; u++) {
            int j = u / s.kvHeads(), kh = u % s.kvHeads();
            int go = j * s.kvWidth() + kh * d;
            for (int n = 0; n < s.rows(); n++) {
                for (int g = 0; g < group; g++) {
                    int h = kh * group + g;
                    int pair = n * s.heads() + h;
                    int qo = n * s.qWidth() + h * d;
                    VectorMath.axpy(dScores[pair * pLen + j], q, qo, gk, go, d);
                    VectorMath.axpy(probs[pair * pLen + j], gradOut, qo, gv, go, d);
                }
            }
        }
    }
}
