package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.DeviceBuffer;
import dev.qlora4j.tensor.Device;
import dev.qlora4j.tensor.Storage;

/**
 * Memory behind a tensor that kernels of one device read and write: a block of the caching allocator, returned to it on
 * release, or (with an onRelease action) a view of memory owned elsewhere, such as page-locked host memory the device
 * reads over the bus (CudaContext#hostMappedCopy), which the action frees.
 */
public final class CudaStorage implements Storage {
    private final DeviceBuffer buffer;
    private final Device device;
    private Runnable onRelease;   // null: nothing beyond closing the buffer

    public CudaStorage(DeviceBuffer buffer, Device device) {
        this(buffer, device, null);
    }

    /** buffer (typically a view), and what frees the memory behind it, run once on the first release. */
    public CudaStorage(DeviceBuffer buffer, Device device, Runnable onRelease) {
        this.buffer = buffer;
        this.device = device;
        this.onRelease = onRelease;
    }

    /** The device address of the first byte. */
    public long pointer() { return buffer.pointer(); }

    @Override public Device device() { return device; }

    @Override public long byteSize() { return buffer.bytes(); }

    @Override
    public synchronized void release() {
        buffer.close();
        Runnable r = onRelease;
        onRelease = null;
        if (r != null) r.run();
    }
}
