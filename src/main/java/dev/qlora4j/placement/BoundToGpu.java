package dev.qlora4j.placement;

import dev.qlora4j.backend.cuda.CudaContext;
import dev.qlora4j.model.ActivationStore;
import dev.qlora4j.model.DecoderLayer;
import dev.qlora4j.model.LayerResidency;
import dev.qlora4j.tensor.Tensor;

/**
 * Wrappers that make one GPU's context current before every call of helpers that talk to the driver directly
 * (weight streaming, activation offload). With several GPUs in one process the current context is whichever
 * device ran last (CudaContext.bind); these helpers create events and pinned buffers and queue copies on their
 * GPU's streams, so they must run in their GPU's context. On one GPU the bind is a thread-local compare.
 */
final class BoundToGpu {
    private BoundToGpu() {}

    static LayerResidency residency(LayerResidency r, CudaContext ctx) {
        return new LayerResidency() {
            @Override public void enter(int layer, boolean ascending) { ctx.bind(); r.enter(layer, ascending); }

            @Override public void exit(int layer) { ctx.bind(); r.exit(layer); }

            @Override public void placeLayer(int index, DecoderLayer layer) { ctx.bind(); r.placeLayer(index, layer); }

            @Override public boolean streams() { return r.streams(); }

            @Override public void close() { ctx.bind(); r.close(); }

            @Override public String toString() { return r.toString(); }
        };
    }

    static ActivationStore activationStore(ActivationStore s, CudaContext ctx) {
        return new ActivationStore() {
            @Override public Saved save(Tensor x) { ctx.bind(); return s.save(x); }

            @Override public void release(Saved saved, Tensor x) { ctx.bind(); s.release(saved, x); }

            @Override public void prefetch(Saved saved) { ctx.bind(); s.prefetch(saved); }

            @Override public Tensor restore(Saved saved) { ctx.bind(); return s.restore(saved); }

            @Override public void discard(Saved saved) { ctx.bind(); s.discard(saved); }

            @Override public void close() { ctx.bind(); s.close(); }
        };
    }
}
