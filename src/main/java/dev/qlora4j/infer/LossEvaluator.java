package dev.qlora4j.infer;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.KvCache;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.tensor.Tensor;

/**
 * Causal-LM loss as transformers computes it with labels = input_ids: logits at position t
 * predict token t+1, cross-entropy in float32, averaged over predicted tokens. Logits are made
 * in row chunks so the [tokens x vocab] matrix is never whole in memory.
 */
public final class LossEvaluator {
    /** Rows of logits materialized at once. */
    private static final int CHUNK = 256;

    private final TransformerLM model;

    public LossEvaluator(TransformerLM model) {
        this.model = model;
    }

    /** Sum of per-token losses and the number of predicted tokens of one sequence. */
    public record LossSum(double sum, long tokens) {
        public LossSum plus(LossSum o) { return new LossSum(sum + o.sum, tokens + o.tokens); }

        public double mean() { return tokens == 0 ? Double.NaN : sum / tokens; }
    }

    /** Loss of one sequence of ids (length >= 2 to predict anything). */
    public LossSum loss(int[] ids) {
        int n = ids.length;
        if (n < 2) return new LossSum(0, 0);
        Backend b = model.backend();
        int[] positions = new int[n];
        for (int i = 0; i < n; i++) positions[i] = i;
        double sum = 0;
        try (KvCache cache = model.newCache(1, n);
             Tensor idT = b.upload(Tensor.ofInts(ids, n));
             Tensor posT = b.upload(Tensor.ofInts(positions, n));
             Tensor pads = b.upload(Tensor.ofInts(new int[] {0}, 1));
             Tensor hidden = model.forward(idT, posT, cache, 0, pads)) {
            for (int from = 0; from < n - 1; from += CHUNK) {
                int rows = Math.min(CHUNK, n - 1 - from);
                int[] rowIdx = new int[rows];
                int[] targets = new int[rows];
                for (int i = 0; i < rows; i++) {
                    rowIdx[i] = from + i;
                    targets[i] = ids[from + i + 1];
                }
                try (Tensor r = b.upload(Tensor.ofInts(rowIdx, rows));
                     Tensor h = b.gatherRows(hidden, r);
                     Tensor logits = model.logits(h);
                     Tensor tg = b.upload(Tensor.ofInts(targets, rows));
                     Tensor losses = b.crossEntropy(logits, tg)) {
                    for (float l : b.toHost(losses).toFloatArray()) sum += l;
                }
            }
        }
        return new LossSum(sum, n - 1);
    }
}
