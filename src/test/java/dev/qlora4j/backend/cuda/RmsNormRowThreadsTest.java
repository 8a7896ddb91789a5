package dev.qlora4j.backend.cuda;

import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertEquals;

/** The norm kernels' threads per row (RmsNormKernels.rowThreads), without a GPU. */
class RmsNormRowThreadsTest {
    @Test
    void fewRowsKeepEightWarpsManyRowsHoldFourPacksAThread() {
        assertEquals(256, RmsNormKernels.rowThreads(1, 4096), "a decode step");
        assertEquals(256, RmsNormKernels.rowThreads(255, 4096));
        assertEquals(128, RmsNormKernels.rowThreads(256, 4096), "4096 / 32: four 16-byte packs a thread");
        assertEquals(64, RmsNormKernels.rowThreads(2048, 2048));
        assertEquals(160, RmsNormKernels.rowThreads(2048, 5120), "whole warps");
        assertEquals(256, RmsNormKernels.rowThreads(2048, 8192));
        assertEquals(256, RmsNormKernels.rowThreads(2048, 16384), "at most 256");
        assertEquals(32, RmsNormKernels.rowThreads(2048, 64), "at least one warp");
    }
}
