package dev.qlora4j.infer.metrics;

import dev.qlora4j.infer.metrics.Bleu.Smoothing;
import dev.qlora4j.infer.metrics.Bleu.Tokenization;
import org.junit.jupiter.api.Test;

import java.util.List;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * BLEU against values sacreBLEU publishes: its README (the corpus_score examples) and its test
 * suite (test/test_bleu.py, test/test_sentence_bleu.py in mjpost/sacrebleu), at the precision they
 * are published with.
 */
class BleuTest {
    // sacreBLEU README: two reference streams for three system sentences
    private static final List<String> SYS = List.of("The dog bit the man.", "It wasn't surprising.", "The man had just bitten him.");
    private static final List<List<String>> REF_STREAMS = List.of(
            List.of("The dog bit the man.", "It was not unexpected.", "The man bit him first."),
            List.of("The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."));

    // test_sentence_bleu.py, from sacreBLEU issue #98 (t-cedilla in the reference, t-comma in the system)
    private static final String REF_98 = "producţia de zahăr brut se exprimă în zahăr alb;";
    private static final String SYS_98 = "Producția de zahăr primă va fi exprimată în ceea ce privește zahărul alb;";

    @Test
    void readmeCorpusExampleWithTwoReferences() {
        BleuScore s = Bleu.corpus().corpusScore(SYS, Bleu.fromStreams(REF_STREAMS));
        assertEquals(48.530827, s.score(), 1e-6); // test_bleu.py test_corpus_bleu (default settings)
        // README: BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ratio = 0.944 hyp_len = 17 ref_len = 18)
        assertEquals("BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ratio = 0.944 hyp_len = 17 ref_len = 18)", s.format());
        assertEquals(17, s.sysLen());
        assertEquals(18, s.refLen());
        assertEquals("nrefs:2|case:mixed|eff:no|tok:13a|smooth:exp", Bleu.corpus().signature("2"));
    }

    @Test
    void readmeVariableNumberOfReferences() {
        // README: the first reference of the first sentence removed ('' or None)
        List<List<String>> streams = List.of(
                java.util.Arrays.asList("", "It was not unexpected.", "The man bit him first."),
                REF_STREAMS.get(1));
        BleuScore s = Bleu.corpus().corpusScore(SYS, Bleu.fromStreams(streams));
        assertEquals("BLEU = 29.44 82.4/42.9/27.3/12.5 (BP = 0.889 ratio = 0.895 hyp_len = 17 ref_len = 19)", s.format());
        List<List<String>> withNull = List.of(java.util.Arrays.asList(null, "It was not unexpected.", "The man bit him first."),
                REF_STREAMS.get(1));
        assertEquals(s, Bleu.corpus().corpusScore(SYS, Bleu.fromStreams(withNull)));
    }

    @Test
    void testSuiteCorpusVariants() {
        List<List<String>> refs = Bleu.fromStreams(REF_STREAMS);
        // empty hypotheses are scored, not dropped
        assertEquals(0.0, Bleu.corpus().corpusScore(List.of("", "", ""), refs).score(), 0.0);
        assertEquals(49.1919566, new Bleu(Tokenization.NONE, Smoothing.EXP, null, false).corpusScore(SYS, refs).score(), 1e-7);
        assertEquals(48.530827, new Bleu(Tokenization.THIRTEEN_A, Smoothing.NONE, null, false).corpusScore(SYS, refs).score(), 1e-6);
    }

    @Test
    void testSuiteStatisticsAndScoring() {
        // test_case_statistics: counts [4, 2, 1, 0], totals [6, 5, 4, 3]
        BleuStatistics st = Bleu.corpus().segmentStatistics("am I am a character sequence", List.of("I am a symbol string sequence a a"));
        assertArrayEquals(new long[] {4, 2, 1, 0}, st.correct());
        assertArrayEquals(new long[] {6, 5, 4, 3}, st.total());
        assertEquals(6, st.sysLen());
        assertEquals(8, st.refLen());
        // test_case_offset: raw_corpus_bleu = floor smoothing, no tokenization, effective order
        assertEquals(0.1555722182, new Bleu(Tokenization.NONE, Smoothing.FLOOR, null, true).score(st).score() / 100, 1e-8);
        assertEquals(0.0, new Bleu(Tokenization.NONE, Smoothing.FLOOR, 0.0, true).score(st).score(), 0.0);
        // test_case_scoring: compute_bleu([9, 7, 5, 3], [10, 8, 6, 4], 11, 11)
        BleuScore s = Bleu.computeBleu(new long[] {9, 7, 5, 3}, new long[] {10, 8, 6, 4}, 11, 11, Smoothing.NONE, Double.NaN, false);
        assertEquals(0.8375922397, s.score() / 100, 1e-8);
    }

    @Test
    void testSuiteRawAndEffectiveOrder() {
        Bleu raw = new Bleu(Tokenization.NONE, Smoothing.FLOOR, 0.01, true); // raw_corpus_bleu(..., .01)
        assertEquals(1.0, raw.corpusScore(List.of("this is a test"), List.of(List.of("this is a test"))).score() / 100, 1e-8);
        assertEquals(0.223606797749979, raw.corpusScore(List.of("this is a fest"), List.of(List.of("this is a test"))).score() / 100, 1e-8);
        assertEquals(0.3678794411714425, raw.corpusScore(List.of("test"), List.of(List.of("a test"))).score() / 100, 1e-8);
        assertEquals(1.0, raw.corpusScore(List.of("a test"), List.of(List.of("a test"))).score() / 100, 1e-8);
        assertEquals(0.03218297948685433, raw.corpusScore(List.of("a little test"), List.of(List.of("a test"))).score() / 100, 1e-8);
        // the first two do not depend on the smoothing: the sentence defaults give the same
        assertEquals(36.78794411714425, Bleu.sentence().sentenceScore("test", List.of("a test")).score(), 1e-6);
        assertEquals(100.0, Bleu.sentence().sentenceScore("a test", List.of("a test")).score(), 1e-9);
    }

    @Test
    void testSuiteSentenceBleu() {
        // test_sentence_bleu.py, effective order on, EPSILON 1e-3
        assertEquals(8.493, Bleu.sentence().sentenceScore(SYS_98, List.of(REF_98)).score(), 1e-3);
        assertEquals(0.0, sentence(Tokenization.THIRTEEN_A, Smoothing.NONE, null), 1e-3);
        assertEquals(4.51688, sentence(Tokenization.THIRTEEN_A, Smoothing.FLOOR, null), 1e-3);
        assertEquals(4.51688, sentence(Tokenization.THIRTEEN_A, Smoothing.FLOOR, 0.1), 1e-3);
        assertEquals(10.10, sentence(Tokenization.THIRTEEN_A, Smoothing.FLOOR, 0.5), 1e-3);
        assertEquals(14.882, sentence(Tokenization.THIRTEEN_A, Smoothing.ADD_K, null), 1e-3);
        assertEquals(21.389, sentence(Tokenization.THIRTEEN_A, Smoothing.ADD_K, 2.0), 1e-3);
        assertEquals(7.347, sentence(Tokenization.NONE, Smoothing.EXP, null), 1e-3);
        // issue #141: no match at all is 0 whatever the smoothing
        for (Smoothing m : Smoothing.values()) {
            assertEquals(0.0, new Bleu(Tokenization.THIRTEEN_A, m, null, true).sentenceScore("this is a cat", List.of("okay thanks")).score(), 0.0);
        }
    }

    private static double sentence(Tokenization tok, Smoothing smoothing, Double value) {
        return new Bleu(tok, smoothing, value, true).sentenceScore(SYS_98, List.of(REF_98)).score();
    }

    @Test
    void corpusScoreIsTheScoreOfSummedStatistics() {
        Bleu b = Bleu.corpus();
        List<List<String>> refs = Bleu.fromStreams(REF_STREAMS);
        BleuStatistics sum = BleuStatistics.zero(Bleu.MAX_NGRAM_ORDER);
        for (int i = 0; i < SYS.size(); i++) sum = sum.plus(b.segmentStatistics(SYS.get(i), refs.get(i)));
        assertEquals(b.corpusScore(SYS, refs), b.score(sum));
        // README precisions are counts / totals: 14/17 unigrams etc.
        assertArrayEquals(new long[] {14, 7, 5, 3}, sum.correct());
        assertArrayEquals(new long[] {17, 14, 11, 8}, sum.total());
    }

    @Test
    void pythonRoundingInFormat() {
        // 0.125 is exact in binary: Python's "%.2f" rounds the tie to even, Java's %f would give 0.13
        assertEquals("0.12", BleuScore.fixed(0.125, 2));
        assertEquals("0.38", BleuScore.fixed(0.375, 2));
    }

    @Test
    void segmentWithoutReferenceIsAnError() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> Bleu.corpus().corpusScore(List.of("a", "b"), List.of(List.of("a"), List.of(""))));
        assertTrue(e.getMessage().contains("segment 1"), e.getMessage());
    }
}
