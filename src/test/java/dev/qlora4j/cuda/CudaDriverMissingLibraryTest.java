package dev.qlora4j.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeFalse;

import java.util.ArrayList;
import org.junit.jupiter.api.Test;

/** Runs without a GPU: a missing driver library is reported clearly and never crashes the JVM. */
class CudaDriverMissingLibraryTest {
    private static final String MISSING = "libcuda-qlora4j-test-missing.so.1";

    @Test
    void missingLibraryGivesTheNoGpuHint() {
        FfmCudaDriver d = new FfmCudaDriver(MISSING);
        CudaException e = assertThrows(CudaException.class, d::init);
        assertEquals(CudaException.LIBRARY_NOT_FOUND, e.code());
        assertEquals("LIBRARY_NOT_FOUND", e.errorName());
        assertTrue(e.getMessage().contains(MISSING), e.getMessage());
        assertTrue(e.getMessage().contains("no NVIDIA GPU/driver found: use --device cpu"), e.getMessage());
        // Remembered: the second call fails the same way without retrying dlopen.
        CudaException again = assertThrows(CudaException.class, () -> d.memAlloc(1024));
        assertSame(e, again);
    }

    @Test
    void missingLibraryMakesTheDriverUnavailable() {
        FfmCudaDriver d = new FfmCudaDriver(MISSING);
        assertFalse(CudaDrivers.isAvailable(d));
        String reason = CudaDrivers.unavailableReason(d);
        assertNotNull(reason);
        assertTrue(reason.contains("use --device cpu"), reason);
    }

    @Test
    void errorNamesFallBackWhenTheLibraryIsMissing() {
        FfmCudaDriver d = new FfmCudaDriver(MISSING);
        assertEquals("CUDA_ERROR_OUT_OF_MEMORY", d.errorName(2));
        assertEquals("CUDA_ERROR_NO_DEVICE", d.errorName(100));
        assertEquals("CUresult 12345", d.errorName(12345));
    }

    @Test
    void defaultDriverOnAMachineWithoutGpuSaysWhy() {
        assumeFalse(NativeLibrary.tryOpen("libcuda.so.1", new ArrayList<>()).isPresent(),
                "libcuda.so.1 is present here; this checks the no-driver path");
        assertFalse(CudaDriver.isAvailable());
        String reason = CudaDriver.unavailableReason();
        assertNotNull(reason);
        assertTrue(reason.contains("libcuda.so.1") && reason.contains("use --device cpu"), reason);
    }

    @Test
    void jcudaWithoutDriverGivesAClearMessage() {
        assumeFalse(NativeLibrary.tryOpen("libcuda.so.1", new ArrayList<>()).isPresent(),
                "libcuda.so.1 is present here; this checks the no-driver path");
        JCudaDriver d = JCudaDriver.instance();
        CudaException e = assertThrows(CudaException.class, d::init);
        assertTrue(e.getMessage().contains("JCuda") && e.getMessage().contains("use --device cpu"), e.getMessage());
        assertFalse(CudaDrivers.isAvailable(d));
    }

    @Test
    void bindingIsChosenByName() {
        assertInstanceOf(FfmCudaDriver.class, CudaDrivers.byName("ffm"));
        assertInstanceOf(JCudaDriver.class, CudaDrivers.byName("JCuda"));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> CudaDrivers.byName("opencl"));
        assertTrue(e.getMessage().contains("qlora4j.cuda.binding") && e.getMessage().contains("ffm or jcuda"), e.getMessage());
    }

    @Test
    void outOfMemoryMessageCarriesTheHint() {
        CudaException e = new CudaException("cuMemAlloc_v2", 2, "CUDA_ERROR_OUT_OF_MEMORY", "requested 10 bytes");
        assertTrue(e.isOutOfMemory());
        assertEquals("cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY (2): requested 10 bytes -> " + CudaErrors.OOM_HINT,
                e.getMessage());
        assertTrue(new CudaException("cublasGemmEx", 3, "CUBLAS_STATUS_ALLOC_FAILED", null).isOutOfMemory());
        assertFalse(new CudaException("cuLaunchKernel", 1, "CUDA_ERROR_INVALID_VALUE", null).isOutOfMemory());
    }
}
