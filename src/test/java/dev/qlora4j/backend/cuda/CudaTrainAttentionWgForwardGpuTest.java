package dev.qlora4j.backend.cuda;

import dev.qlora4j.TemporaryProperty;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;

/**
 * CudaTrainAttentionWgmmaGpuTest's cases with the warp-specialized forward turned off
 * (-Dqlora4j.attention.wsForward=false), so attn_wg_fwd keeps its causal cases without segments under test too.
 */
@Tag("gpu")
class CudaTrainAttentionWgForwardGpuTest extends CudaTrainAttentionWgmmaGpuTest {
    private TemporaryProperty savedWs;

    @BeforeEach
    void turnWsForwardOff() {
        savedWs = TemporaryProperty.set(TrainAttentionWsForward.PROPERTY, "false");
    }

    @AfterEach
    void restoreWsForward() {
        if (savedWs != null) savedWs.close();
    }
}
