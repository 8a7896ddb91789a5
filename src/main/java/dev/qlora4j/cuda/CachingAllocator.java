package dev.qlora4j.cuda;

import java.util.ArrayDeque;
import java.util.HashMap;
import java.util.Map;

/**
 * Device memory with a cache of freed blocks, so that steady-state training and generation make no
 * cuMemAlloc/cuMemFree calls (each of those synchronizes the device and costs 10s of microseconds).
 *
 * <p>Size classes: requests are rounded up to a multiple of 512 B below 1 MiB and to a multiple of
 * 2 MiB from 1 MiB up ({@link #sizeClass(long)}); a freed block goes to the free list of its class
 * and is handed out again only for a request of the same class (no splitting or merging: simple,
 * and tensors of a model recur with the same shapes step after step).
 *
 * <p>Out of memory: when the device refuses a block, every cached free block is released and the
 * allocation retried once; if that fails too, the CudaException (out of memory, with its hint) is
 * thrown with the allocator's numbers added.
 *
 * <p>Stream ordering: the allocator assumes one stream (or fully synchronized streams). A block
 * closed after launching work that uses it may be handed out at once: that is safe because all later
 * work on the same stream runs after the earlier work. Using blocks across streams needs an event
 * wait (or a synchronize) before the block is closed.
 *
 * <p>Thread-safe (all state changes are synchronized).
 */
public final class CachingAllocator implements AutoCloseable {
    static final long SMALL_LIMIT = 1L << 20;
    static final long SMALL_ROUND = 512;
    static final long LARGE_ROUND = 2L << 20;

    private final DeviceMemory memory;
    private final Map<Long, ArrayDeque<Long>> free = new HashMap<>();   // size class -> cached block pointers
    private long allocatedBytes;
    private long peakAllocatedBytes;
    private long reservedBytes;
    private long allocCount;
    private long cacheHits;
    private long deviceAllocs;
    private long cacheFlushes;

    public CachingAllocator(DeviceMemory memory) {
        this.memory = memory;
    }

    /** An allocator over the driver's cuMemAlloc/cuMemFree (the current context's device). */
    public static CachingAllocator over(CudaDriver driver) {
        return new CachingAllocator(DeviceMemory.of(driver));
    }

    /** The block size a request of bytes gets (>= 512 B; 0 bytes also takes the smallest block). */
    public static long sizeClass(long bytes) {
        if (bytes < 0) throw new IllegalArgumentException("negative allocation size " + bytes);
        if (bytes < SMALL_LIMIT) return Math.max(SMALL_ROUND, roundUp(bytes, SMALL_ROUND));
        return roundUp(bytes, LARGE_ROUND);
    }

    private static long roundUp(long n, long multiple) {
        return Math.addExact(n, multiple - 1) / multiple * multiple;
    }

    /** A buffer of at least bytes; close it to return the block to the cache. */
    public synchronized DeviceBuffer allocate(long bytes) {
        long size = sizeClass(bytes);
        ArrayDeque<Long> list = free.get(size);
        long ptr;
        if (list != null && !list.isEmpty()) {
            ptr = list.pop();
            cacheHits++;
        } else {
            ptr = allocateFromDevice(bytes, size);
            reservedBytes += size;
            deviceAllocs++;
        }
        allocCount++;
        allocatedBytes += size;
        peakAllocatedBytes = Math.max(peakAllocatedBytes, allocatedBytes);
        return new DeviceBuffer(this, ptr, bytes, size);
    }

    private long allocateFromDevice(long bytes, long size) {
        try {
            return memory.allocate(size);
        } catch (CudaException first) {
            if (!first.isOutOfMemory()) throw first;
            emptyCache();
            try {
                return memory.allocate(size);
            } catch (CudaException second) {
                if (!second.isOutOfMemory()) throw second;
                throw new CudaException(second.function(), second.code(), second.errorName(),
                        OutOfMemoryAdvice.message(bytes, size, allocatedBytes, reservedBytes, peakAllocatedBytes, memory.info()), second);
            }
        }
    }

    /**
     * A buffer viewing bytes at pointer inside memory owned elsewhere (a slice of a larger block); closing it
     * returns nothing to the cache. Tensors over it are made non-owning.
     */
    public DeviceBuffer view(long pointer, long bytes) {
        return new DeviceBuffer(this, pointer, bytes, 0);
    }

    synchronized void release(long pointer, long blockBytes) {
        if (blockBytes == 0) return; // a view (see view()): not a block of this allocator
        allocatedBytes -= blockBytes;
        free.computeIfAbsent(blockBytes, k -> new ArrayDeque<>()).push(pointer);
    }

    /** Frees every cached (not handed-out) block on the device; live buffers are untouched. */
    public synchronized void emptyCache() {
        for (var e : free.entrySet()) {
            for (long p : e.getValue()) {
                memory.free(p);
                reservedBytes -= e.getKey();
            }
        }
        free.clear();
        cacheFlushes++;
    }

    public synchronized AllocatorStats stats() {
        return new AllocatorStats(allocatedBytes, peakAllocatedBytes, reservedBytes, allocCount, cacheHits,
                deviceAllocs, cacheFlushes);
    }

    /** Starts a new peak measurement from the current allocated bytes. */
    public synchronized void resetPeak() {
        peakAllocatedBytes = allocatedBytes;
    }

    /** Empties the cache. Buffers still open stay valid until the CUDA context goes away. */
    @Override
    public void close() {
        emptyCache();
    }
}
