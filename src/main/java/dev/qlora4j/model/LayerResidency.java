package dev.qlora4j.model;

/**
 * Makes a decoder layer's weights usable on the compute device around each use. For layers kept on the
 * GPU this does nothing; layers offloaded to host memory or disk are streamed into a device slot
 * ({@code dev.qlora4j.placement.WeightStreamer}): {@link #enter} waits for the layer's upload and starts the
 * next offloaded layer's (in the pass's direction), {@link #exit} marks the slot free once the queued work
 * that reads it is done. Calls come in pass order: ascending for forward passes, descending for backward.
 */
public interface LayerResidency extends AutoCloseable {
    void enter(int layer, boolean ascending);

    void exit(int layer);

    /**
     * Called by {@link TransformerLM#load} right after layer index is built on the backend's device: moves its
     * weights out (to pinned host memory or a file) when the placement says so.
     */
    default void placeLayer(int index, DecoderLayer layer) {}

    /** Whether any layer is streamed (decode graphs cannot capture the host-side staging). */
    default boolean streams() { return false; }

    @Override
    default void close() {}

    LayerResidency NONE = new LayerResidency() {
        @Override public void enter(int layer, boolean ascending) {}

        @Override public void exit(int layer) {}
    };
}
