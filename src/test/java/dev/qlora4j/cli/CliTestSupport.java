package dev.qlora4j.cli;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.KvCache;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.tensor.Tensor;

/** Helpers shared by tests: full-sequence logits of a bare model. */
public final class CliTestSupport {
    private CliTestSupport() {}

    /** Logits [T * vocab] of one unpadded sequence. */
    public static float[] logits(TransformerLM model, int[] ids) {
        Backend b = model.backend();
        int n = ids.length;
        int[] pos = new int[n];
        for (int i = 0; i < n; i++) pos[i] = i;
        try (KvCache cache = model.newCache(1, n);
             Tensor hidden = model.forward(b.upload(Tensor.ofInts(ids, n)), b.upload(Tensor.ofInts(pos, n)), cache, 0,
                     b.upload(Tensor.ofInts(new int[] {0}, 1)));
             Tensor logits = model.logits(hidden)) {
            return b.toHost(logits).toFloatArray();
        }
    }
}
