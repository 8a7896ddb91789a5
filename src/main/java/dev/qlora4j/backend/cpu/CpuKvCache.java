package dev.qlora4j.backend.cpu;

import dev.qlora4j.backend.KvCache;
import dev.qlora4j.tensor.Tensor;

/**
 * Keys and values on the heap: per layer one F32 tensor [batch, kvHeads, capacity, headDim]
 * for keys and one for values, zero-filled at creation and written by CpuBackend.attention.
 */
public final class CpuKvCache implements KvCache {
    private final int layers;
    private final int batch;
    private final int kvHeads;
    private final int capacity;
    private final int headDim;
    private float[][] keys;   // [layers][batch * kvHeads * capacity * headDim]
    private float[][] values; // same

    public CpuKvCache(int layers, int batch, int kvHeads, int capacity, int headDim) {
        if (layers < 1 || batch < 1 || kvHeads < 1 || capacity < 1 || headDim < 1) {
            throw new IllegalArgumentException("KV cache sizes must be positive: layers=" + layers + " batch=" + batch
                    + " kvHeads=" + kvHeads + " capacity=" + capacity + " headDim=" + headDim);
        }
        long perLayer = (long) batch * kvHeads * capacity * headDim;
        if (perLayer > Integer.MAX_VALUE - 8) {
            throw new IllegalArgumentException("one KV cache layer of batch=" + batch + " x kvHeads=" + kvHeads
                    + " x capacity=" + capacity + " x headDim=" + headDim + " = " + perLayer
                    + " floats is larger than a Java array; lower the capacity (max tokens) or the batch size");
        }
        this.layers = layers;
        this.batch = batch;
        this.kvHeads = kvHeads;
        this.capacity = capacity;
        this.headDim = headDim;
        this.keys = new float[layers][(int) perLayer];
        this.values = new float[layers][(int) perLayer];
    }

    @Override public int layers() { return layers; }

    @Override public int batch() { return batch; }

    @Override public int kvHeads() { return kvHeads; }

    @Override public int capacity() { return capacity; }

    @Override public int headDim() { return headDim; }

    /** A view of layer's keys [batch, kvHeads, capacity, headDim] sharing the cache's memory. */
    @Override
    public Tensor keys(int layer) {
        return Tensor.of(keyArray(layer), batch, kvHeads, capacity, headDim);
    }

    /** A view of layer's values [batch, kvHeads, capacity, headDim] sharing the cache's memory. */
    @Override
    public Tensor values(int layer) {
        return Tensor.of(valueArray(layer), batch, kvHeads, capacity, headDim);
    }

    float[] keyArray(int layer) {
        checkLayer(layer);
        return keys[layer];
    }

    float[] valueArray(int layer) {
        checkLayer(layer);
        return values[layer];
    }

    private void checkLayer(int layer) {
        if (keys == null) throw new IllegalStateException("KV cache is closed");
        if (layer < 0 || layer >= layers) {
            throw new IllegalArgumentException("layer " + layer + " is outside the KV cache (" + layers + " layers)");
        }
    }

    /** Drops the arrays (the GC frees them); later access fails. */
    @Override
    public void close() {
        keys = null;
        values = null;
    }
}
