package dev.qlora4j.infer.metrics;

import java.util.Arrays;

/**
 * BLEU's sufficient statistics of one segment or, summed, of a corpus (sacreBLEU's
 * {@code [sys_len, ref_len] + correct + total} list).
 *
 * @param sysLen  hypothesis tokens
 * @param refLen  reference tokens (per segment: the length of the reference closest to the hypothesis)
 * @param correct [order] clipped n-gram matches, n = 1..order
 * @param total   [order] hypothesis n-grams, n = 1..order
 */
public record BleuStatistics(long sysLen, long refLen, long[] correct, long[] total) {
    public BleuStatistics {
        if (correct.length != total.length) {
            throw new IllegalArgumentException("correct and total need one entry per n-gram order, got "
                    + correct.length + " and " + total.length);
        }
        correct = correct.clone();
        total = total.clone();
    }

    /** All zeros, for summing. */
    public static BleuStatistics zero(int maxOrder) {
        return new BleuStatistics(0, 0, new long[maxOrder], new long[maxOrder]);
    }

    public BleuStatistics plus(BleuStatistics o) {
        if (o.correct.length != correct.length) throw new IllegalArgumentException("n-gram orders differ");
        long[] c = correct.clone(), t = total.clone();
        for (int i = 0; i < c.length; i++) {
            c[i] += o.correct[i];
            t[i] += o.total[i];
        }
        return new BleuStatistics(sysLen + o.sysLen, refLen + o.refLen, c, t);
    }

    @Override
    public long[] correct() { return correct.clone(); }

    @Override
    public long[] total() { return total.clone(); }

    @Override
    public boolean equals(Object o) {
        return o instanceof BleuStatistics s && sysLen == s.sysLen && refLen == s.refLen
                && Arrays.equals(correct, s.correct) && Arrays.equals(total, s.total);
    }

    @Override
    public int hashCode() {
        return 31 * (31 * Long.hashCode(sysLen) + Long.hashCode(refLen)) + 7 * Arrays.hashCode(correct) + Arrays.hashCode(total);
    }

    @Override
    public String toString() {
        return "BleuStatistics[sysLen=" + sysLen + ", refLen=" + refLen + ", correct=" + Arrays.toString(correct)
                + ", total=" + Arrays.toString(total) + "]";
    }
}
