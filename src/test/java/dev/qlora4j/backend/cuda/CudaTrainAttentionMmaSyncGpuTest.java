package dev.qlora4j.backend.cuda;

import dev.qlora4j.TemporaryProperty;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;

/**
 * CudaTrainAttentionTcGpuTest's cases on the mma.sync kernels (attn_tc_*) on every GPU:
 * -Dqlora4j.attention.wgmma=false for every test.
 */
@Tag("gpu")
class CudaTrainAttentionMmaSyncGpuTest extends CudaTrainAttentionTcGpuTest {
    private TemporaryProperty savedWgmma;

    @BeforeEach
    void turnWgmmaOff() {
        savedWgmma = TemporaryProperty.set(TrainAttentionKernels.WGMMA_PROPERTY, "false");
    }

    @AfterEach
    void restoreWgmma() {
        if (savedWgmma != null) savedWgmma.close();
    }
}
