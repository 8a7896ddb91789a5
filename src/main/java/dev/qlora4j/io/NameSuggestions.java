package dev.qlora4j.io;

import java.util.ArrayList;
import java.util.Collection;
import java.util.Comparator;
import java.util.List;

/** "Did you mean" for tensor names: the few known names nearest by edit distance. */
final class NameSuggestions {
    private static final int MAX = 5;

    private NameSuggestions() {}

    /** A message fragment: "close names: a, b, c (N tensors in all)" or "the file has no tensors". */
    static String describe(String wanted, Collection<String> known) {
        if (known.isEmpty()) return "it holds no tensors";
        record Scored(String name, int distance) {}
        List<Scored> scored = new ArrayList<>(known.size());
        for (String k : known) scored.add(new Scored(k, distance(wanted, k)));
        scored.sort(Comparator.comparingInt(Scored::distance).thenComparing(Scored::name));
        List<String> best = new ArrayList<>();
        for (int i = 0; i < Math.min(MAX, scored.size()); i++) best.add(scored.get(i).name());
        return "close names: " + String.join(", ", best) + " (" + known.size() + " tensors in all)";
    }

    /** Levenshtein distance with two rolling rows (names are short; this runs only on errors). */
    static int distance(String a, String b) {
        int[] prev = new int[b.length() + 1], cur = new int[b.length() + 1];
        for (int j = 0; j <= b.length(); j++) prev[j] = j;
        for (int i = 1; i <= a.length(); i++) {
            cur[0] = i;
            for (int j = 1; j <= b.length(); j++) {
                int sub = prev[j - 1] + (a.charAt(i - 1) == b.charAt(j - 1) ? 0 : 1);
                cur[j] = Math.min(sub, Math.min(prev[j] + 1, cur[j - 1] + 1));
            }
            int[] t = prev; prev = cur; cur = t;
        }
        return prev[b.length()];
    }
}
