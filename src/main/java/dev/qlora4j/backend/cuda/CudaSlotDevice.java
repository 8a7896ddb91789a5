package dev.qlora4j.backend.cuda;

import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.cuda.CudaDriver;
import dev.qlora4j.cuda.DeviceBuffer;
import dev.qlora4j.placement.SlotDevice;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.function.UnaryOperator;

/**
 * Streaming slots on one GPU for weight offload: two device buffers, a copy stream (non-blocking) and events.
 * An upload into slot s first makes the copy stream wait for freed[s] (recorded on the compute stream after the
 * last work that reads the slot), then copies; loaded[s] marks its end and the compute stream waits for it
 * before the layer runs. Pinned images are copied directly (truly asynchronous); memory-mapped disk images go
 * through two pinned staging buffers: the host waits for a buffer's previous copy (its event) before refilling it.
 * Decode graphs are switched off on the backend (a capture cannot replay the host-side staging).
 */
public final class CudaSlotDevice implements SlotDevice {
    static final long STAGING_BYTES = 64L << 20;

    private final CudaBackend backend;
    private final CudaContext ctx;
    private final CudaDriver driver;
    private final long copyStream;
    private final long[] loaded = new long[2];
    private final long[] freed = new long[2];
    private final DeviceBuffer[] slots = new DeviceBuffer[2];
    private final MemorySegment[] staging = new MemorySegment[2];
    private final long[] stagingDone = new long[2];
    private int nextStaging;

    public CudaSlotDevice(CudaBackend backend) {
        this.backend = backend;
        this.ctx = backend.context();
        this.driver = ctx.driver();
        this.copyStream = driver.streamCreate(true);
        for (int s = 0; s < 2; s++) {
            loaded[s] = driver.eventCreate(false);
            freed[s] = driver.eventCreate(false);
            stagingDone[s] = driver.eventCreate(false);
        }
        backend.disableDecodeGraphs();
    }

    @Override
    public void allocateSlots(long bytes) {
        for (int s = 0; s < 2; s++) slots[s] = ctx.allocator().allocate(bytes);
    }

    @Override
    public Tensor view(int slot, long offset, DType dtype, int[] shape) {
        long size = Tensor.numel(shape) * dtype.byteSize();
        if (offset + size > slots[slot].bytes()) {
            throw new IllegalStateException("slot view [" + offset + ", " + (offset + size) + ") exceeds the slot of " + slots[slot].bytes() + " bytes");
        }
        DeviceBuffer view = ctx.allocator().view(slots[slot].pointer() + offset, Math.max(1, size));
        return new Tensor(new CudaStorage(view, ctx.device()), dtype, false, shape);
    }

    @Override
    public List<Tensor> leaves(QuantizedWeight w) {
        List<Tensor> out = new ArrayList<>();
        switch (w) {
            case CudaQuant4bit q -> {
                out.add(q.packed());
                out.add(q.absmax());
                if (q.nested()) {
                    out.add(q.nestedAbsmax());
                    out.add(q.nestedCode());
                }
                out.add(q.code16());
            }
            case CudaInt8 q -> {
                out.add(q.cb());
                out.add(q.scb());
            }
            default -> { return null; }
        }
        return out;
    }

    @Override
    public QuantizedWeight rebuild(QuantizedWeight w, UnaryOperator<Tensor> f) {
        return switch (w) {
            case CudaQuant4bit q -> {
                Tensor packed = f.apply(q.packed()), absmax = f.apply(q.absmax());
                Tensor nestedAbsmax = q.nested() ? f.apply(q.nestedAbsmax()) : null;
                Tensor nestedCode = q.nested() ? f.apply(q.nestedCode()) : null;
                Tensor code16 = f.apply(q.code16());
                yield new CudaQuant4bit(packed, absmax, nestedAbsmax, nestedCode, q.nestedCodeHost(), code16, q.outFeatures(),
                        q.inFeatures(), q.blocksize(), q.nestedBlocksize(), q.quantType(), q.stateDType(), q.computeDType(), q.offset(),
                        q.layout());  // the bytes are copied as they are
            }
            case CudaInt8 q -> {
                Tensor cb = f.apply(q.cb()), scb = f.apply(q.scb());
                yield new CudaInt8(cb, scb, q.threshold());
            }
            default -> throw new IllegalArgumentException("not a CUDA quantized weight: " + w);
        };
    }

    @Override
    public void download(Tensor t, MemorySegment dst) {
        ctx.synchronize();
        if (t.byteSize() > 0) driver.copyToHost(dst.asSlice(0, t.byteSize()), CudaContext.ptr(t));
    }

    @Override
    public MemorySegment allocateHost(long bytes) {
        return driver.memAllocHost(Math.max(1, bytes));
    }

    @Override
    public void freeHost(MemorySegment m) { driver.memFreeHost(m); }

    @Override
    public void upload(MemorySegment image, boolean pinned, int slot) {
        driver.streamWaitEvent(copyStream, freed[slot]);
        long dst = slots[slot].pointer(), n = image.byteSize();
        if (pinned) {
            if (n > 0) driver.memcpyHtoDAsync(dst, image.address(), n, copyStream);
        } else {
            for (long off = 0; off < n; off += STAGING_BYTES) {
                long len = Math.min(STAGING_BYTES, n - off);
                int k = nextStaging;
                nextStaging ^= 1;
                if (staging[k] == null) staging[k] = driver.memAllocHost(STAGING_BYTES);
                driver.eventSynchronize(stagingDone[k]); // its previous copy has read it
                MemorySegment.copy(image, off, staging[k], 0, len);
                driver.memcpyHtoDAsync(dst + off, staging[k].address(), len, copyStream);
                driver.eventRecord(stagingDone[k], copyStream);
            }
        }
        driver.eventRecord(loaded[slot], copyStream);
    }

    @Override
    public void awaitUpload(int slot) { driver.streamWaitEvent(ctx.stream(), loaded[slot]); }

    @Override
    public void released(int slot) { driver.eventRecord(freed[slot], ctx.stream()); }

    @Override
    public boolean hostIsDevice() { return false; }

    @Override
    public void close() {
        driver.streamSynchronize(copyStream);
        ctx.synchronize();
        for (int s = 0; s < 2; s++) {
            if (slots[s] != null) slots[s].close();
            if (staging[s] != null) driver.memFreeHost(staging[s]);
            driver.eventDestroy(loaded[s]);
            driver.eventDestroy(freed[s]);
            driver.eventDestroy(stagingDone[s]);
        }
        driver.streamDestroy(copyStream);
    }
}
