package dev.qlora4j.backend.cuda;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.lang.foreign.MemorySegment;

/**
 * The per-launch argument table of a multi-tensor kernel (one entry of fixed size per parameter): written on the
 * host into a page-locked buffer, copied to the GPU with a stream-ordered async copy, read by the kernel that
 * follows on the same stream. An event after the copy guards the host buffer: the next {@link #begin} waits for
 * it, so a table is never rewritten while its copy is still pending. Not thread-safe (as the context).
 */
final class LaunchTable implements AutoCloseable {
    private final CudaContext ctx;
    private final int entryBytes;
    private MemorySegment host;   // pinned [capacity * entryBytes]
    private Tensor device;        // U8 [capacity * entryBytes]
    private int capacity;
    private final long copied;    // event recorded after the last copy

    LaunchTable(CudaContext ctx, int entryBytes) {
        this.ctx = ctx;
        this.entryBytes = entryBytes;
        this.copied = ctx.driver().eventCreate(false);
        ctx.driver().eventRecord(copied, ctx.stream());
    }

    /** A host buffer for entries entries (contents undefined), once the previous table's copy has finished. */
    MemorySegment begin(int entries) {
        ctx.driver().eventSynchronize(copied);
        if (entries > capacity) {
            int cap = Math.max(entries, capacity * 2);
            long bytes = (long) cap * entryBytes;
            MemorySegment h = ctx.driver().memAllocHost(bytes);
            Tensor d;
            try {
                d = ctx.empty(DType.U8, Math.toIntExact(bytes));
            } catch (RuntimeException e) {
                ctx.driver().memFreeHost(h);
                throw e;
            }
            if (host != null) ctx.driver().memFreeHost(host);
            if (device != null) device.close();
            host = h;
            device = d;
            capacity = cap;
        }
        return host.asSlice(0, (long) entries * entryBytes);
    }

    /** Queues the copy of the first entries entries and returns the device address of the table. */
    long upload(int entries) {
        long bytes = (long) entries * entryBytes;
        ctx.driver().memcpyHtoDAsync(CudaContext.ptr(device), host.address(), bytes, ctx.stream());
        ctx.driver().eventRecord(copied, ctx.stream());
        return CudaContext.ptr(device);
    }

    @Override
    public void close() {
        ctx.driver().eventSynchronize(copied);
        ctx.driver().eventDestroy(copied);
        if (host != null) ctx.driver().memFreeHost(host);
        if (device != null) device.close();
        host = null;
        device = null;
    }
}
