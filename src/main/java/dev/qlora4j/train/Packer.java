package dev.qlora4j.train;

import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.TreeMap;

/**
 * Packs short examples into rows of at most maxSeqLength tokens with best-fit decreasing (TRL's
 * default packing_strategy="bfd"): longest example first, each into the row whose free space is
 * the smallest that still fits it, else a new row. Examples are never split (they are truncated
 * to maxSeqLength beforehand). The result depends only on the example lengths and order, so a
 * resumed run packs exactly as the original did.
 */
public final class Packer {
    private Packer() {}

    /** One row per example, in order (no packing). */
    public static List<TrainRow> unpacked(List<Example> examples) {
        List<TrainRow> rows = new ArrayList<>(examples.size());
        for (Example e : examples) rows.add(TrainRow.of(e));
        return rows;
    }

    public static List<TrainRow> pack(List<Example> examples, int maxSeqLength) {
        Integer[] order = new Integer[examples.size()];
        for (int i = 0; i < order.length; i++) {
            order[i] = i;
            if (examples.get(i).length() > maxSeqLength) {
                throw new IllegalArgumentException("example at line " + examples.get(i).line() + " has " + examples.get(i).length()
                        + " tokens, more than max_seq_length " + maxSeqLength + "; truncate before packing");
            }
        }
        // stable: equal lengths keep file order
        java.util.Arrays.sort(order, Comparator.comparingInt((Integer i) -> -examples.get(i).length()));
        List<List<Example>> rows = new ArrayList<>();
        List<Integer> free = new ArrayList<>();
        TreeMap<Integer, ArrayDeque<Integer>> byFree = new TreeMap<>(); // free space -> rows with it, oldest first
        for (int i : order) {
            Example e = examples.get(i);
            var fit = byFree.ceilingEntry(e.length());
            int row;
            if (fit == null) {
                row = rows.size();
                rows.add(new ArrayList<>());
                free.add(maxSeqLength);
            } else {
                row = fit.getValue().pollFirst();
                if (fit.getValue().isEmpty()) byFree.remove(fit.getKey());
            }
            rows.get(row).add(e);
            int left = free.get(row) - e.length();
            free.set(row, left);
            if (left > 0) byFree.computeIfAbsent(left, k -> new ArrayDeque<>()).addLast(row);
        }
        List<TrainRow> out = new ArrayList<>(rows.size());
        for (List<Example> r : rows) out.add(new TrainRow(r));
        return out;
    }
}
