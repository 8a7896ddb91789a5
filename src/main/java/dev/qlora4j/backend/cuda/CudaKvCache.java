package dev.qlora4j.backend.cuda;

import dev.qlora4j.backend.KvCache;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/**
 * Keys and values in GPU memory: per layer one tensor [batch, kvHeads, capacity, headDim] for keys and one
 * for values, in the backend's activation dtype, zero-filled at creation and written by
 * CudaBackend.attention. The tensors stay at the same addresses for the cache's life (a captured decode
 * graph relies on it).
 */
public final class CudaKvCache implements KvCache {
    private final int layers;
    private final int batch;
    private final int kvHeads;
    private final int capacity;
    private final int headDim;
    private final DType dtype;
    private Tensor[] keys;   // [layers] of [batch, kvHeads, capacity, headDim]
    private Tensor[] values; // same

    CudaKvCache(CudaContext ctx, DType dtype, int layers, int batch, int kvHeads, int capacity, int headDim) {
        if (layers < 1 || batch < 1 || kvHeads < 1 || capacity < 1 || headDim < 1) {
            throw new IllegalArgumentException("KV cache sizes must be positive: layers=" + layers + " batch=" + batch
                    + " kvHeads=" + kvHeads + " capacity=" + capacity + " headDim=" + headDim);
        }
        this.layers = layers;
        this.batch = batch;
        this.kvHeads = kvHeads;
        this.capacity = capacity;
        this.headDim = headDim;
        this.dtype = dtype;
        this.keys = new Tensor[layers];
        this.values = new Tensor[layers];
        try {
            for (int l = 0; l < layers; l++) {
                keys[l] = zeroed(ctx, dtype);
                values[l] = zeroed(ctx, dtype);
            }
        } catch (RuntimeException e) {
            close();
            throw e;
        }
    }

    private Tensor zeroed(CudaContext ctx, DType dt) {
        Tensor t = ctx.empty(dt, batch, kvHeads, capacity, headDim);
        ctx.driver().memsetD8Async(CudaContext.ptr(t), (byte) 0, t.byteSize(), ctx.stream());
        return t;
    }

    @Override public int layers() { return layers; }

    @Override public int batch() { return batch; }

    @Override public int kvHeads() { return kvHeads; }

    @Override public int capacity() { return capacity; }

    @Override public int headDim() { return headDim; }

    public DType dtype() { return dtype; }

    /** Layer's keys [batch, kvHeads, capacity, headDim] on the device (the cache's own tensor: do not close). */
    @Override
    public Tensor keys(int layer) {
        checkLayer(layer);
        return keys[layer].reshape(keys[layer].shape());
    }

    /** Layer's values [batch, kvHeads, capacity, headDim] on the device (the cache's own tensor: do not close). */
    @Override
    public Tensor values(int layer) {
        checkLayer(layer);
        return values[layer].reshape(values[layer].shape());
    }

    long keyPointer(int layer) {
        checkLayer(layer);
        return CudaContext.ptr(keys[layer]);
    }

    long valuePointer(int layer) {
        checkLayer(layer);
        return CudaContext.ptr(values[layer]);
    }

    private void checkLayer(int layer) {
        if (keys == null) throw new IllegalStateException("KV cache is closed");
        if (layer < 0 || layer >= layers) {
            throw new IllegalArgumentException("layer " + layer + " is outside the KV cache (" + layers + " layers)");
        }
    }

    /** Returns the memory to the allocator (queued work that still reads it stays ordered on the stream). */
    @Override
    public void close() {
        if (keys == null) return;
        for (Tensor t : keys) if (t != null) t.close();
        for (Tensor t : values) if (t != null) t.close();
        keys = null;
        values = null;
    }
}
