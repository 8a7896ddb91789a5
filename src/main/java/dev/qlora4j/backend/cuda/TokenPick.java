package dev.qlora4j.backend.cuda;

/**
 * How a decode step picks each row's next token on the device ({@link DecodeGraph#launchPick}): the argmax
 * (greedy, {@code uniforms == null}) or infer.Sampler's sampled choice for each row's uniform draw, after the
 * repetition penalty on the ids seen so far ({@link DecodeGraph#markSeen} and the device's picks) and with the excluded
 * ids (EOS before min_new_tokens; at most {@link DecodeGraph#MAX_EXCLUDED_IDS}) read as -infinity.
 *
 * @param excluded    ids masked before the pick
 * @param repetitionPenalty > 0; 1 = off (as a float, the host's arithmetic)
 * @param temperature > 0; logits are divided by it (as a float)
 * @param topK        0 = off
 * @param topP        in (0, 1]; 1 = off
 * @param uniforms    [batch] each row's draw in [0, 1) (infer.Sampler#drawUniform), or null for greedy
 */
public record TokenPick(int[] excluded, float repetitionPenalty, float temperature, int topK, double topP,
                        double[] uniforms) {

    public TokenPick {
        excluded = excluded.clone();
        if (!(repetitionPenalty > 0)) {
            throw new IllegalArgumentException("repetition_penalty must be > 0, got " + repetitionPenalty);
        }
        if (excluded.length > DecodeGraph.MAX_EXCLUDED_IDS) {
            throw new IllegalArgumentException("a device pick masks at most " + DecodeGraph.MAX_EXCLUDED_IDS
                    + " ids, got " + excluded.length);
        }
        if (uniforms != null) {
            uniforms = uniforms.clone();
            checkSampling(temperature, topK, topP);
        }
    }

    /** The sampling settings the kernels take (SamplingKernels checks them too, for its direct callers). */
    static void checkSampling(float temperature, int topK, double topP) {
        if (!(temperature > 0) || topK < 0 || !(topP > 0 && topP <= 1)) {
            throw new IllegalArgumentException("sampling needs temperature > 0, top_k >= 0 and top_p in (0, 1], got "
                    + temperature + ", " + topK + ", " + topP);
        }
    }

    /** The argmax after the penalty and the excluded ids. */
    public static TokenPick greedy(int[] excluded, float repetitionPenalty) {
        return new TokenPick(excluded, repetitionPenalty, 1f, 0, 1.0, null);
    }

    /** Sampling with each row's uniform draw. */
    public static TokenPick sampled(int[] excluded, float repetitionPenalty, float temperature, int topK, double topP,
                                    double[] uniforms) {
        return new TokenPick(excluded, repetitionPenalty, temperature, topK, topP,
                java.util.Objects.requireNonNull(uniforms, "uniforms"));
    }

    /** Whether the repetition penalty applies. */
    public boolean penalized() { return repetitionPenalty != 1f; }

    public boolean greedy() { return uniforms == null; }
}
