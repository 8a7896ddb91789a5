package dev.qlora4j.backend.cuda;

import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;

/**
 * CudaTrainAttentionTcGpuTest's cases on the mma.sync kernels (attn_tc_*) on every GPU:
 * -Dqlora4j.attention.wgmma=false for every test.
 */
@Tag("gpu")
class CudaTrainAttentionMmaSyncGpuTest extends CudaTrainAttentionTcGpuTest {
    private String savedWgmma;

    @BeforeEach
    void turnWgmmaOff() {
        savedWgmma = System.getProperty(TrainAttentionKernels.WGMMA_PROPERTY);
        System.setProperty(TrainAttentionKernels.WGMMA_PROPERTY, "false");
    }

    @AfterEach
    void restoreWgmma() {
        if (savedWgmma == null) System.clearProperty(TrainAttentionKernels.WGMMA_PROPERTY);
        else System.setProperty(TrainAttentionKernels.WGMMA_PROPERTY, savedWgmma);
    }
}
