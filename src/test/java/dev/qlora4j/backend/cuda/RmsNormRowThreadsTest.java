package dev.qlora4j.backend.cuda;

import dev.qlora4j.tensor.DType;
import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertEquals;

/** The norm kernels' threads per row (RmsNormKernels.rowThreads), without a GPU. */
class RmsNormRowThreadsTest {
    @Test
    void fewRowsKeepEightWarpsManyRowsHoldFourPacksAThread() {
        assertEquals(256, RmsNormKernels.rowThreads(1, 4096, DType.BF16), "a decode step");
        assertEquals(256, RmsNormKernels.rowThreads(255, 4096, DType.BF16));
        assertEquals(128, RmsNormKernels.rowThreads(256, 4096, DType.BF16), "512 packs: four a thread");
        assertEquals(256, RmsNormKernels.rowThreads(256, 4096, DType.F32), "1,024 packs of four floats");
        assertEquals(64, RmsNormKernels.rowThreads(2048, 2048, DType.BF16));
        assertEquals(160, RmsNormKernels.rowThreads(2048, 5120, DType.BF16), "whole warps");
        assertEquals(160, RmsNormKernels.rowThreads(2048, 4100, DType.BF16), "a partial pack counts");
        assertEquals(256, RmsNormKernels.rowThreads(2048, 8192, DType.BF16));
        assertEquals(256, RmsNormKernels.rowThreads(2048, 16384, DType.BF16), "at most 256");
        assertEquals(32, RmsNormKernels.rowThreads(2048, 64, DType.BF16), "at least one warp");
    }
}
