package dev.qlora4j.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;

class CachingAllocatorTest {
    private static final long MIB = 1L << 20;

    @Test
    void sizeClassesRoundTo512BelowOneMibAndTo2MibAbove() {
        assertEquals(512, CachingAllocator.sizeClass(0));
        assertEquals(512, CachingAllocator.sizeClass(1));
        assertEquals(512, CachingAllocator.sizeClass(512));
        assertEquals(1024, CachingAllocator.sizeClass(513));
        assertEquals(MIB, CachingAllocator.sizeClass(MIB - 1));
        assertEquals(2 * MIB, CachingAllocator.sizeClass(MIB));
        assertEquals(2 * MIB, CachingAllocator.sizeClass(2 * MIB));
        assertEquals(4 * MIB, CachingAllocator.sizeClass(2 * MIB + 1));
        assertEquals(10L << 40, CachingAllocator.sizeClass(10L << 40));
        Random rnd = new Random();
        for (int i = 0; i < 1000; i++) {
            long n = rnd.nextLong(1, 1L << 36);
            long c = CachingAllocator.sizeClass(n);
            long unit = n < MIB ? 512 : 2 * MIB;
            assertTrue(c >= n && c % unit == 0 && c - n < unit, n + " -> " + c);
        }
        assertThrows(IllegalArgumentException.class, () -> CachingAllocator.sizeClass(-1));
    }

    @Test
    void closedBlocksAreReusedForTheSameSizeClassOnly() {
        FakeDeviceMemory mem = new FakeDeviceMemory(1L << 30);
        CachingAllocator alloc = new CachingAllocator(mem);
        DeviceBuffer a = alloc.allocate(1000);          // class 1024
        long pa = a.pointer();
        assertEquals(1000, a.bytes());
        assertEquals(1024, a.blockBytes());
        a.close();
        DeviceBuffer b = alloc.allocate(1020);          // class 1024: reused
        assertEquals(pa, b.pointer());
        DeviceBuffer c = alloc.allocate(2000);          // class 2048: new block
        assertNotEquals(pa, c.pointer());
        AllocatorStats s = alloc.stats();
        assertEquals(3, s.allocCount());
        assertEquals(1, s.cacheHits());
        assertEquals(2, s.deviceAllocs());
        assertEquals(2, mem.allocCalls);
        assertEquals(1024 + 2048, s.allocatedBytes());
        assertEquals(1024 + 2048, s.reservedBytes());
        b.close();
        c.close();
        c.close();                                       // idempotent
        assertThrows(IllegalStateException.class, c::pointer);
        s = alloc.stats();
        assertEquals(0, s.allocatedBytes());
        assertEquals(1024 + 2048, s.reservedBytes());
        assertEquals(1024 + 2048, s.cachedBytes());
        assertEquals(0, mem.freeCalls, "closing returns blocks to the cache, not to the device");
    }

    @Test
    void peakTracksTheHighWaterMarkAndResets() {
        CachingAllocator alloc = new CachingAllocator(new FakeDeviceMemory(1L << 30));
        List<DeviceBuffer> bufs = new ArrayList<>();
        for (int i = 0; i < 4; i++) bufs.add(alloc.allocate(3 * MIB));   // 4 MiB blocks
        assertEquals(16 * MIB, alloc.stats().peakAllocatedBytes());
        bufs.remove(0).close();
        bufs.remove(0).close();
        assertEquals(8 * MIB, alloc.stats().allocatedBytes());
        assertEquals(16 * MIB, alloc.stats().peakAllocatedBytes());
        alloc.resetPeak();
        assertEquals(8 * MIB, alloc.stats().peakAllocatedBytes());
        bufs.add(alloc.allocate(100));
        assertEquals(8 * MIB + 512, alloc.stats().peakAllocatedBytes());
    }

    @Test
    void emptyCacheFreesOnlyCachedBlocks() {
        FakeDeviceMemory mem = new FakeDeviceMemory(1L << 30);
        CachingAllocator alloc = new CachingAllocator(mem);
        DeviceBuffer keep = alloc.allocate(5 * MIB);
        alloc.allocate(MIB).close();
        alloc.allocate(100).close();
        alloc.emptyCache();
        assertEquals(2, mem.freeCalls);
        assertEquals(1, mem.liveBlocks());
        AllocatorStats s = alloc.stats();
        assertEquals(6 * MIB, s.reservedBytes());
        assertEquals(6 * MIB, s.allocatedBytes());
        assertEquals(1, s.cacheFlushes());
        keep.close();
        alloc.close();
        assertEquals(0, mem.liveBlocks());
        assertEquals(0, alloc.stats().reservedBytes());
    }

    @Test
    void outOfMemoryEmptiesTheCacheAndRetriesOnce() {
        FakeDeviceMemory mem = new FakeDeviceMemory(10 * MIB);
        CachingAllocator alloc = new CachingAllocator(mem);
        alloc.allocate(4 * MIB).close();
        alloc.allocate(2 * MIB).close();                // 6 MiB cached, 4 MiB free on the "device"
        DeviceBuffer big = alloc.allocate(8 * MIB);     // fails once, flushes the cache, succeeds
        assertEquals(8 * MIB, big.blockBytes());
        assertEquals(1, mem.failedAllocs);
        AllocatorStats s = alloc.stats();
        assertEquals(1, s.cacheFlushes());
        assertEquals(8 * MIB, s.reservedBytes());
        assertEquals(8 * MIB, mem.used());
    }

    @Test
    void outOfMemoryAfterTheRetryThrowsWithHintAndNumbers() {
        FakeDeviceMemory mem = new FakeDeviceMemory(10 * MIB);
        CachingAllocator alloc = new CachingAllocator(mem);
        DeviceBuffer live = alloc.allocate(6 * MIB);    // 6 MiB block, stays live
        CudaException e = assertThrows(CudaException.class, () -> alloc.allocate(6 * MIB));
        assertTrue(e.isOutOfMemory());
        assertEquals(2, mem.failedAllocs, "one attempt, one retry");
        assertTrue(e.getMessage().contains(CudaErrors.OOM_HINT), e.getMessage());
        assertTrue(e.getMessage().contains("allocated " + 6 * MIB), e.getMessage());
        assertEquals(6 * MIB, alloc.stats().allocatedBytes(), "a failed allocation changes no counters");
        assertEquals(1, alloc.stats().allocCount());
        live.close();
    }

    @Test
    void otherDeviceErrorsAreNotRetried() {
        DeviceMemory broken = new DeviceMemory() {
            @Override public long allocate(long bytes) {
                throw new CudaException("cuMemAlloc_v2", 201, "CUDA_ERROR_INVALID_CONTEXT", null);
            }

            @Override public void free(long pointer) { throw new AssertionError("nothing to free"); }
        };
        CachingAllocator alloc = new CachingAllocator(broken);
        CudaException e = assertThrows(CudaException.class, () -> alloc.allocate(10));
        assertEquals(201, e.code());
        assertEquals(0, alloc.stats().cacheFlushes());
    }
}
