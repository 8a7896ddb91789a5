package dev.qlora4j.io.tokenizer;

import java.util.List;

/**
 * A rendered conversation and the character ranges [start, end) of its assistant turns in
 * {@link #text} (UTF-16 indices), for training on assistant tokens only.
 */
public record RenderedChat(String text, List<Span> assistantSpans) {
    public RenderedChat {
        assistantSpans = List.copyOf(assistantSpans);
    }

    /** Characters [start, end) of text. */
    public record Span(int start, int end) {
        public Span {
            if (start < 0 || end < start) throw new IllegalArgumentException("bad span [" + start + ", " + end + ")");
        }

        /** True when this span and [from, to) share at least one character. */
        public boolean overlaps(int from, int to) {
            return from < end && to > start;
        }
    }

    /** The text of every assistant span, in order. */
    public List<String> assistantTexts() {
        return assistantSpans.stream().map(s -> text.substring(s.start(), s.end())).toList();
    }
}
