package dev.qlora4j.cuda;

/**
 * A snapshot of a {@link CachingAllocator}.
 *
 * @param allocatedBytes      bytes in blocks handed out and not yet closed (block sizes, i.e. rounded up)
 * @param peakAllocatedBytes  the largest allocatedBytes since creation or {@link CachingAllocator#resetPeak()}
 * @param reservedBytes       bytes taken from the device: handed-out blocks plus cached free blocks
 * @param allocCount          allocate() calls that returned a block
 * @param cacheHits           of those, how many reused a cached block (no cuMemAlloc)
 * @param deviceAllocs        blocks obtained from the device (cuMemAlloc calls that succeeded)
 * @param cacheFlushes        times the cache was emptied (explicitly or to retry after an out-of-memory)
 */
public record AllocatorStats(long allocatedBytes, long peakAllocatedBytes, long reservedBytes, long allocCount,
                             long cacheHits, long deviceAllocs, long cacheFlushes) {

    /** Bytes cached: reserved but not handed out. */
    public long cachedBytes() { return reservedBytes - allocatedBytes; }
}
