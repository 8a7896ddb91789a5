package dev.qlora4j.train;

import java.util.List;

/**
 * One row of a batch: a single example, or several packed end to end (each keeps its own
 * positions and attention segment, see {@link Collator}).
 */
public record TrainRow(List<Example> parts) {
    public TrainRow {
        parts = List.copyOf(parts);
        if (parts.isEmpty()) throw new IllegalArgumentException("a row needs at least one example");
    }

    public static TrainRow of(Example e) { return new TrainRow(List.of(e)); }

    /** Tokens in the row, all parts together. */
    public int length() {
        int n = 0;
        for (Example e : parts) n += e.length();
        return n;
    }

    public int trainedTokens() {
        int n = 0;
        for (Example e : parts) n += e.trainedTokens();
        return n;
    }
}
