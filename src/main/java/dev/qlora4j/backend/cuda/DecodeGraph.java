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

    @Override
    void close();
}
