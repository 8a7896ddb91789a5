package dev.qlora4j.infer.metrics;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * BLEU (Papineni et al., 2002) computed as sacreBLEU 2.x does, so scores can be compared with
 * published ones. {@link #corpus()} is sacreBLEU's {@code BLEU()} / {@code corpus_bleu}: BLEU-4 on
 * 13a tokens, case-sensitive, "exp" smoothing (mteval-v13a's: the k-th order without a match counts
 * as 1/2^k of a match), statistics summed over the corpus before the score, brevity penalty from
 * the summed lengths. {@link #sentence()} is {@code sentence_bleu}: the same with effective order
 * (orders the hypothesis is too short to have are left out of the mean).
 *
 * <p>References: each segment has one or more; empty ones are dropped (sacreBLEU's variable number
 * of references), and a segment left with none is an error, as in sacreBLEU. With several, an
 * n-gram's count is clipped to its largest count in any one reference, and the reference length is
 * the one closest to the hypothesis length (the shorter on a tie).
 */
public final class Bleu {
    /** BLEU-4. */
    public static final int MAX_NGRAM_ORDER = 4;

    /** What the reference's log(0) becomes in sacreBLEU (its my_log floor). */
    private static final double LOG_ZERO = -9999999999.0;

    /** sacreBLEU's smooth_method values; the default value is used when none is given. */
    public enum Smoothing {
        NONE(Double.NaN), FLOOR(0.1), ADD_K(1), EXP(Double.NaN);

        final double defaultValue;

        Smoothing(double defaultValue) { this.defaultValue = defaultValue; }

        String signatureName() {
            return switch (this) {
                case NONE -> "none";
                case EXP -> "exp";
                case FLOOR -> "floor";
                case ADD_K -> "add-k";
            };
        }
    }

    /** Segment tokenization: 13a (the default) or none (whitespace only, for pre-tokenized text). */
    public enum Tokenization {
        THIRTEEN_A("13a"), NONE("none");

        final String signatureName;

        Tokenization(String signatureName) { this.signatureName = signatureName; }

        String apply(String segment) {
            return this == THIRTEEN_A ? Tokenizer13a.tokenize(segment) : segment;
        }
    }

    private final Tokenization tokenization;
    private final Smoothing smoothing;
    private final double smoothValue;
    private final boolean effectiveOrder;

    /**
     * @param smoothValue the value of FLOOR / ADD_K smoothing; null for sacreBLEU's default (0.1 / 1)
     */
    public Bleu(Tokenization tokenization, Smoothing smoothing, Double smoothValue, boolean effectiveOrder) {
        this.tokenization = tokenization;
        this.smoothing = smoothing;
        this.smoothValue = smoothValue != null ? smoothValue : smoothing.defaultValue;
        this.effectiveOrder = effectiveOrder;
    }

    /** sacreBLEU's corpus BLEU defaults: 13a, exp smoothing, no effective order. */
    public static Bleu corpus() {
        return new Bleu(Tokenization.THIRTEEN_A, Smoothing.EXP, null, false);
    }

    /** sacreBLEU's sentence_bleu defaults: 13a, exp smoothing, effective order. */
    public static Bleu sentence() {
        return new Bleu(Tokenization.THIRTEEN_A, Smoothing.EXP, null, true);
    }

    /** Corpus BLEU with one or more references per segment: references.get(i) belong to hypotheses.get(i). */
    public BleuScore corpusScore(List<String> hypotheses, List<List<String>> references) {
        if (hypotheses.size() != references.size()) {
            throw new IllegalArgumentException(hypotheses.size() + " hypotheses but references for "
                    + references.size() + " segments: give every hypothesis its references");
        }
        BleuStatistics sum = BleuStatistics.zero(MAX_NGRAM_ORDER);
        for (int i = 0; i < hypotheses.size(); i++) {
            sum = sum.plus(segmentStatistics(hypotheses.get(i), references.get(i), i));
        }
        return score(sum);
    }

    /** BLEU of one segment against its references. */
    public BleuScore sentenceScore(String hypothesis, List<String> references) {
        return score(segmentStatistics(hypothesis, references));
    }

    /**
     * sacreBLEU's reference layout (a list of reference streams, stream k holding the k-th reference
     * of every segment; null or "" where a segment has fewer) turned into references per segment.
     */
    public static List<List<String>> fromStreams(List<List<String>> streams) {
        if (streams.isEmpty()) return List.of();
        int n = streams.get(0).size();
        List<List<String>> out = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            List<String> refs = new ArrayList<>();
            for (List<String> stream : streams) {
                if (stream.size() != n) throw new IllegalArgumentException("reference streams differ in length");
                refs.add(stream.get(i));
            }
            out.add(refs);
        }
        return out;
    }

    /** The statistics of one segment (sum them over a corpus and {@link #score} the sum). */
    public BleuStatistics segmentStatistics(String hypothesis, List<String> references) {
        return segmentStatistics(hypothesis, references, 0);
    }

    private BleuStatistics segmentStatistics(String hypothesis, List<String> references, int segment) {
        List<Map<String, Integer>> refMax = new ArrayList<>();
        for (int n = 0; n < MAX_NGRAM_ORDER; n++) refMax.add(new HashMap<>());
        List<Integer> refLens = new ArrayList<>();
        for (String ref : references) {
            if (ref == null || ref.isEmpty()) continue;
            List<String> tokens = tokens(ref);
            refLens.add(tokens.size());
            List<Map<String, Integer>> counts = ngrams(tokens);
            for (int n = 0; n < MAX_NGRAM_ORDER; n++) {
                Map<String, Integer> max = refMax.get(n);
                counts.get(n).forEach((g, c) -> max.merge(g, c, Math::max));
            }
        }
        if (refLens.isEmpty()) {
            throw new IllegalArgumentException("segment " + segment + " has no non-empty reference: BLEU needs one");
        }
        List<String> hyp = tokens(hypothesis);
        List<Map<String, Integer>> hypCounts = ngrams(hyp);
        long[] correct = new long[MAX_NGRAM_ORDER], total = new long[MAX_NGRAM_ORDER];
        for (int n = 0; n < MAX_NGRAM_ORDER; n++) {
            Map<String, Integer> ref = refMax.get(n);
            for (Map.Entry<String, Integer> e : hypCounts.get(n).entrySet()) {
                total[n] += e.getValue();
                correct[n] += Math.min(e.getValue(), ref.getOrDefault(e.getKey(), 0));
            }
        }
        return new BleuStatistics(hyp.size(), closestRefLength(hyp.size(), refLens), correct, total);
    }

    /** The score of (summed) statistics: sacreBLEU's compute_bleu with this metric's settings. */
    public BleuScore score(BleuStatistics s) {
        return computeBleu(s.correct(), s.total(), s.sysLen(), s.refLen(), smoothing, smoothValue, effectiveOrder);
    }

    /**
     * BLEU from its statistics. Precisions are 100 * correct / total; an order with no match gets,
     * with EXP, 100 / (2^k * total) for the k-th such order, with FLOOR 100 * value / total, else 0;
     * ADD_K adds value to correct and total of orders 2 and up. Orders past the first with no
     * n-gram at all end the loop; with effective order the geometric mean covers only the orders
     * reached, otherwise the missing ones count as log 0 (score 0). No match at any order gives 0.
     * The returned counts and totals are the given ones (sacreBLEU returns them with ADD_K's value added).
     */
    public static BleuScore computeBleu(long[] correct, long[] total, long sysLen, long refLen, Smoothing smoothing,
                                        double smoothValue, boolean effectiveOrder) {
        int order = correct.length;
        double bp = sysLen < refLen ? (sysLen > 0 ? Math.exp(1 - (double) refLen / sysLen) : 0.0) : 1.0;
        double[] precisions = new double[order];
        boolean anyMatch = false;
        for (long c : correct) anyMatch |= c != 0;
        if (!anyMatch) return new BleuScore(0.0, correct, total, precisions, bp, sysLen, refLen);

        double smoothMteval = 1.0;
        int effOrder = order;
        for (int n = 1; n <= order; n++) {
            double c = correct[n - 1], t = total[n - 1];
            if (smoothing == Smoothing.ADD_K && n > 1) {
                c += smoothValue;
                t += smoothValue;
            }
            if (t == 0) break;
            if (effectiveOrder) effOrder = n;
            if (c == 0) {
                if (smoothing == Smoothing.EXP) {
                    smoothMteval *= 2;
                    precisions[n - 1] = 100.0 / (smoothMteval * t);
                } else if (smoothing == Smoothing.FLOOR) {
                    precisions[n - 1] = 100.0 * smoothValue / t;
                }
            } else {
                precisions[n - 1] = 100.0 * c / t;
            }
        }
        double logSum = 0;
        for (int n = 0; n < effOrder; n++) logSum += precisions[n] == 0.0 ? LOG_ZERO : Math.log(precisions[n]);
        double score = bp * Math.exp(logSum / effOrder);
        return new BleuScore(score, correct, total, precisions, bp, sysLen, refLen);
    }

    /** sacreBLEU's signature without its version: "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp". */
    public String signature(String nrefs) {
        String smooth = smoothing.signatureName();
        if (smoothing == Smoothing.FLOOR || smoothing == Smoothing.ADD_K) {
            smooth += "[" + BleuScore.fixed(smoothValue, 2) + "]";
        }
        return "nrefs:" + nrefs + "|case:mixed|eff:" + (effectiveOrder ? "yes" : "no") + "|tok:"
                + tokenization.signatureName + "|smooth:" + smooth;
    }

    private List<String> tokens(String segment) {
        return PythonWhitespace.split(tokenization.apply(PythonWhitespace.rstrip(segment)));
    }

    /** [order] n-gram -> count; an n-gram is its tokens joined by a space (tokens hold no whitespace). */
    private static List<Map<String, Integer>> ngrams(List<String> tokens) {
        List<Map<String, Integer>> out = new ArrayList<>();
        for (int n = 1; n <= MAX_NGRAM_ORDER; n++) {
            Map<String, Integer> m = new HashMap<>();
            for (int i = 0; i + n <= tokens.size(); i++) m.merge(String.join(" ", tokens.subList(i, i + n)), 1, Integer::sum);
            out.add(m);
        }
        return out;
    }

    /** The reference length closest to the hypothesis length; the shorter one on a tie. */
    private static int closestRefLength(int hypLen, List<Integer> refLens) {
        int best = -1, bestDiff = -1;
        for (int len : refLens) {
            int diff = Math.abs(hypLen - len);
            if (bestDiff == -1 || diff < bestDiff || (diff == bestDiff && len < best)) {
                bestDiff = diff;
                best = len;
            }
        }
        return best;
    }
}
