package dev.qlora4j.infer;

import org.junit.jupiter.api.Test;

import java.util.List;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Logits processing in transformers' order, checked against values worked out by hand. */
class SamplerTest {
    static SamplingParams sampling(double temperature, int topK, double topP, double penalty) {
        return new SamplingParams(10, 0, true, temperature, topK, topP, penalty, 0, List.of());
    }

    /** The boxed stable sort the radix order replaced: the reference it must equal. */
    private static int[] comparatorOrder(float[] logits) {
        Integer[] order = new Integer[logits.length];
        for (int i = 0; i < order.length; i++) order[i] = i;
        java.util.Arrays.sort(order, (a, b) -> Float.compare(logits[a], logits[b]));
        int[] out = new int[order.length];
        for (int i = 0; i < out.length; i++) out[i] = order[i];
        return out;
    }

    /** Random logits with what sorting gets wrong most easily: ties, -0.0 and 0.0, infinities, NaN, subnormals. */
    private static float[] awkwardLogits(java.util.Random rnd, int n) {
        float[] v = new float[n];
        float[] special = {0f, -0f, Float.NEGATIVE_INFINITY, Float.POSITIVE_INFINITY, Float.NaN, Float.MIN_VALUE,
                -Float.MIN_VALUE, Float.MAX_VALUE, -Float.MAX_VALUE, 1f, -1f};
        for (int i = 0; i < n; i++) {
            int pick = rnd.nextInt(10);
            v[i] = pick == 0 ? special[rnd.nextInt(special.length)]
                    : pick == 1 ? (float) Math.round(rnd.nextGaussian() * 2)   // many ties
                    : (float) (rnd.nextGaussian() * 4);
        }
        return v;
    }

    @Test
    void ascendingOrderIsTheStableComparatorSort() {
        java.util.Random rnd = new java.util.Random();
        for (int n : new int[] {1, 2, 7, 256, 1000, 32000}) {
            for (int rep = 0; rep < 5; rep++) {
                float[] v = awkwardLogits(rnd, n);
                assertArrayEquals(comparatorOrder(v), Sampler.ascendingOrder(v), "n " + n);
            }
        }
    }

    /** top-k and top-p leave the logits the former sort-based filters left, bit for bit (no NaN: softmax is then NaN). */
    @Test
    void topKAndTopPFilterAsTheSortBasedForms() {
        java.util.Random rnd = new java.util.Random();
        for (int n : new int[] {3, 100, 32000}) {
            for (int rep = 0; rep < 5; rep++) {
                float[] v = awkwardLogits(rnd, n);
                for (int i = 0; i < n; i++) if (Float.isNaN(v[i]) || v[i] == Float.POSITIVE_INFINITY) v[i] = 0f;
                int k = 1 + rnd.nextInt(Math.min(n, 60));
                float[] got = v.clone(), want = v.clone();
                Sampler.applyTopK(got, k);
                float[] sorted = want.clone();
                java.util.Arrays.sort(sorted);
                float threshold = sorted[sorted.length - k];
                for (int i = 0; i < n; i++) if (want[i] < threshold) want[i] = Float.NEGATIVE_INFINITY;
                assertArrayEquals(want, got, "top-k " + k + " of " + n);

                double p = 0.05 + 0.9 * rnd.nextDouble();
                got = v.clone();
                want = v.clone();
                Sampler.applyTopP(got, p);
                int[] order = comparatorOrder(want);
                double[] probs = Sampler.softmax(want);
                double cum = 0;
                for (int r = 0; r < n - 1; r++) {
                    cum += probs[order[r]];
                    if (cum <= 1 - p) want[order[r]] = Float.NEGATIVE_INFINITY;
                    else break;
                }
                assertArrayEquals(want, got, "top-p " + p + " of " + n);
            }
        }
    }

    @Test
    void greedyTakesTheFirstMaximum() {
        assertEquals(1, Sampler.argmax(new float[] {0f, 3f, 3f, -1f}));
        Sampler s = new Sampler(SamplingParams.greedy(4), new int[] {9}, 0);
        assertEquals(2, s.next(new float[] {0f, 1f, 5f}, new int[0], 0, 0));
    }

    @Test
    void repetitionPenaltyDividesPositiveAndMultipliesNegativeLogitsOncePerToken() {
        Sampler s = new Sampler(SamplingParams.greedy(4), new int[0], 0);
        float[] logits = {2f, -2f, 1.9f};
        SamplingParams p = new SamplingParams(4, 0, false, 1, 0, 1, 2.0, 0, List.of());
        int tok = new Sampler(p, new int[0], 0).next(logits, new int[] {0, 0, 1}, 3, 0);
        assertArrayEquals(new float[] {1f, -4f, 1.9f}, logits, "CTRL penalty, token 0 seen twice counts once");
        assertEquals(2, tok, "the penalized token loses the argmax");
        assertEquals(0, s.next(new float[] {2f, -2f, 1.9f}, new int[] {0}, 1, 0), "penalty 1.0 changes nothing");
    }

    @Test
    void minNewTokensSuppressesEos() {
        SamplingParams p = SamplingParams.greedy(8).withMinNewTokens(2);
        Sampler s = new Sampler(p, new int[] {1}, 0);
        assertEquals(0, s.next(new float[] {1f, 9f}, new int[0], 0, 0), "EOS impossible before 2 new tokens");
        assertEquals(1, s.next(new float[] {1f, 9f}, new int[0], 0, 2), "allowed from the 3rd");
    }

    @Test
    void topKKeepsTiesAtTheThreshold() {
        float[] l = {1f, 3f, 2f, 2f, 0f};
        Sampler.applyTopK(l, 2);
        assertEquals(Float.NEGATIVE_INFINITY, l[0]);
        assertEquals(3f, l[1]);
        assertEquals(2f, l[2], "tie at the k-th value survives, as in transformers");
        assertEquals(2f, l[3]);
        assertEquals(Float.NEGATIVE_INFINITY, l[4]);
    }

    @Test
    void topPRemovesTheTailWhoseCumulativeMassIsAtMostOneMinusP() {
        // probabilities 0.5, 0.3, 0.15, 0.05 (ascending order: 0.05, 0.15, 0.3, 0.5)
        float[] l = {(float) Math.log(0.5), (float) Math.log(0.3), (float) Math.log(0.15), (float) Math.log(0.05)};
        Sampler.applyTopP(l, 0.8);
        // cumulative from the smallest: 0.05 <= 0.2 removed, 0.20 <= 0.2 removed, 0.5 > 0.2 kept
        assertEquals(Float.NEGATIVE_INFINITY, l[3]);
        assertEquals(Float.NEGATIVE_INFINITY, l[2]);
        assertTrue(Float.isFinite(l[1]) && Float.isFinite(l[0]));
    }

    @Test
    void samplingFollowsTheTemperedDistributionAndTheSeed() {
        float[] base = {0f, (float) Math.log(3)}; // p = 0.25, 0.75 at temperature 1
        int ones = 0, n = 20000;
        Sampler s = new Sampler(sampling(1.0, 0, 1.0, 1.0), new int[0], 42);
        for (int i = 0; i < n; i++) ones += s.next(base.clone(), new int[0], 0, 0);
        assertEquals(0.75, ones / (double) n, 0.015, "frequency of the likelier token");
        // temperature 0.5 squares the odds: 9:1 -> p = 0.9
        ones = 0;
        Sampler cold = new Sampler(sampling(0.5, 0, 1.0, 1.0), new int[0], 42);
        for (int i = 0; i < n; i++) ones += cold.next(base.clone(), new int[0], 0, 0);
        assertEquals(0.9, ones / (double) n, 0.012);
        // the same seed gives the same draws
        Sampler a = new Sampler(sampling(1.0, 0, 1.0, 1.0), new int[0], 7), b = new Sampler(sampling(1.0, 0, 1.0, 1.0), new int[0], 7);
        for (int i = 0; i < 100; i++) assertEquals(a.next(base.clone(), new int[0], 0, 0), b.next(base.clone(), new int[0], 0, 0));
    }

    @Test
    void badParametersAreRejectedWithTheRange() {
        assertTrue(assertThrows(IllegalArgumentException.class, () -> sampling(0, 0, 1, 1)).getMessage().contains("temperature"));
        assertTrue(assertThrows(IllegalArgumentException.class, () -> sampling(1, 0, 1.5, 1)).getMessage().contains("top_p"));
        assertTrue(assertThrows(IllegalArgumentException.class, () -> sampling(1, -1, 1, 1)).getMessage().contains("top_k"));
        assertTrue(assertThrows(IllegalArgumentException.class, () -> sampling(1, 0, 1, 0)).getMessage().contains("repetition_penalty"));
    }

    /** NaN or +infinity logits define no distribution: sampling refuses them with what to check (greedy still picks). */
    @Test
    void samplingRefusesNotFiniteLogits() {
        SamplingParams p = new SamplingParams(4, 0, true, 0.7, 0, 0.9, 1.0, 1, java.util.List.of());
        for (float bad : new float[] {Float.NaN, Float.POSITIVE_INFINITY}) {
            float[] logits = {0.5f, bad, -1f};
            IllegalStateException e = assertThrows(IllegalStateException.class,
                    () -> new Sampler(p, new int[0], 1).next(logits.clone(), new int[0], 0, 0));
            assertTrue(e.getMessage().contains("NaN or +infinity") && e.getMessage().contains("bf16"), e.getMessage());
            Sampler.argmax(logits.clone());  // greedy: the argmax as torch.argmax's first maximum (no exception)
        }
    }
}
