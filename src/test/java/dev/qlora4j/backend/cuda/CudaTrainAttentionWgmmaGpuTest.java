package dev.qlora4j.backend.cuda;

import dev.qlora4j.TemporaryProperty;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;

/**
 * CudaTrainAttentionTcGpuTest's cases on the wgmma kernels (attn_wg_*) on Hopper (elsewhere the mma.sync ones run):
 * -Dqlora4j.attention.wgmma=true for every test.
 */
@Tag("gpu")
class CudaTrainAttentionWgmmaGpuTest extends CudaTrainAttentionTcGpuTest {
    private TemporaryProperty savedWgmma;

    @BeforeEach
    void turnWgmmaOn() {
        savedWgmma = TemporaryProperty.set(TrainAttentionKernels.WGMMA_PROPERTY, "true");
    }

    @AfterEach
    void restoreWgmma() {
        if (savedWgmma != null) savedWgmma.close();
    }
}
