package dev.qlora4j.cuda;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * Synchronous host<->device copies for any host segment. Native segments go straight to the driver;
 * heap segments (Java arrays) cannot be handed to native code, so they travel through a native
 * staging buffer of at most {@link #CHUNK_BYTES}, one chunk at a time.
 */
final class HostStaging {
    private HostStaging() {}

    static final long CHUNK_BYTES = 16L << 20;

    static void toDevice(CudaDriver d, long dstDevice, MemorySegment src) {
        long n = src.byteSize();
        if (n == 0) return;
        if (src.isNative()) {
            d.memcpyHtoD(dstDevice, src.address(), n);
            return;
        }
        // Arena: confined, for this call's staging buffer only.
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment stage = arena.allocate(Math.min(n, CHUNK_BYTES), 64);
            for (long off = 0; off < n; off += stage.byteSize()) {
                long len = Math.min(stage.byteSize(), n - off);
                MemorySegment.copy(src, off, stage, 0, len);
                d.memcpyHtoD(dstDevice + off, stage.address(), len);
            }
        }
    }

    static void toHost(CudaDriver d, MemorySegment dst, long srcDevice) {
        if (dst.isReadOnly()) throw new IllegalArgumentException("destination segment is read-only");
        long n = dst.byteSize();
        if (n == 0) return;
        if (dst.isNative()) {
            d.memcpyDtoH(dst.address(), srcDevice, n);
            return;
        }
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment stage = arena.allocate(Math.min(n, CHUNK_BYTES), 64);
            for (long off = 0; off < n; off += stage.byteSize()) {
                long len = Math.min(stage.byteSize(), n - off);
                d.memcpyDtoH(stage.address(), srcDevice + off, len);
                MemorySegment.copy(stage, 0, dst, off, len);
            }
        }
    }
}
