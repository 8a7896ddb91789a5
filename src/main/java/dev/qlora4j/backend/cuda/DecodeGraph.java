package dev.qlora4j.backend.cuda;

import dev.qlora4j.tensor.Tensor;

/**
 * One decode step of a model, captured on its first {@link #step} and replayed afterwards. Per-step values
 * (token ids, positions and the cache slot {@code start}) travel through static device buffers written
 * before each replay, so the captured kernels read them from device memory.
 */
public interface DecodeGraph extends AutoCloseable {

    /** The step's work: model forward of ids [batch] at positions [batch] into cache slot start -> logits [batch, vocab]. */
    @FunctionalInterface
    interface Body {
        Tensor run(Tensor ids, Tensor positions, int start);
    }

    /** Runs one step (the first call runs it directly, then records it) and returns the logits per row on the host. */
    float[][] step(int[] ids, int[] positions, int start);

    /** Whether the step has been recorded (after the first {@link #step}). */
    boolean isCaptured();

    /** Token ids {@link #launchPick} masks at most. */
    int MAX_EXCLUDED_IDS = 4;

    /**
     * Whether {@link #launchPick} may be called: the step is recorded, and the device pick is on
     * (-Dqlora4j.cuda.devicePick, default true; false returns the logits every step, for A/B timing).
     */
    boolean picksOnDevice();

    /**
     * Queues a replay of the recorded step whose tokens are picked on the device, so that only the token ids come back
     * ({@link #collectPicks}): the argmax or the sampled choice of {@link TokenPick}, the index infer.Sampler picks from
     * the logits {@link #step} returns (for sampling, given the same uniform draw). ids: the step's input tokens, or null
     * to take the previous device step's picks where the device left them (the host need not have read them: the next
     * step is queued before the previous one's tokens are collected). Returns at once; at most two steps are queued
     * uncollected. Needs {@link #picksOnDevice}.
     */
    void launchPick(int[] ids, int[] positions, int start, TokenPick pick);

    /** The picks of the oldest queued device-pick step not yet collected (waits for it). */
    int[] collectPicks();

    /**
     * Flags each row's tokens[r] (its context so far: prompt without padding, then its generated tokens) for the
     * repetition penalty of later {@link #launchPick} calls, which add their own picks; replaces earlier flags. Needs
     * {@link #picksOnDevice}.
     */
    void markSeen(int[][] tokens);

    @Override
    void close();
}
