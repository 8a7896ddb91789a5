package dev.qlora4j.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.qlora4j.tensor.Half;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Without a GPU: the FFM binding against fake_libcuda.c (compiled here with cc; skipped without one).
 * Checks every downcall's signature (invokeExact fails on any type mismatch), the kernel argument
 * layout as the driver reads it, PTX loading from the classpath, capture/replay and error messages.
 */
class FakeLibcudaPlumbingTest {
    private static CudaDriver d;
    private static Path fakeLibrary;

    @BeforeAll
    static void compileFake(@TempDir Path dir) throws Exception {
        Path src = Path.of("src/test/java/dev/qlora4j/cuda/fake_libcuda.c");
        assumeTrue(Files.exists(src), "fake_libcuda.c not found from " + Path.of("").toAbsolutePath());
        Path lib = dir.resolve("libcuda.so.1");
        int rc;
        try {
            Process p = new ProcessBuilder("cc", "-O2", "-shared", "-fPIC", "-o", lib.toString(), src.toString())
                    .redirectErrorStream(true).start();
            p.getInputStream().transferTo(java.io.OutputStream.nullOutputStream());
            rc = p.waitFor(60, TimeUnit.SECONDS) ? p.exitValue() : -1;
        } catch (java.io.IOException e) {
            rc = -1;
        }
        assumeTrue(rc == 0, "no working C compiler (cc) here");
        fakeLibrary = lib;
        d = new FfmCudaDriver(lib.toString());
        d.usePrimaryContext(0);
    }

    @Test
    void propertiesAndMemoryCalls() {
        DeviceProperties p = d.deviceProperties(0);
        assertEquals(new DeviceProperties(0, "NVIDIA Fake", 9, 0, 132, 80L << 30, 1024, 227 * 1024, 50 << 20), p);
        assertEquals(13000, d.driverVersion());
        assertEquals(1, d.deviceCount());
        byte[] src = new byte[20 << 20];
        new Random().nextBytes(src);
        byte[] back = new byte[src.length];
        long a = d.memAlloc(src.length), b = d.memAlloc(src.length);
        long stream = d.streamCreate(true);
        MemorySegment pinned = d.memAllocHost(src.length);
        try {
            d.copyToDevice(a, MemorySegment.ofArray(src));
            d.memcpyDtoDAsync(b, a, src.length, stream);
            d.memcpyDtoHAsync(pinned.address(), b, src.length, stream);
            d.streamSynchronize(stream);
            d.copyToHost(MemorySegment.ofArray(back), b);
            assertArrayEquals(src, back);
            assertEquals(-1, MemorySegment.ofArray(src).mismatch(pinned));
        } finally {
            d.memFreeHost(pinned);
            d.streamDestroy(stream);
            d.memFree(a);
            d.memFree(b);
        }
        long e0 = d.eventCreate(true), e1 = d.eventCreate(true);
        d.eventRecord(e0, 0);
        d.eventRecord(e1, 0);
        d.eventSynchronize(e1);
        assertEquals(1.5f, d.eventElapsedMillis(e0, e1));
        d.eventDestroy(e0);
        d.eventDestroy(e1);
        CudaException oom = assertThrows(CudaException.class, () -> d.memAlloc(10L << 40));
        assertTrue(oom.isOutOfMemory() && oom.getMessage().contains(CudaErrors.OOM_HINT), oom.getMessage());
    }

    @Test
    void kernelsLaunchWithTheirArgumentsAndReplayFromAGraph() {
        PtxModules m = PtxModules.forCurrentContext(d);
        long toBf16 = m.function("cast", "cast_f32_to_bf16");
        long fill = m.function("cast", "fill_f32");
        int n = 10_001;
        float[] x = GpuSupport.interestingFloats(new Random(), n);
        long dx = d.memAlloc(4L * n), dy = d.memAlloc(2L * n), dz = d.memAlloc(4L * n);
        long stream = d.streamCreate(true);
        try {
            d.copyToDevice(dx, MemorySegment.ofArray(x));
            d.streamBeginCapture(stream, CaptureMode.GLOBAL);
            GpuSupport.launch1d(d, toBf16, n, stream, KernelArgs.of().ptr(dx).ptr(dy).i64(n));
            GpuSupport.launch1d(d, fill, n, stream, KernelArgs.of().ptr(dz).f32(-2.5f).i64(n));
            long graph = d.streamEndCapture(stream);
            long exec = d.graphInstantiate(graph);
            d.memsetD8(dy, (byte) 0xFF, 2L * n);
            d.memsetD32(dz, 0x7FC00000, n);
            d.graphLaunch(exec, stream);
            d.streamSynchronize(stream);
            short[] y = GpuSupport.downloadShorts(d, dy, n);
            for (int i = 0; i < n; i++) {
                if (!Float.isNaN(x[i])) assertEquals(Half.floatToBf16(x[i]), y[i], "element " + i);
            }
            for (float z : GpuSupport.downloadFloats(d, dz, n)) assertEquals(-2.5f, z);
            d.graphExecDestroy(exec);
            d.graphDestroy(graph);
        } finally {
            d.streamDestroy(stream);
            d.memFree(dx);
            d.memFree(dy);
            d.memFree(dz);
        }
    }

    @Test
    void programmaticLaunchesPassTheirConfigAndAttributeToCuLaunchKernelEx() throws Throwable {
        assertTrue(d.supportsProgrammaticLaunch(), "the fake has cuLaunchKernelEx");
        long fill = PtxModules.forCurrentContext(d).function("cast", "fill_f32");
        int n = 5_000;
        long dz = d.memAlloc(4L * n);
        long stream = d.streamCreate(true);
        try {
            int before = fakeProgrammaticLaunches();
            d.memsetD32(dz, 0x7FC00000, n);
            // the fake refuses any other layout of CUlaunchConfig / CUlaunchAttribute, and runs the kernel over
            // grid.x * block.x threads: a wrong grid or argument block would leave NaNs
            d.launchKernelProgrammatic(fill, Dim3.of(3), Dim3.of(256), 0, stream, KernelArgs.of().ptr(dz).f32(7.25f).i64(n));
            d.streamSynchronize(stream);
            for (float z : GpuSupport.downloadFloats(d, dz, n)) assertEquals(7.25f, z);
            assertEquals(before + 1, fakeProgrammaticLaunches());
        } finally {
            d.streamDestroy(stream);
            d.memFree(dz);
        }
    }

    private static int fakeProgrammaticLaunches() throws Throwable {
        var linker = java.lang.foreign.Linker.nativeLinker();
        var symbol = java.lang.foreign.SymbolLookup.libraryLookup(fakeLibrary, java.lang.foreign.Arena.global())
                .find("fake_programmatic_launches").orElseThrow();
        var handle = linker.downcallHandle(symbol,
                java.lang.foreign.FunctionDescriptor.of(java.lang.foreign.ValueLayout.JAVA_INT));
        return (int) handle.invokeExact();
    }

    /**
     * A compute capability 9.0 device whose driver refuses the committed cubin (as one older than the toolkit that
     * assembled it does; the fake refuses every binary image) still gets the module, from its sm90a PTX.
     */
    @Test
    void aCubinTheDriverRefusesFallsBackToThePtx() {
        assertEquals("kernels-ptx/cast.sm90a.cubin", PtxModules.cubinFor("cast", 9, 0, PtxModules::resourceExists));
        CudaException refused = assertThrows(CudaException.class,
                () -> d.moduleLoadData(PtxModules.readResource("kernels-ptx/cast.sm90a.cubin")));
        assertEquals("CUDA_ERROR_INVALID_PTX", refused.errorName());
        PtxModules m = new PtxModules(d, 9, 0, KernelCache.off());
        assertTrue(m.function("cast", "cast_f32_to_bf16") != 0);
        assertTrue(m.isHopperBuild("cast"), "the sm90a PTX, after the cubin");
    }

    @Test
    void moduleErrorsCarryTheJitLogAndTheKernelName() {
        CudaException jit = assertThrows(CudaException.class, () -> d.moduleLoadData(
                ".version 8.0\n.target sm_80\n.visible .entry broken()\n{\n this_is_not_an_instruction;\n}\n".getBytes()));
        assertTrue(jit.getMessage().contains("JIT log:\nptxas application ptx input"), jit.getMessage());
        assertEquals("CUDA_ERROR_INVALID_PTX", jit.errorName());
        CudaException missing = assertThrows(CudaException.class,
                () -> PtxModules.forCurrentContext(d).function("cast", "no_such_kernel"));
        assertEquals(500, missing.code());
        assertTrue(missing.getMessage().contains("'no_such_kernel'"), missing.getMessage());
    }

    @Test
    void compiledKernelsAreCachedOnDiskAndACorruptEntryIsCompiledAgain(@TempDir Path cacheDir) throws Exception {
        KernelCache cache = KernelCache.in(cacheDir);
        byte[] ptx = PtxModules.readResource(PtxModules.RESOURCE_DIR + "cast.ptx");
        String key = KernelCache.key(ptx, 9, 0, 13000);
        long first = new PtxModules(d, 9, 0, cache).load(ptx);
        assertTrue(first != 0);
        Path entry = cacheDir.resolve(key);
        assertTrue(Files.isRegularFile(entry), "the compiled module is kept: " + entry);
        assertArrayEquals(d.compilePtx(ptx), KernelCache.unwrap(Files.readAllBytes(entry)));
        PtxModules second = new PtxModules(d, 9, 0, cache);
        assertTrue(second.load(ptx) != 0);
        assertTrue(d.moduleGetFunction(second.load(ptx), "fill_f32") != 0);
        byte[] bytes = Files.readAllBytes(entry);
        bytes[bytes.length - 1] ^= 1;                       // a flipped bit in the cubin: the checksum catches it
        Files.write(entry, bytes);
        assertTrue(new PtxModules(d, 9, 0, cache).load(ptx) != 0);
        assertArrayEquals(d.compilePtx(ptx), KernelCache.unwrap(Files.readAllBytes(entry)), "rewritten after the check failed");
        CudaException jit = assertThrows(CudaException.class, () -> new PtxModules(d, 9, 0, cache).load(
                ".version 8.0\n.target sm_80\n.visible .entry broken()\n{\n this_is_not_an_instruction;\n}\n".getBytes()));
        assertTrue(jit.getMessage().contains("JIT log:\nptxas application ptx input"), jit.getMessage());
    }
}
