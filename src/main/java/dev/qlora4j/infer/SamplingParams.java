package dev.qlora4j.infer;

import java.util.List;

/**
 * How to pick the next token, mirroring transformers' generate() arguments. Processing order is
 * transformers': repetition penalty, min_new_tokens (EOS suppressed), then temperature, top-k,
 * top-p; greedy (doSample = false) takes the argmax after the penalties.
 *
 * @param maxNewTokens      tokens to generate at most per prompt
 * @param minNewTokens      EOS is impossible before this many new tokens
 * @param doSample          false: greedy
 * @param temperature       > 0; 1 leaves logits unchanged
 * @param topK              keep the k most likely tokens (0 = off)
 * @param topP              keep the smallest set whose probability reaches p (1 = off)
 * @param repetitionPenalty > 0; 1 = off (CTRL-style: positive logits divided, negative multiplied)
 * @param seed              random seed for sampling
 * @param stopStrings       generation of a row stops once its text contains one of these (text is cut there)
 */
public record SamplingParams(int maxNewTokens, int minNewTokens, boolean doSample, double temperature, int topK,
                             double topP, double repetitionPenalty, long seed, List<String> stopStrings) {

    public SamplingParams {
        if (maxNewTokens < 0) throw new IllegalArgumentException("max_new_tokens must be >= 0, got " + maxNewTokens);
        if (minNewTokens < 0) throw new IllegalArgumentException("min_new_tokens must be >= 0, got " + minNewTokens);
        if (doSample && !(temperature > 0)) {
            throw new IllegalArgumentException("temperature must be > 0 when sampling (got " + temperature
                    + "); use greedy decoding for deterministic output");
        }
        if (topK < 0) throw new IllegalArgumentException("top_k must be >= 0, got " + topK);
        if (!(topP > 0 && topP <= 1)) throw new IllegalArgumentException("top_p must be in (0, 1], got " + topP);
        if (!(repetitionPenalty > 0)) {
            throw new IllegalArgumentException("repetition_penalty must be > 0, got " + repetitionPenalty);
        }
        stopStrings = stopStrings == null ? List.of() : List.copyOf(stopStrings);
    }

    public static SamplingParams greedy(int maxNewTokens) {
        return new SamplingParams(maxNewTokens, 0, false, 1.0, 0, 1.0, 1.0, 0, List.of());
    }

    public SamplingParams withMinNewTokens(int n) {
        return new SamplingParams(maxNewTokens, n, doSample, temperature, topK, topP, repetitionPenalty, seed, stopStrings);
    }

    public SamplingParams withStopStrings(List<String> stops) {
        return new SamplingParams(maxNewTokens, minNewTokens, doSample, temperature, topK, topP, repetitionPenalty, seed, stops);
    }
}
