package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.DeviceBuffer;
import dev.qlora4j.tensor.Device;
import dev.qlora4j.tensor.Storage;

/** Device memory behind a tensor: a block of the caching allocator, returned to it on release. */
public final class CudaStorage implements Storage {
    private final DeviceBuffer buffer;
    private final Device device;

    public CudaStorage(DeviceBuffer buffer, Device device) {
        this.buffer = buffer;
        this.device = device;
    }

    /** The device address of the first byte. */
    public long pointer() { return buffer.pointer(); }

    @Override public Device device() { return device; }

    @Override public long byteSize() { return buffer.bytes(); }

    @Override public void release() { buffer.close(); }
}
