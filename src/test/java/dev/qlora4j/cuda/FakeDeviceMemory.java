package dev.qlora4j.cuda;

import java.util.HashMap;
import java.util.Map;

/** Device memory of a fixed capacity, in plain Java: hands out increasing fake addresses, checks frees. */
final class FakeDeviceMemory implements DeviceMemory {
    private final long capacity;
    private final Map<Long, Long> live = new HashMap<>();
    private long next = 0x7000_0000_0000L;
    private long used;
    int allocCalls;
    int freeCalls;
    int failedAllocs;

    FakeDeviceMemory(long capacity) { this.capacity = capacity; }

    @Override
    public long allocate(long bytes) {
        allocCalls++;
        if (used + bytes > capacity) {
            failedAllocs++;
            throw new CudaException("cuMemAlloc_v2", 2, "CUDA_ERROR_OUT_OF_MEMORY", "requested " + bytes + " bytes");
        }
        long p = next;
        next += bytes + 4096;
        used += bytes;
        live.put(p, bytes);
        return p;
    }

    @Override
    public void free(long pointer) {
        Long size = live.remove(pointer);
        if (size == null) throw new IllegalStateException("double or foreign free of 0x" + Long.toHexString(pointer));
        used -= size;
        freeCalls++;
    }

    long used() { return used; }

    int liveBlocks() { return live.size(); }
}
