package dev.qlora4j.infer.metrics;

import java.math.BigDecimal;
import java.math.RoundingMode;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * A BLEU score with the details sacreBLEU's BLEUScore carries.
 *
 * @param score      BLEU on sacreBLEU's 0..100 scale
 * @param counts     [order] clipped n-gram matches
 * @param totals     [order] hypothesis n-grams
 * @param precisions [order] n-gram precisions in percent, after smoothing (0 for orders not reached)
 * @param bp         brevity penalty
 * @param sysLen     hypothesis tokens
 * @param refLen     effective reference tokens
 */
public record BleuScore(double score, long[] counts, long[] totals, double[] precisions, double bp,
                        long sysLen, long refLen) {
    public BleuScore {
        counts = counts.clone();
        totals = totals.clone();
        precisions = precisions.clone();
    }

    /** sys_len / ref_len, 0 when there is no reference token. */
    public double ratio() {
        return refLen == 0 ? 0 : (double) sysLen / refLen;
    }

    @Override
    public long[] counts() { return counts.clone(); }

    @Override
    public long[] totals() { return totals.clone(); }

    @Override
    public double[] precisions() { return precisions.clone(); }

    /** sacreBLEU's line: "BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ratio = 0.944 hyp_len = 17 ref_len = 18)". */
    public String format() {
        StringBuilder p = new StringBuilder();
        for (int i = 0; i < precisions.length; i++) p.append(i == 0 ? "" : "/").append(fixed(precisions[i], 1));
        return "BLEU = " + fixed(score, 2) + " " + p + " (BP = " + fixed(bp, 3) + " ratio = " + fixed(ratio(), 3)
                + " hyp_len = " + sysLen + " ref_len = " + refLen + ")";
    }

    /** The JSON fields: bleu, counts, totals, precisions, bp, sys_len, ref_len, ratio. */
    public Map<String, Object> toJson() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("bleu", score);
        m.put("counts", counts.clone());
        m.put("totals", totals.clone());
        m.put("precisions", precisions.clone());
        m.put("bp", bp);
        m.put("sys_len", sysLen);
        m.put("ref_len", refLen);
        m.put("ratio", ratio());
        return m;
    }

    /** Python's f"{x:.Nf}": the exact binary value rounded half-even (Java's %f rounds half-up). */
    static String fixed(double x, int digits) {
        return new BigDecimal(x).setScale(digits, RoundingMode.HALF_EVEN).toPlainString();
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof BleuScore s && Double.compare(score, s.score) == 0 && Arrays.equals(counts, s.counts)
                && Arrays.equals(totals, s.totals) && Arrays.equals(precisions, s.precisions)
                && Double.compare(bp, s.bp) == 0 && sysLen == s.sysLen && refLen == s.refLen;
    }

    @Override
    public int hashCode() {
        return Double.hashCode(score) * 31 + Arrays.hashCode(counts) * 17 + Arrays.hashCode(totals);
    }

    @Override
    public String toString() {
        return format();
    }
}
