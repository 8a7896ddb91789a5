package dev.qlora4j.infer;

import java.util.Arrays;
import java.util.SplittableRandom;

/**
 * Picks the next token of one sequence from its logits on the host, in transformers' order:
 * repetition penalty, EOS suppression before min_new_tokens, then (when sampling) temperature,
 * top-k, top-p and a draw; greedy takes the argmax (the first index on ties, as torch.argmax).
 */
public final class Sampler {
    private final SamplingParams params;
    private final int[] eosIds;
    private final SplittableRandom random;

    public Sampler(SamplingParams params, int[] eosIds, long seed) {
        this.params = params;
        this.eosIds = eosIds.clone();
        this.random = new SplittableRandom(seed);
    }

    /**
     * @param logits    [vocab], modified in place
     * @param context   token ids seen so far (prompt without padding, then generated)
     * @param generated how many new tokens this row has produced
     */
    public int next(float[] logits, int[] context, int contextLen, int generated) {
        if (params.repetitionPenalty() != 1.0) applyRepetitionPenalty(logits, context, contextLen);
        if (generated < params.minNewTokens()) {
            for (int e : eosIds) if (e >= 0 && e < logits.length) logits[e] = Float.NEGATIVE_INFINITY;
        }
        if (!params.doSample()) return argmax(logits);
        if (params.temperature() != 1.0) {
            float t = (float) params.temperature();
            for (int i = 0; i < logits.length; i++) logits[i] /= t;
        }
        if (params.topK() > 0 && params.topK() < logits.length) applyTopK(logits, params.topK());
        if (params.topP() < 1.0) applyTopP(logits, params.topP());
        return draw(logits);
    }

    /** CTRL penalty: each distinct seen token's logit is divided by p if positive, multiplied if negative. */
    private void applyRepetitionPenalty(float[] logits, int[] context, int len) {
        float p = (float) params.repetitionPenalty();
        boolean[] seen = new boolean[logits.length];
        for (int i = 0; i < len; i++) {
            int t = context[i];
            if (t < 0 || t >= logits.length || seen[t]) continue;
            seen[t] = true;
            logits[t] = logits[t] < 0 ? logits[t] * p : logits[t] / p;
        }
    }

    public static int argmax(float[] logits) {
        int best = 0;
        for (int i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }

    /** Keeps logits >= the k-th largest (ties at the threshold survive, as in transformers). */
    static void applyTopK(float[] logits, int k) {
        float[] sorted = logits.clone();
        Arrays.sort(sorted);
        float threshold = sorted[sorted.length - k];
        for (int i = 0; i < logits.length; i++) if (logits[i] < threshold) logits[i] = Float.NEGATIVE_INFINITY;
    }

    /**
     * Nucleus filter as transformers' TopPLogitsWarper: sort ascending, remove tokens whose
     * cumulative probability is <= 1 - p, always keeping the most likely token.
     */
    static void applyTopP(float[] logits, double p) {
        int n = logits.length;
        Integer[] order = new Integer[n];
        for (int i = 0; i < n; i++) order[i] = i;
        Arrays.sort(order, (a, b) -> Float.compare(logits[a], logits[b]));
        double[] probs = softmax(logits);
        double cum = 0;
        for (int r = 0; r < n - 1; r++) {
            int i = order[r];
            cum += probs[i];
            if (cum <= 1 - p) logits[i] = Float.NEGATIVE_INFINITY;
            else break;
        }
    }

    static double[] softmax(float[] logits) {
        float max = Float.NEGATIVE_INFINITY;
        for (float v : logits) max = Math.max(max, v);
        double[] p = new double[logits.length];
        double sum = 0;
        for (int i = 0; i < logits.length; i++) {
            p[i] = logits[i] == Float.NEGATIVE_INFINITY ? 0 : Math.exp(logits[i] - max);
            sum += p[i];
        }
        for (int i = 0; i < p.length; i++) p[i] /= sum;
        return p;
    }

    private int draw(float[] logits) {
        double[] p = softmax(logits);
        double u = random.nextDouble();
        double cum = 0;
        int last = 0;
        for (int i = 0; i < p.length; i++) {
            if (p[i] == 0) continue;
            cum += p[i];
            last = i;
            if (u < cum) return i;
        }
        return last;
    }
}
