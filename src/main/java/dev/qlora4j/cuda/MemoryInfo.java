package dev.qlora4j.cuda;

/** cuMemGetInfo: free and total device memory of the current context's device, in bytes. */
public record MemoryInfo(long freeBytes, long totalBytes) {
    public long usedBytes() { return totalBytes - freeBytes; }
}
