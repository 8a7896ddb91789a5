package dev.qlora4j.backend.cuda;

import dev.qlora4j.TemporaryProperty;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;

/**
 * CudaTrainAttentionTcGpuTest's cases on the wgmma kernels with the stored-dS backward turned off
 * (-Dqlora4j.attention.storedDs=false): the dQ kernel that recomputes S, P, dP and dS, which every windowed case and
 * every sequence past the scratch budget still uses. (On Hopper the parent classes run the stored-dS kernels for the
 * cases without a window.)
 */
@Tag("gpu")
class CudaTrainAttentionRecomputedDsGpuTest extends CudaTrainAttentionWgmmaGpuTest {
    private TemporaryProperty savedStoredDs;

    @BeforeEach
    void turnStoredDsOff() {
        savedStoredDs = TemporaryProperty.set(TrainAttentionKernels.STORED_DS_PROPERTY, "false");
    }

    @AfterEach
    void restoreStoredDs() {
        if (savedStoredDs != null) savedStoredDs.close();
    }
}
