package dev.qlora4j.cuda;

/**
 * A block of device memory from a {@link CachingAllocator}: {@link #pointer()} is valid for
 * {@link #bytes()} bytes (the block behind it may be larger: {@link #blockBytes()}).
 * {@link #close()} returns the block to the allocator's cache (it is not freed on the device);
 * closing twice is harmless.
 */
public final class DeviceBuffer implements AutoCloseable {
    private final CachingAllocator owner;
    private final long pointer;
    private final long bytes;
    private final long blockBytes;
    private boolean closed;

    DeviceBuffer(CachingAllocator owner, long pointer, long bytes, long blockBytes) {
        this.owner = owner;
        this.pointer = pointer;
        this.bytes = bytes;
        this.blockBytes = blockBytes;
    }

    /** The device address (CUdeviceptr). */
    public long pointer() {
        if (closed) throw new IllegalStateException("device buffer of " + bytes + " bytes was already closed");
        return pointer;
    }

    /** The size that was asked for. */
    public long bytes() { return bytes; }

    /** The size of the block behind it (the allocator's size class). */
    public long blockBytes() { return blockBytes; }

    public synchronized boolean isClosed() { return closed; }

    @Override
    public void close() {
        synchronized (this) {
            if (closed) return;
            closed = true;
        }
        owner.release(pointer, blockBytes);
    }

    @Override
    public String toString() {
        return "DeviceBuffer(0x" + Long.toHexString(pointer) + ", " + bytes + " B" + (closed ? ", closed" : "") + ")";
    }
}
