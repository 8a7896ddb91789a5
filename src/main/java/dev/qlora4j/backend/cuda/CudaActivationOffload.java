package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.CudaDriver;
import dev.qlora4j.model.ActivationStore;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.util.ArrayDeque;
import java.util.HashMap;
import java.util.Map;

/**
 * Activation offload for gradient checkpointing on one GPU: each checkpointed layer input x [B*T, hidden] is
 * copied to pinned host memory on a side stream as soon as it is made (the copy waits only for the event recorded
 * right after x's producer, so it overlaps the layer that reads x); once that layer is queued, the compute stream
 * waits for the copy and x's device memory goes back to the allocator. Backward brings inputs back one layer
 * ahead: the device tensor is allocated on the compute stream's allocator, the side stream waits for an event
 * recorded at that point (so it never writes a block earlier compute work still reads), copies, and the compute
 * stream waits for that copy before the recompute. Pinned buffers are reused by size across steps.
 */
public final class CudaActivationOffload implements ActivationStore {
    private final CudaContext ctx;
    private final CudaDriver driver;
    private final long side;
    private final Map<Long, ArrayDeque<MemorySegment>> pinnedPool = new HashMap<>();
    /** Restored or discarded inputs whose side-stream copies may still run: recycled at the next save (no host wait mid-backward). */
    private final ArrayDeque<Held> retiring = new ArrayDeque<>();
    private long pinnedBytes;

    /** One saved input: where it is on the host, and the device copy while it is on its way back. */
    private final class Held implements Saved {
        final MemorySegment host;
        final DType dtype;
        final int[] shape;
        final long copied;     // event: the device-to-host copy is done
        Tensor back;           // the device copy being restored (prefetch), or null
        long restored;         // event: the host-to-device copy is done (0 before prefetch)

        Held(MemorySegment host, DType dtype, int[] shape) {
            this.host = host;
            this.dtype = dtype;
            this.shape = shape;
            this.copied = driver.eventCreate(false);
        }
    }

    public CudaActivationOffload(CudaBackend backend) {
        this.ctx = backend.context();
        this.driver = ctx.driver();
        this.side = driver.streamCreate(true);
    }

    @Override
    public Saved save(Tensor x) {
        long bytes = x.byteSize();
        Held h = new Held(pinned(bytes), x.dtype(), x.shape());
        long produced = driver.eventCreate(false);
        try {
            driver.eventRecord(produced, ctx.stream());
            driver.streamWaitEvent(side, produced);
            if (bytes > 0) driver.memcpyDtoHAsync(h.host.address(), CudaContext.ptr(x), bytes, side);
            driver.eventRecord(h.copied, side);
        } finally {
            driver.eventDestroy(produced); // a destroyed event's recorded work still completes and is still waited for
        }
        return h;
    }

    @Override
    public void release(Saved s, Tensor x) {
        driver.streamWaitEvent(ctx.stream(), ((Held) s).copied);
        x.close(); // safe: later work on the compute stream (the block's next user) runs after the copy
    }

    @Override
    public void prefetch(Saved s) {
        Held h = (Held) s;
        if (h == null || h.back != null) return;
        h.back = ctx.empty(h.dtype, h.shape);
        long allocated = driver.eventCreate(false);
        try {
            driver.eventRecord(allocated, ctx.stream());
            driver.streamWaitEvent(side, allocated); // the block's earlier readers on the compute stream are done
        } finally {
            driver.eventDestroy(allocated);
        }
        driver.streamWaitEvent(side, h.copied);
        if (h.host.byteSize() > 0) driver.memcpyHtoDAsync(CudaContext.ptr(h.back), h.host.address(), h.host.byteSize(), side);
        h.restored = driver.eventCreate(false);
        driver.eventRecord(h.restored, side);
    }

    @Override
    public Tensor restore(Saved s) {
        Held h = (Held) s;
        prefetch(h);
        driver.streamWaitEvent(ctx.stream(), h.restored);
        Tensor out = h.back;
        h.back = null;
        finish(h);
        return out;
    }

    @Override
    public void discard(Saved s) {
        Held h = (Held) s;
        if (h.back != null) {
            driver.streamWaitEvent(ctx.stream(), h.restored);
            h.back.close();
            h.back = null;
        }
        finish(h);
    }

    /** Queues the pinned buffer for reuse once the side stream is past every copy that uses it. */
    private void finish(Held h) { retiring.add(h); }

    /** Returns retired buffers to the pool (their copies finished long ago: they belong to an earlier backward). */
    private void recycle() {
        for (Held h; (h = retiring.poll()) != null; ) {
            driver.eventSynchronize(h.restored != 0 ? h.restored : h.copied);
            driver.eventDestroy(h.copied);
            if (h.restored != 0) driver.eventDestroy(h.restored);
            pinnedPool.computeIfAbsent(h.host.byteSize(), k -> new ArrayDeque<>()).push(h.host);
        }
    }

    private MemorySegment pinned(long bytes) {
        recycle();
        ArrayDeque<MemorySegment> q = pinnedPool.get(bytes);
        if (q != null && !q.isEmpty()) return q.pop();
        try {
            MemorySegment m = driver.memAllocHost(Math.max(1, bytes)).asSlice(0, bytes);
            pinnedBytes += bytes;
            return m;
        } catch (RuntimeException e) {
            throw new IllegalStateException("activation offload could not pin " + bytes + " bytes of host memory (" + pinnedBytes
                    + " pinned already): the host is out of page-locked memory; shorten --max-seq-length or lower the batch size", e);
        }
    }

    /** Pinned host bytes held for saved activations (they are reused across steps). */
    public long pinnedBytes() { return pinnedBytes; }

    @Override
    public void close() {
        driver.streamSynchronize(side);
        recycle();
        for (ArrayDeque<MemorySegment> q : pinnedPool.values()) for (MemorySegment m : q) driver.memFreeHost(m);
        pinnedPool.clear();
        driver.streamDestroy(side);
    }
}
