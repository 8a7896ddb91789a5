package dev.qlora4j.tensor;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * Host memory: a heap segment (GC-owned), a native segment with an owning arena, or a
 * zero-copy view into a memory-mapped file (owned by the file's arena, never released here).
 */
public final class HostStorage implements Storage {
    private final MemorySegment segment;
    private Arena owner;

    public HostStorage(MemorySegment segment, Arena owner) {
        this.segment = segment;
        this.owner = owner;
    }

    public MemorySegment segment() { return segment; }

    @Override public Device device() { return Device.CPU; }

    @Override public long byteSize() { return segment.byteSize(); }

    @Override
    public synchronized void release() {
        if (owner != null) {
            owner.close();
            owner = null;
        }
    }
}
