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

    /** Token ids {@link #launchGreedy} masks at most. */
    int MAX_EXCLUDED_IDS = 4;

    /**
     * Whether {@link #launchGreedy} may be called: the step is recorded, and the device greedy pick is on
     * (-Dqlora4j.cuda.deviceGreedy, default true; false returns the logits every step, for A/B timing).
     */
    boolean picksGreedyOnDevice();

    /**
     * Queues a replay of the recorded step whose greedy tokens are picked on the device, so that only the token ids
     * come back ({@link #collectGreedy}): the argmax of each row's logits with the excluded ids (at most
     * {@link #MAX_EXCLUDED_IDS}; EOS before min_new_tokens) read as -infinity, the index infer.Sampler's greedy path
     * picks from the logits {@link #step} returns (the first on ties). ids: the step's input tokens, or null to take
     * the previous greedy step's picks where the device left them (the host need not have read them: the next step is
     * queued before the previous one's tokens are collected). Returns at once; at most two steps are queued
     * uncollected. Needs {@link #picksGreedyOnDevice}.
     */
    void launchGreedy(int[] ids, int[] positions, int start, int[] excluded);

    /** The picks of the oldest queued greedy step not yet collected (waits for it). */
    int[] collectGreedy();

    @Override
    void close();
}
