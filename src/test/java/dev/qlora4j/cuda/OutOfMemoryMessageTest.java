package dev.qlora4j.cuda;

import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** A failed allocation names the numbers (requested, in use, free, total) and the settings that would make the run fit. */
class OutOfMemoryMessageTest {
    static final long MIB = 1L << 20;

    @Test
    void outOfMemoryNamesTheNumbersAndTheSettingsThatFit() {
        FakeDeviceMemory fake = new FakeDeviceMemory(10 * MIB);
        DeviceMemory withInfo = new DeviceMemory() {
            @Override public long allocate(long bytes) { return fake.allocate(bytes); }

            @Override public void free(long pointer) { fake.free(pointer); }

            @Override public MemoryInfo info() { return new MemoryInfo(10 * MIB - fake.used(), 10 * MIB); }
        };
        CachingAllocator alloc = new CachingAllocator(withInfo);
        DeviceBuffer live = alloc.allocate(6 * MIB);
        CudaException e = assertThrows(CudaException.class, () -> alloc.allocate(5 * MIB + 3));
        String m = e.getMessage();
        assertTrue(e.isOutOfMemory());
        assertTrue(m.contains("requested " + (5 * MIB + 3) + " bytes"), m);
        assertTrue(m.contains("allocated " + 6 * MIB + " bytes in live tensors"), m);
        assertTrue(m.contains("device free " + 4 * MIB + " of total " + 10 * MIB + " bytes"), m);
        for (String flag : new String[] {"--per-device-train-batch-size", "--gradient-checkpointing", "--offload-activations",
                "--device-map", "--max-memory", "--max-seq-length"}) {
            assertTrue(m.contains(flag), "names " + flag + ": " + m);
        }
        live.close();
    }

    @Test
    void viewsOfABlockReturnNothingToTheCache() {
        FakeDeviceMemory mem = new FakeDeviceMemory(10 * MIB);
        CachingAllocator alloc = new CachingAllocator(mem);
        DeviceBuffer block = alloc.allocate(2 * MIB);
        long address = block.pointer();
        DeviceBuffer view = alloc.view(block.pointer() + 512, 1024);
        assertEquals(block.pointer() + 512, view.pointer());
        view.close();
        assertEquals(2 * MIB, alloc.stats().allocatedBytes(), "closing a view frees nothing");
        block.close();
        assertEquals(0, alloc.stats().allocatedBytes());
        DeviceBuffer again = alloc.allocate(2 * MIB);
        assertEquals(address, again.pointer(), "the block, not the view, went back to the cache");
    }
}
