package dev.qlora4j.peft.prefix;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.KvCache;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.tensor.Tensor;

/**
 * Per-layer keys and values [P, kvHeads*headDim] on the device, owned here, that a
 * {@link TransformerLM} writes in front of every new cache ({@link TransformerLM#setCachePrefix}).
 */
public final class KvPrefix implements TransformerLM.CachePrefix, AutoCloseable {
    private final int length;
    private final Tensor[] keys;   // per layer [P, kvHeads*headDim], as they go into the cache
    private final Tensor[] values; // per layer [P, kvHeads*headDim]

    KvPrefix(int length, Tensor[] keys, Tensor[] values) {
        this.length = length;
        this.keys = keys;
        this.values = values;
    }

    /**
     * Slots [0, slots) of batch row 0 of every layer of a cache ([1.., kvHeads, capacity, headDim]
     * per layer), regrouped token-major as [slots, kvHeads*headDim] in the backend's activation dtype.
     */
    static KvPrefix fromCache(Backend b, KvCache cache, int slots) {
        int layers = cache.layers(), kv = cache.kvHeads(), cap = cache.capacity(), d = cache.headDim();
        Tensor[] k = new Tensor[layers], v = new Tensor[layers];
        for (int l = 0; l < layers; l++) {
            k[l] = tokenMajor(b, cache.keys(l), slots, kv, cap, d);
            v[l] = tokenMajor(b, cache.values(l), slots, kv, cap, d);
        }
        return new KvPrefix(slots, k, v);
    }

    /** [batch, kv, cap, d] (row 0 used) -> [slots, kv*d]. */
    private static Tensor tokenMajor(Backend b, Tensor layer, int slots, int kv, int cap, int d) {
        Tensor host = b.toHost(layer);
        float[] out = new float[slots * kv * d];
        for (int s = 0; s < slots; s++) {
            for (int h = 0; h < kv; h++) {
                long from = ((long) h * cap + s) * d;
                for (int i = 0; i < d; i++) out[(s * kv + h) * d + i] = host.getFloat(from + i);
            }
        }
        return upload(b, out, slots, kv * d);
    }

    /** Host float32 values uploaded and converted to the backend's activation dtype (what the cache holds). */
    static Tensor upload(Backend b, float[] data, int rows, int cols) {
        Tensor t = b.upload(Tensor.of(data, rows, cols));
        if (t.dtype() == b.activationDType()) return t;
        try (t) {
            return b.cast(t, b.activationDType());
        }
    }

    @Override public int length() { return length; }

    @Override public Tensor keys(int layer) { return keys[layer]; }

    @Override public Tensor values(int layer) { return values[layer]; }

    public int numLayers() { return keys.length; }

    @Override
    public void close() {
        for (Tensor t : keys) t.close();
        for (Tensor t : values) t.close();
    }
}
