package dev.qlora4j.backend.cuda;

import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;

/**
 * CudaTrainAttentionTcGpuTest's cases on the wgmma kernels (attn_wg_*) on Hopper (elsewhere the mma.sync ones run):
 * -Dqlora4j.attention.wgmma=true for every test.
 */
@Tag("gpu")
class CudaTrainAttentionWgmmaGpuTest extends CudaTrainAttentionTcGpuTest {
    private String savedWgmma;

    @BeforeEach
    void turnWgmmaOn() {
        savedWgmma = System.getProperty(TrainAttentionKernels.WGMMA_PROPERTY);
        System.setProperty(TrainAttentionKernels.WGMMA_PROPERTY, "true");
    }

    @AfterEach
    void restoreWgmma() {
        if (savedWgmma == null) System.clearProperty(TrainAttentionKernels.WGMMA_PROPERTY);
        else System.setProperty(TrainAttentionKernels.WGMMA_PROPERTY, savedWgmma);
    }
}
