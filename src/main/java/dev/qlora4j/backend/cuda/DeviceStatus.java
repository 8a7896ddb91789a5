package dev.qlora4j.backend.cuda;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * A small device word, int[3] = {code, value, limit}, through which kernels report bad indices (an
 * embedding id outside the table, a gathered row outside x, a cross-entropy target outside the vocabulary) and
 * logits that cannot be sampled (not finite).
 * A kernel cannot throw, and checking indices on the host would cost a copy and a synchronization per op
 * (and could not happen inside a CUDA graph), so the first error is recorded here and {@link #check()}
 * turns it into an IllegalArgumentException at the backend's next synchronization (toHost, synchronize).
 * Codes mirror native/activations.cuh.
 */
final class DeviceStatus implements AutoCloseable {
    static final int EMBEDDING_ID = 1;
    static final int GATHER_ROW = 2;
    static final int XENT_TARGET = 3;
    static final int SAMPLE_NOT_FINITE = 4;

    private final CudaContext ctx;
    private final Tensor word; // I32 [3]

    DeviceStatus(CudaContext ctx) {
        this.ctx = ctx;
        this.word = ctx.empty(DType.I32, 3);
        clear();
    }

    /** The device address kernels write to. */
    long pointer() { return CudaContext.ptr(word); }

    /** Waits for the stream, then throws if a kernel reported an error since the last check (and clears it). */
    void check() {
        int[] w = new int[3];
        ctx.synchronize();
        ctx.driver().copyToHost(MemorySegment.ofArray(w), pointer());
        if (w[0] != 0) {
            clear();
            throw error(w[0], w[1], w[2]);
        }
    }

    /** The exception for a status word (also used by CUDA graphs, which read the word with their outputs). */
    static RuntimeException error(int code, int value, int limit) {
        if (code == SAMPLE_NOT_FINITE) return new IllegalStateException(dev.qlora4j.infer.Sampler.notFinite(value));
        return new IllegalArgumentException(switch (code) {
            case EMBEDDING_ID -> "token id " + value + " is outside the embedding table (vocab size " + limit
                    + "); check that the tokenizer matches the model";
            case GATHER_ROW -> "gatherRows: row " + value + " is outside x (" + limit + " rows)";
            case XENT_TARGET -> "crossEntropy: target " + value + " is outside the vocabulary of " + limit
                    + " (use -100 to ignore a position)";
            default -> "a CUDA kernel reported error code " + code + " (value " + value + ", limit " + limit + ")";
        });
    }

    static int codeOf(MemorySegment hostWord) { return hostWord.getAtIndex(ValueLayout.JAVA_INT, 0); }

    private void clear() {
        ctx.driver().memsetD8Async(pointer(), (byte) 0, 12, ctx.stream());
    }

    @Override
    public void close() { word.close(); }
}
