package dev.qlora4j.model;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.KvCache;
import dev.qlora4j.tensor.Tensor;

import java.util.ArrayList;
import java.util.List;

/**
 * The KV cache of a model split over several devices: one backend cache per device holding the layers that run
 * there, so each layer's keys and values stay on its layer's device. Layer l of the model is layer
 * {@link #localLayer(int)} of {@link #part(int)}.
 */
final class SplitKvCache implements KvCache {
    private final List<KvCache> parts = new ArrayList<>();   // one per distinct backend, in model order
    private final KvCache[] partOfLayer;                      // [layers]
    private final int[] localLayer;                           // [layers]
    private final int batch, kvHeads, capacity, headDim;

    SplitKvCache(ModelDevices devices, int batch, int kvHeads, int capacity, int headDim) {
        int n = devices.numLayers();
        this.partOfLayer = new KvCache[n];
        this.localLayer = new int[n];
        this.batch = batch;
        this.kvHeads = kvHeads;
        this.capacity = capacity;
        this.headDim = headDim;
        try {
            for (Backend b : devices.backends()) {
                int count = 0;
                for (int l = 0; l < n; l++) if (devices.layer(l) == b) localLayer[l] = count++;
                if (count == 0) continue;
                KvCache part = b.newKvCache(count, batch, kvHeads, capacity, headDim);
                parts.add(part);
                for (int l = 0; l < n; l++) if (devices.layer(l) == b) partOfLayer[l] = part;
            }
        } catch (RuntimeException e) {
            close();
            throw e;
        }
    }

    /** The cache (of the layer's backend) that holds model layer l. */
    KvCache part(int layer) { return partOfLayer[layer]; }

    /** Layer l's index within {@link #part(int)}. */
    int localLayer(int layer) { return localLayer[layer]; }

    @Override public int layers() { return partOfLayer.length; }

    @Override public int batch() { return batch; }

    @Override public int kvHeads() { return kvHeads; }

    @Override public int capacity() { return capacity; }

    @Override public int headDim() { return headDim; }

    @Override public Tensor keys(int layer) { return partOfLayer[layer].keys(localLayer[layer]); }

    @Override public Tensor values(int layer) { return partOfLayer[layer].values(localLayer[layer]); }

    @Override
    public void close() {
        for (KvCache p : parts) p.close();
        parts.clear();
    }
}
