package dev.qlora4j.tensor;

/**
 * The bytes behind a tensor. {@link HostStorage} is host memory (heap arrays, native
 * allocations or memory-mapped files); backends add their own kinds (device memory).
 */
public interface Storage {
    Device device();

    long byteSize();

    /** Returns the memory to its owner (allocator, arena). Idempotent. Views never release. */
    void release();
}
