package dev.qlora4j.io.tokenizer;

import java.util.List;

/**
 * Token ids with the characters each token came from: token i covers text[charStart[i],
 * charEnd[i]) in UTF-16 indices; tokens added by the tokenizer rather than read from the text
 * (BOS, EOS) have -1 for both.
 *
 * @param ids       [n]
 * @param charStart [n]
 * @param charEnd   [n]
 */
public record EncodedText(int[] ids, int[] charStart, int[] charEnd) {
    public EncodedText {
        if (ids.length != charStart.length || ids.length != charEnd.length) {
            throw new IllegalArgumentException("ids, charStart and charEnd differ in length");
        }
    }

    /**
     * Which tokens overlap one of the spans (e.g. {@link RenderedChat#assistantSpans()}): the
     * training label mask for "train on assistant turns only". A token straddling a span edge
     * counts as inside, so a turn's first and last tokens are never lost.
     */
    public boolean[] tokensIn(List<RenderedChat.Span> spans) {
        boolean[] in = new boolean[ids.length];
        for (int i = 0; i < ids.length; i++) {
            if (charStart[i] < 0) continue;
            for (RenderedChat.Span s : spans) {
                if (s.overlaps(charStart[i], charEnd[i])) {
                    in[i] = true;
                    break;
                }
            }
        }
        return in;
    }
}
