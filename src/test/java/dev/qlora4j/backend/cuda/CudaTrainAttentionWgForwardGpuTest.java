package dev.qlora4j.backend.cuda;

import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;

/**
 * CudaTrainAttentionWgmmaGpuTest's cases with the warp-specialized forward turned off
 * (-Dqlora4j.attention.wsForward=false), so attn_wg_fwd keeps its causal cases without segments under test too.
 */
@Tag("gpu")
class CudaTrainAttentionWgForwardGpuTest extends CudaTrainAttentionWgmmaGpuTest {
    private String savedWs;

    @BeforeEach
    void turnWsForwardOff() {
        savedWs = System.getProperty(TrainAttentionWsForward.PROPERTY);
        System.setProperty(TrainAttentionWsForward.PROPERTY, "false");
    }

    @AfterEach
    void restoreWsForward() {
        if (savedWs == null) System.clearProperty(TrainAttentionWsForward.PROPERTY);
        else System.setProperty(TrainAttentionWsForward.PROPERTY, savedWs);
    }
}
