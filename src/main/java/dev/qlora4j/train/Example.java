package dev.qlora4j.train;

/**
 * One tokenized training example before shifting: {@code labels[t]} is the token the model should
 * produce at position t ({@code ids[t]}), or -100 where nothing is trained (prompt, user turns).
 * The model learns labels[t+1] from position t (see {@link Collator}), so labels[0] is never a
 * target.
 *
 * @param ids    [n] token ids
 * @param labels [n] ids or -100
 * @param line   1-based line of the source file (0 when made in code), for messages
 */
public record Example(int[] ids, int[] labels, int line) {
    public static final int IGNORE = -100;

    public Example {
        if (ids.length != labels.length) {
            throw new IllegalArgumentException("example" + (line > 0 ? " at line " + line : "") + ": " + ids.length
                    + " ids but " + labels.length + " labels");
        }
        if (ids.length == 0) throw new IllegalArgumentException("example" + (line > 0 ? " at line " + line : "") + " has no tokens");
    }

    /** An example whose every token is trained (the "text" format). */
    public static Example allTrained(int[] ids, int line) {
        return new Example(ids, ids.clone(), line);
    }

    public int length() { return ids.length; }

    /** Tokens the loss counts: positions t >= 1 with labels[t] != -100 (each is predicted from t-1). */
    public int trainedTokens() {
        int n = 0;
        for (int t = 1; t < labels.length; t++) if (labels[t] != IGNORE) n++;
        return n;
    }

    /** The first {@code max} tokens (right truncation, as TRL's truncation_mode="keep_start"). */
    public Example truncate(int max) {
        if (ids.length <= max) return this;
        return new Example(java.util.Arrays.copyOf(ids, max), java.util.Arrays.copyOf(labels, max), line);
    }
}
