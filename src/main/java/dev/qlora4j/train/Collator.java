package dev.qlora4j.train;

import java.util.List;

/**
 * Rows to a {@link Batch}: right padding to the longest row (transformers' DataCollatorWithPadding
 * with padding_side="right", as training uses), shifted targets, and per-example positions and
 * segments so that packed examples never attend to each other (what TRL's padding-free packing
 * achieves with position_ids restarting at 0 and flash-attention varlen).
 */
public final class Collator {
    private final int padId;

    /** @param padId the tokenizer's pad id (its EOS when it has none); padded targets are -100 whatever it is */
    public Collator(int padId) {
        this.padId = padId;
    }

    public Batch collate(List<TrainRow> rows) {
        if (rows.isEmpty()) throw new IllegalArgumentException("cannot collate an empty list of rows");
        int seqLen = 0;
        boolean needSegments = false;
        for (TrainRow r : rows) seqLen = Math.max(seqLen, r.length());
        for (TrainRow r : rows) needSegments |= r.parts().size() > 1 || r.length() < seqLen;
        int n = rows.size() * seqLen;
        int[] ids = new int[n], pos = new int[n], tgt = new int[n];
        int[] seg = needSegments ? new int[n] : null;
        long tokens = 0, input = 0;
        int examples = 0;
        for (int r = 0; r < rows.size(); r++) {
            int at = r * seqLen;
            List<Example> parts = rows.get(r).parts();
            for (int k = 0; k < parts.size(); k++) {
                Example e = parts.get(k);
                int len = e.length();
                for (int t = 0; t < len; t++, at++) {
                    ids[at] = e.ids()[t];
                    pos[at] = t;
                    if (seg != null) seg[at] = k;
                    int y = t + 1 < len ? e.labels()[t + 1] : Example.IGNORE;
                    tgt[at] = y;
                    if (y != Example.IGNORE) tokens++;
                }
                input += len;
                examples++;
            }
            // padding: its own segment (never attended by real tokens, never attending them), no targets
            for (int p = 0; at < (r + 1) * seqLen; at++, p++) {
                ids[at] = padId;
                pos[at] = p;
                if (seg != null) seg[at] = parts.size();
                tgt[at] = Example.IGNORE;
            }
        }
        return new Batch(ids, pos, seg, tgt, rows.size(), seqLen, tokens, examples, input);
    }
}
