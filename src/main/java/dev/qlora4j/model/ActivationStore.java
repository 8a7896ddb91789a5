package dev.qlora4j.model;

import dev.qlora4j.tensor.Tensor;

/**
 * Where gradient checkpointing keeps each layer's input between forward and backward. The default keeps
 * it on the device; activation offload ({@code CudaActivationOffload}) copies it to pinned host memory on a
 * side stream as soon as it is made and brings it back, one layer ahead, for the backward recompute, so
 * the context length is bounded by host memory rather than GPU memory.
 */
public interface ActivationStore extends AutoCloseable {
    /** A layer input held by the store. */
    interface Saved {}

    /**
     * Starts saving x [B*T, hidden], a layer input that is still to be read by that layer's forward; the caller
     * keeps x until {@link #release}.
     */
    Saved save(Tensor x);

    /** Called once the layer's forward that reads x is queued: the store may now free x's device memory (closing x). */
    void release(Saved s, Tensor x);

    /** Starts bringing s back to the device (the layer before the one being restored now). */
    default void prefetch(Saved s) {}

    /** The saved input on the device (the caller closes it); the store forgets s. */
    Tensor restore(Saved s);

    /** Forgets s without restoring it (error paths); frees what it holds. */
    void discard(Saved s);

    @Override
    default void close() {}

    /** Keeps every input on the device: the behaviour without offload. */
    ActivationStore ON_DEVICE = new ActivationStore() {
        record Kept(Tensor x) implements Saved {}

        @Override public Saved save(Tensor x) { return new Kept(x); }

        @Override public void release(Saved s, Tensor x) {}

        @Override public Tensor restore(Saved s) { return ((Kept) s).x(); }

        @Override public void discard(Saved s) { ((Kept) s).x().close(); }
    };
}
