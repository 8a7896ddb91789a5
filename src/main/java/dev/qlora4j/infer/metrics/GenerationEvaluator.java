package dev.qlora4j.infer.metrics;

import dev.qlora4j.CausalLM;
import dev.qlora4j.infer.GenerationResult;
import dev.qlora4j.infer.SamplingParams;
import dev.qlora4j.infer.TokenListener;
import dev.qlora4j.io.tokenizer.Tokenizer;

import java.util.ArrayList;
import java.util.List;
import java.util.function.IntConsumer;

/**
 * Generates an answer for every example, in batches (left-padded by the generator, as
 * transformers' batched generate() does), and scores the answers: exact match and sacreBLEU's
 * corpus BLEU over the whole set, sentence BLEU per example.
 *
 * <p>With sampling, example i is sampled with seed (params.seed + i) whatever the batch size.
 */
public final class GenerationEvaluator {
    private final CausalLM lm;
    private final SamplingParams params;
    private final int batchSize;

    public GenerationEvaluator(CausalLM lm, SamplingParams params, int batchSize) {
        if (batchSize < 1) throw new IllegalArgumentException("batch size must be >= 1, got " + batchSize);
        this.lm = lm;
        this.params = params;
        this.batchSize = batchSize;
    }

    /** @param progress called with the number of examples done after each batch */
    public GenerationEvaluation evaluate(List<GenerationExample> examples, IntConsumer progress) {
        Tokenizer tok = lm.tokenizer();
        int n = examples.size();
        String[] promptTexts = new String[n];
        int[][] promptIds = new int[n][];
        for (int i = 0; i < n; i++) {
            GenerationExample ex = examples.get(i);
            try {
                promptTexts[i] = ex.promptText(tok);
            } catch (RuntimeException e) {
                throw new IllegalArgumentException("line " + ex.line() + ": cannot render the chat prompt: " + e.getMessage(), e);
            }
            promptIds[i] = tok.encode(promptTexts[i], !ex.isChat());
            if (promptIds[i].length == 0) throw new IllegalArgumentException("line " + ex.line() + ": the prompt encodes to no token");
        }
        int turnEnd = turnEndId(examples, tok);

        Bleu sentence = Bleu.sentence();
        List<ExampleResult> results = new ArrayList<>(n);
        for (int start = 0; start < n; start += batchSize) {
            int end = Math.min(n, start + batchSize);
            int[][] batch = new int[end - start][];
            System.arraycopy(promptIds, start, batch, 0, batch.length);
            GenerationResult r = lm.generateIds(batch, withSeed(params.seed() + start), TokenListener.NONE);
            for (int b = 0; b < batch.length; b++) {
                GenerationExample ex = examples.get(start + b);
                int[] out = r.outputIds()[b];
                int k = ex.isChat() ? TurnEnd.position(out, turnEnd) : -1;
                String prediction = k >= 0 ? TurnEnd.answerBefore(out, k, tok, params.stopStrings()) : r.texts()[b];
                String reason = k >= 0 ? "end_of_turn" : r.stopReasons()[b];
                int newTokens = k >= 0 ? k + 1 : out.length;
                results.add(new ExampleResult(ex, promptTexts[start + b], prediction,
                        ExampleResult.matches(prediction, ex.references()),
                        sentence.sentenceScore(prediction, ex.references()), reason, newTokens));
            }
            progress.accept(end);
        }
        return score(results);
    }

    /** Totals of scored examples: the exact-match fraction and corpus BLEU. */
    public static GenerationEvaluation score(List<ExampleResult> results) {
        if (results.isEmpty()) throw new IllegalArgumentException("no examples to score");
        List<String> predictions = new ArrayList<>();
        List<List<String>> references = new ArrayList<>();
        int matches = 0, maxRefs = 0, minRefs = Integer.MAX_VALUE;
        for (ExampleResult r : results) {
            predictions.add(r.prediction());
            references.add(r.example().references());
            if (r.exactMatch()) matches++;
            maxRefs = Math.max(maxRefs, r.example().references().size());
            minRefs = Math.min(minRefs, r.example().references().size());
        }
        Bleu corpus = Bleu.corpus();
        BleuScore bleu = corpus.corpusScore(predictions, references);
        String nrefs = maxRefs == minRefs ? Integer.toString(maxRefs) : "var";
        return new GenerationEvaluation(results, (double) matches / results.size(), bleu, corpus.signature(nrefs));
    }

    /** The chat turn's closing token (see {@link TurnEnd}), found from the first chat example; -1 without chats. */
    private int turnEndId(List<GenerationExample> examples, Tokenizer tok) {
        for (GenerationExample ex : examples) {
            if (ex.isChat()) return TurnEnd.tokenId(tok, tok.chatTemplate(), ex.history(), lm.eosTokenIds());
        }
        return -1;
    }

    private SamplingParams withSeed(long seed) {
        return new SamplingParams(params.maxNewTokens(), params.minNewTokens(), params.doSample(), params.temperature(),
                params.topK(), params.topP(), params.repetitionPenalty(), seed, params.stopStrings());
    }
}
