package dev.qlora4j.train;

import dev.qlora4j.peft.prefix.TrainablePromptTuning;

/**
 * Prompt tuning's rows: V virtual tokens (ids {@link TrainablePromptTuning#virtualId}) put before
 * every example of a {@link Batch}, as peft's forward concatenates the prompt embeddings in front of
 * the inputs: the virtual tokens take positions 0 .. V-1 and the example's tokens V, V+1, ...
 * Packed examples each get their own copy (same segment as the example), so every example sees the
 * prompt exactly as it would alone. The virtual tokens have no targets. (peft also trains the last
 * virtual token to predict the example's first label, for text data usually BOS; that term is left
 * out so the loss counts the same tokens as with any other adapter.)
 *
 * <p>A row's examples are its runs of equal segment ids (one run when segments is null); a padding
 * run gets virtual tokens too, which is harmless (its own segment, no targets). Rows are then
 * right-padded (id 0, a segment of their own, no targets) to the longest.
 */
public final class VirtualTokenBatches {
    private VirtualTokenBatches() {}

    public static Batch expand(Batch in, int numVirtualTokens) {
        int v = numVirtualTokens, s = in.seqLen(), rows = in.batch();
        int[][] starts = new int[rows][];
        int len = 0;
        for (int r = 0; r < rows; r++) {
            starts[r] = runStarts(in.segments(), r * s, s);
            len = Math.max(len, s + v * starts[r].length);
        }
        int n = rows * len;
        int[] ids = new int[n], pos = new int[n], seg = new int[n], tgt = new int[n];
        boolean needSegments = false;
        for (int r = 0; r < rows; r++) {
            int at = r * len, base = r * s;
            int[] st = starts[r];
            needSegments |= st.length > 1 || s + v * st.length < len;
            for (int k = 0; k < st.length; k++) {
                int from = st[k], to = k + 1 < st.length ? st[k + 1] : s;
                for (int i = 0; i < v; i++, at++) {
                    ids[at] = TrainablePromptTuning.virtualId(i);
                    pos[at] = i;
                    seg[at] = k;
                    tgt[at] = Example.IGNORE;
                }
                for (int t = from; t < to; t++, at++) {
                    ids[at] = in.ids()[base + t];
                    pos[at] = v + in.positions()[base + t];
                    seg[at] = k;
                    tgt[at] = in.targets()[base + t];
                }
            }
            for (int p = 0; at < (r + 1) * len; at++, p++) {
                ids[at] = 0;
                pos[at] = p;
                seg[at] = st.length;
                tgt[at] = Example.IGNORE;
            }
        }
        return new Batch(ids, pos, needSegments ? seg : null, tgt, rows, len, in.tokens(), in.examples(), in.inputTokens());
    }

    /** Offsets within a row of [base, base+len) where a new segment starts (0 first). */
    private static int[] runStarts(int[] segments, int base, int len) {
        if (segments == null) return new int[] {0};
        int count = 1;
        for (int t = 1; t < len; t++) if (segments[base + t] != segments[base + t - 1]) count++;
        int[] out = new int[count];
        for (int t = 1, k = 1; t < len; t++) if (segments[base + t] != segments[base + t - 1]) out[k++] = t;
        return out;
    }
}
