package dev.qlora4j.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.cuda.GpuSupport.Dev;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Random;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/** The driver bindings on a real GPU; every test runs once through FFM and once through JCuda. */
@Tag("gpu")
class CudaDriverGpuTest {
    private static final long MIB = 1L << 20;

    @ParameterizedTest
    @ValueSource(strings = {"ffm", "jcuda"})
    void devicePropertiesAreSane(String binding) {
        CudaDriver d = GpuSupport.driver(binding);
        assertTrue(d.deviceCount() >= 1);
        assertTrue(d.driverVersion() >= 12000, "driver version " + d.driverVersion());
        DeviceProperties p = d.deviceProperties(0);
        assertFalse(p.name().isBlank());
        assertTrue(p.name().startsWith("NVIDIA") || p.name().contains("GeForce") || p.name().contains("Tesla"), p.name());
        assertTrue(p.computeCapability() >= 80, "the PTX targets compute_80; device is " + p);
        assertTrue(p.multiprocessorCount() > 0 && p.multiprocessorCount() < 1000, p.toString());
        assertTrue(p.totalMemoryBytes() > (1L << 30), p.toString());
        assertEquals(1024, p.maxThreadsPerBlock());
        assertTrue(p.maxSharedMemoryPerBlockOptin() >= 48 * 1024, p.toString());
        assertTrue(p.l2CacheBytes() > 0);
        MemoryInfo m = d.memGetInfo();
        assertTrue(m.freeBytes() > 0 && m.freeBytes() <= m.totalBytes(), m.toString());
        assertTrue(Math.abs(m.totalBytes() - p.totalMemoryBytes()) <= p.totalMemoryBytes() / 20, m + " vs " + p);
        assertEquals(0, d.contextGetDevice());
        assertTrue(d.contextGetCurrent() != 0);
        // Both bindings read the same device.
        assertEquals(FfmCudaDriver.instance().deviceProperties(0), p);
    }

    /** Stream priorities (the LoRA side stream is created at the greatest): a range with greatest <= least, usable. */
    @ParameterizedTest
    @ValueSource(strings = {"ffm", "jcuda"})
    void streamPriorityRangeIsUsable(String binding) {
        CudaDriver d = GpuSupport.driver(binding);
        int[] range = d.streamPriorityRange();
        assertTrue(range[1] <= range[0] && range[1] < 0, "priorities {least, greatest} = " + range[0] + ", " + range[1]);
        long high = d.streamCreate(false, range[1]), plain = d.streamCreate(true);
        d.streamSynchronize(high);
        d.streamSynchronize(plain);
        d.streamDestroy(high);
        d.streamDestroy(plain);
    }

    @ParameterizedTest
    @ValueSource(strings = {"ffm", "jcuda"})
    void hostToDeviceToDeviceToHostRoundTripKeepsEveryByte(String binding) {
        CudaDriver d = GpuSupport.driver(binding);
        Random rnd = new Random();
        int n = 3 * (int) MIB + 1 + rnd.nextInt(4096);       // odd size
        byte[] src = new byte[n];
        rnd.nextBytes(src);
        byte[] back = new byte[n];
        try (Dev a = Dev.alloc(d, n); Dev b = Dev.alloc(d, n)) {
            d.memsetD8(b.ptr(), (byte) 0x5A, n);               // poison the copy target
            d.copyToDevice(a.ptr(), MemorySegment.ofArray(src));
            d.memcpyDtoD(b.ptr(), a.ptr(), n);
            d.copyToHost(MemorySegment.ofArray(back), b.ptr());
        }
        assertArrayEquals(src, back);
    }

    @ParameterizedTest
    @ValueSource(strings = {"ffm", "jcuda"})
    void pinnedAsyncCopiesOnAStreamRoundTrip(String binding) {
        CudaDriver d = GpuSupport.driver(binding);
        Random rnd = new Random();
        long n = 20 * MIB + 12;                                // more than one staging chunk for the heap path below
        MemorySegment in = d.memAllocHost(n);
        MemorySegment out = d.memAllocHost(n);
        long stream = d.streamCreate(true);
        try (Dev a = Dev.alloc(d, n); Dev b = Dev.alloc(d, n)) {
            byte[] random = new byte[(int) n];
            rnd.nextBytes(random);
            MemorySegment.copy(MemorySegment.ofArray(random), 0, in, 0, n);
            out.fill((byte) 0x33);
            d.memsetD32Async(b.ptr(), 0xDEADBEEF, n / 4, stream);
            d.memcpyHtoDAsync(a.ptr(), in.address(), n, stream);
            d.memcpyDtoDAsync(b.ptr(), a.ptr(), n, stream);
            d.memcpyDtoHAsync(out.address(), b.ptr(), n, stream);
            d.streamSynchronize(stream);
            assertEquals(-1L, in.mismatch(out), "first differing byte");
            // Heap destination through the chunked staging path (n > 16 MiB staging chunk).
            byte[] heap = new byte[(int) n];
            d.copyToHost(MemorySegment.ofArray(heap), a.ptr());
            assertEquals(-1L, in.mismatch(MemorySegment.ofArray(heap)));
            // memset: D8 then D32 over part of it.
            d.memsetD8Async(a.ptr(), (byte) 0xAB, n, stream);
            d.memsetD32Async(a.ptr(), 0x01020304, 1000, stream);
            d.memcpyDtoHAsync(out.address(), a.ptr(), n, stream);
            d.streamSynchronize(stream);
            assertEquals(0x01020304, out.get(ValueLayout.JAVA_INT, 999 * 4));
            assertEquals((byte) 0xAB, out.get(ValueLayout.JAVA_BYTE, 4000));
            assertEquals((byte) 0xAB, out.get(ValueLayout.JAVA_BYTE, n - 1));
        } finally {
            d.streamDestroy(stream);
            d.memFreeHost(in);
            d.memFreeHost(out);
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"ffm", "jcuda"})
    void eventsTimeRealWork(String binding) {
        CudaDriver d = GpuSupport.driver(binding);
        long fill = PtxModules.forCurrentContext(d).function("cast", "fill_f32");
        long stream = d.streamCreate(true);
        long start = d.eventCreate(true);
        long end = d.eventCreate(true);
        long n = 64 * MIB;                                     // 256 MiB of float32
        float value = new Random().nextFloat();
        try (Dev y = Dev.alloc(d, 4 * n)) {
            d.eventRecord(start, stream);
            for (int rep = 0; rep < 10; rep++) {
                GpuSupport.launch1d(d, fill, n, stream, KernelArgs.of().ptr(y.ptr()).f32(value).i64(n));
            }
            d.eventRecord(end, stream);
            d.eventSynchronize(end);
            float ms = d.eventElapsedMillis(start, end);
            // 2.5 GiB written: at least ~0.3 ms even at 8 TB/s, and far below 5 s on any supported GPU.
            assertTrue(ms > 0.1f && ms < 5000f, "elapsed " + ms + " ms");
            float[] tail = GpuSupport.downloadFloats(d, y.ptr() + 4 * (n - 1024), 1024);
            for (float f : tail) assertEquals(Float.floatToRawIntBits(value), Float.floatToRawIntBits(f));
        } finally {
            d.eventDestroy(start);
            d.eventDestroy(end);
            d.streamDestroy(stream);
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"ffm", "jcuda"})
    void absurdAllocationIsAnOutOfMemoryExceptionWithTheHint(String binding) {
        CudaDriver d = GpuSupport.driver(binding);
        long tenTb = 10L << 40;
        CudaException e = assertThrows(CudaException.class, () -> d.memAlloc(tenTb));
        assertTrue(e.isOutOfMemory(), e.getMessage());
        assertEquals(CudaErrors.CUDA_ERROR_OUT_OF_MEMORY, e.code());
        assertTrue(e.getMessage().contains(CudaErrors.OOM_HINT), e.getMessage());
        assertTrue(e.getMessage().startsWith("cuMemAlloc_v2 failed"), e.getMessage());
        // Through the caching allocator: one flush, one retry, then the same exception kind.
        try (CachingAllocator alloc = CachingAllocator.over(d)) {
            CudaException e2 = assertThrows(CudaException.class, () -> alloc.allocate(tenTb));
            assertTrue(e2.isOutOfMemory() && e2.getMessage().contains(CudaErrors.OOM_HINT), e2.getMessage());
            assertEquals(1, alloc.stats().cacheFlushes());
        }
        // The context is still usable after an OOM.
        try (Dev ok = Dev.alloc(d, MIB)) {
            d.memsetD8(ok.ptr(), (byte) 1, MIB);
        }
    }
}
