package dev.qlora4j.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.MemorySegment;
import java.util.Random;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

/** The caching allocator over real device memory. */
@Tag("gpu")
class DeviceAllocatorGpuTest {
    private static final long MIB = 1L << 20;

    @Test
    void statsFollowAllocationsAndBlocksAreReused() {
        CudaDriver d = GpuSupport.driver("ffm");
        MemoryInfo before = d.memGetInfo();
        try (CachingAllocator alloc = CachingAllocator.over(d)) {
            byte[] data = new byte[(int) (3 * MIB)];
            new Random().nextBytes(data);
            DeviceBuffer a = alloc.allocate(3 * MIB);                 // 4 MiB block
            DeviceBuffer small = alloc.allocate(1000);                // 1024 B block
            d.copyToDevice(a.pointer(), MemorySegment.ofArray(data));
            AllocatorStats s = alloc.stats();
            assertEquals(4 * MIB + 1024, s.allocatedBytes());
            assertEquals(4 * MIB + 1024, s.reservedBytes());
            assertEquals(2, s.deviceAllocs());
            assertTrue(before.freeBytes() - d.memGetInfo().freeBytes() >= 4 * MIB, "device memory was taken");
            long pa = a.pointer();
            a.close();
            assertEquals(1024, alloc.stats().allocatedBytes());
            assertEquals(4 * MIB + 1024, alloc.stats().reservedBytes());
            DeviceBuffer b = alloc.allocate(4 * MIB);                 // same class: the cached block
            assertEquals(pa, b.pointer());
            byte[] back = new byte[data.length];
            d.copyToHost(MemorySegment.ofArray(back), b.pointer());
            assertArrayEquals(data, back, "a reused block keeps its bytes (no clearing)");
            s = alloc.stats();
            assertEquals(3, s.allocCount());
            assertEquals(1, s.cacheHits());
            assertEquals(2, s.deviceAllocs());
            assertEquals(4 * MIB + 1024, s.peakAllocatedBytes());
            b.close();
            small.close();
            alloc.emptyCache();
            assertEquals(0, alloc.stats().reservedBytes());
        }
    }
}
