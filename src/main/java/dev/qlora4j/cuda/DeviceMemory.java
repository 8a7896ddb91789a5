package dev.qlora4j.cuda;

/**
 * Raw device memory: what {@link CachingAllocator} takes blocks from. The real one is the driver's
 * cuMemAlloc/cuMemFree ({@link #of(CudaDriver)}); tests pass a fake to check the caching logic
 * without a GPU.
 */
public interface DeviceMemory {
    /** A new block of exactly bytes; throws CudaException (isOutOfMemory) when the device is full. */
    long allocate(long bytes);

    void free(long pointer);

    /** The device's free and total bytes, for out-of-memory messages; null when unknown. */
    default MemoryInfo info() { return null; }

    static DeviceMemory of(CudaDriver driver) {
        return new DeviceMemory() {
            @Override public long allocate(long bytes) { return driver.memAlloc(bytes); }

            @Override public void free(long pointer) { driver.memFree(pointer); }

            @Override
            public MemoryInfo info() {
                try {
                    return driver.memGetInfo();
                } catch (RuntimeException e) {
                    return null; // only for a message: never hide the real error behind this one
                }
            }
        };
    }
}
