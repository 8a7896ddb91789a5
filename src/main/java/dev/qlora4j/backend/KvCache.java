package dev.qlora4j.backend;

import dev.qlora4j.tensor.Tensor;

/**
 * Keys and values of past tokens, per layer: each {@code [batch, kvHeads, capacity, headDim]}
 * in the backend's activation dtype, written by {@link Backend#attention}.
 */
public interface KvCache extends AutoCloseable {
    int layers();

    int batch();

    int kvHeads();

    int capacity();

    int headDim();

    /** Keys of one layer, [batch, kvHeads, capacity, headDim]. */
    Tensor keys(int layer);

    /** Values of one layer, [batch, kvHeads, capacity, headDim]. */
    Tensor values(int layer);

    @Override
    void close();
}
