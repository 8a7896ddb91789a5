package dev.qlora4j.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

@Tag("gpu")
class PtxModulesGpuTest {

    @ParameterizedTest
    @ValueSource(strings = {"ffm", "jcuda"})
    void modulesAndFunctionsAreLoadedOncePerContext(String binding) {
        CudaDriver d = GpuSupport.driver(binding);
        PtxModules m = PtxModules.forCurrentContext(d);
        assertSame(m, PtxModules.forCurrentContext(d));
        long f = m.function("cast", "cast_f32_to_bf16");
        assertTrue(f != 0);
        assertEquals(f, m.function("cast", "cast_f32_to_bf16"));
        assertEquals(m.module("cast"), m.module("cast"));
    }

    @ParameterizedTest
    @ValueSource(strings = {"ffm", "jcuda"})
    void unknownKernelSaysWhatToCheck(String binding) {
        CudaDriver d = GpuSupport.driver(binding);
        CudaException e = assertThrows(CudaException.class,
                () -> PtxModules.forCurrentContext(d).function("cast", "cast_f64_to_f8"));
        assertEquals(500, e.code());
        assertTrue(e.getMessage().contains("cast_f64_to_f8") && e.getMessage().contains("extern \"C\""), e.getMessage());
    }

    @ParameterizedTest
    @ValueSource(strings = {"ffm", "jcuda"})
    void brokenPtxFailsWithTheJitLog(String binding) {
        CudaDriver d = GpuSupport.driver(binding);
        String ptx = ".version 8.0\n.target sm_80\n.address_size 64\n"
                + ".visible .entry broken(.param .u64 p)\n{\n  this_is_not_an_instruction %r1;\n  ret;\n}\n";
        CudaException e = assertThrows(CudaException.class, () -> d.moduleLoadData(ptx.getBytes(StandardCharsets.US_ASCII)));
        assertTrue(e.getMessage().contains("cuModuleLoadDataEx"), e.getMessage());
        assertTrue(e.getMessage().contains("JIT log:"), "the driver's JIT error log is in the message: " + e.getMessage());
    }

    /** The cubin cache: the first load compiles and keeps the cubin, the next loads it; its kernels compute the same. */
    @ParameterizedTest
    @ValueSource(strings = {"ffm", "jcuda"})
    void cachedCubinsLoadAndRunLikeThePtx(String binding, @org.junit.jupiter.api.io.TempDir java.nio.file.Path dir)
            throws Exception {
        CudaDriver d = GpuSupport.driver(binding);
        DeviceProperties p = d.deviceProperties(0);
        KernelCache cache = KernelCache.in(dir);
        byte[] ptx = PtxModules.readResource(PtxModules.RESOURCE_DIR + "cast.ptx");
        long compiled = new PtxModules(d, p.computeCapabilityMajor(), p.computeCapabilityMinor(), cache).load(ptx);
        java.nio.file.Path entry = dir.resolve(KernelCache.key(ptx, p.computeCapabilityMajor(), p.computeCapabilityMinor(),
                d.driverVersion()));
        assertTrue(java.nio.file.Files.size(entry) > KernelCache.HEADER_BYTES, "the cubin is kept: " + entry);
        long cached = new PtxModules(d, p.computeCapabilityMajor(), p.computeCapabilityMinor(), cache).load(ptx);
        long viaJit = d.moduleLoadData(ptx);
        int n = 4097;
        float[] x = GpuSupport.interestingFloats(new java.util.Random(3), n);
        try (GpuSupport.Dev dx = GpuSupport.upload(d, x); GpuSupport.Dev a = GpuSupport.Dev.alloc(d, 2L * n);
             GpuSupport.Dev b = GpuSupport.Dev.alloc(d, 2L * n)) {
            d.memsetD8(a.ptr(), (byte) 0x5A, 2L * n);
            d.memsetD8(b.ptr(), (byte) 0xA5, 2L * n);
            GpuSupport.launch1d(d, d.moduleGetFunction(cached, "cast_f32_to_bf16"), n, 0, KernelArgs.of().ptr(dx.ptr()).ptr(a.ptr()).i64(n));
            GpuSupport.launch1d(d, d.moduleGetFunction(viaJit, "cast_f32_to_bf16"), n, 0, KernelArgs.of().ptr(dx.ptr()).ptr(b.ptr()).i64(n));
            d.contextSynchronize();
            org.junit.jupiter.api.Assertions.assertArrayEquals(GpuSupport.downloadShorts(d, b.ptr(), n),
                    GpuSupport.downloadShorts(d, a.ptr(), n));
        } finally {
            d.moduleUnload(compiled);
            d.moduleUnload(cached);
            d.moduleUnload(viaJit);
        }
    }
}
