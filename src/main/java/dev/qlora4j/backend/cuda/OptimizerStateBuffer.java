package dev.qlora4j.backend.cuda;

import dev.qlora4j.optim.StateStorage;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.lang.foreign.MemorySegment;

/**
 * One zero-initialized optimizer state array for the CUDA optimizers, in GPU memory ({@link StateStorage#DEVICE})
 * or in page-locked host memory ({@link StateStorage#PAGED}).
 *
 * <p>Paged state is never copied to the GPU: with unified virtual addressing (every 64-bit CUDA platform) memory
 * from cuMemAllocHost is mapped into the device's address space at the same address, so the optimizer kernels
 * read and write it directly over PCIe / C2C. That is simpler than staging (no device buffer, no copy-in /
 * copy-out pair per step), keeps zero bytes of state on the GPU, and costs the same bus traffic a bulk copy would
 * (each state byte is read once and written once per step). bitsandbytes' paged optimizers use managed memory
 * that the driver migrates under memory pressure; this keeps the state on the host always.
 */
final class OptimizerStateBuffer implements AutoCloseable {
    private final CudaContext ctx;
    private final long bytes;
    private final Tensor device;          // DEVICE: U8 [bytes] from the caching allocator, else null
    private final MemorySegment pinned;   // PAGED: cuMemAllocHost memory, else null

    private OptimizerStateBuffer(CudaContext ctx, long bytes, Tensor device, MemorySegment pinned) {
        this.ctx = ctx;
        this.bytes = bytes;
        this.device = device;
        this.pinned = pinned;
    }

    /** A zero-filled buffer of bytes (at least 1 byte is allocated). */
    static OptimizerStateBuffer zeros(CudaContext ctx, long bytes, StateStorage where) {
        long size = Math.max(1, bytes);
        if (where == StateStorage.PAGED) {
            MemorySegment seg = ctx.driver().memAllocHost(size);
            seg.fill((byte) 0);   // fresh memory: no kernel can be using it yet
            return new OptimizerStateBuffer(ctx, bytes, null, seg);
        }
        if (size > Integer.MAX_VALUE) {
            throw new IllegalArgumentException("optimizer state of " + bytes + " bytes does not fit one tensor; "
                    + "split the parameter");
        }
        Tensor t = ctx.empty(DType.U8, (int) size);
        ctx.driver().memsetD8Async(CudaContext.ptr(t), (byte) 0, size, ctx.stream());
        return new OptimizerStateBuffer(ctx, bytes, t, null);
    }

    /** The address kernels use (a device pointer, or the pinned host address, valid on the device under UVA). */
    long pointer() { return device != null ? CudaContext.ptr(device) : pinned.address(); }

    long bytes() { return bytes; }

    boolean paged() { return pinned != null; }

    /** Copies the whole buffer into dst (waits for the stream first: kernels may still be writing it). */
    void copyTo(MemorySegment dst) {
        if (dst.byteSize() != bytes) throw new IllegalArgumentException("copyTo: " + dst.byteSize() + " bytes for a buffer of " + bytes);
        if (bytes == 0) return;
        ctx.synchronize();
        if (pinned != null) {
            MemorySegment.copy(pinned, 0, dst, 0, bytes);
        } else {
            ctx.driver().copyToHost(dst, pointer());
        }
    }

    /** Replaces the contents with src (waits for the stream first: kernels may still be reading it). */
    void copyFrom(MemorySegment src) {
        if (src.byteSize() != bytes) throw new IllegalArgumentException("copyFrom: " + src.byteSize() + " bytes for a buffer of " + bytes);
        if (bytes == 0) return;
        ctx.synchronize();
        if (pinned != null) {
            MemorySegment.copy(src, 0, pinned, 0, bytes);
        } else {
            ctx.driver().copyToDevice(pointer(), src);
        }
    }

    float[] floats() {
        float[] out = new float[Math.toIntExact(bytes / 4)];
        copyTo(MemorySegment.ofArray(out));
        return out;
    }

    byte[] byteArray() {
        byte[] out = new byte[Math.toIntExact(bytes)];
        copyTo(MemorySegment.ofArray(out));
        return out;
    }

    @Override
    public void close() {
        if (device != null) {
            device.close();   // stream-ordered reuse by the caching allocator
        } else {
            ctx.synchronize();   // a queued kernel may still touch the host memory
            ctx.driver().memFreeHost(pinned);
        }
    }
}
