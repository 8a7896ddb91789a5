package dev.qlora4j.model;

import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.backend.cuda.CudaBackend;
import dev.qlora4j.cuda.CudaDriver;
import dev.qlora4j.tensor.DType;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * {@link DecoderLayerGroupTest} on the GPU: a decode step of a layer whose q/k/v and gate/up go through the grouped
 * v2 GEMV (BF16 / F16 compute, NF4, with and without LoRA / DoRA) equals the per-projection launches bit for bit.
 * (That the grouped kernel, not the per-weight fallback, runs for such a group: Nf4GemvGroupGpuTest.)
 */
@Tag("gpu")
class DecoderLayerGroupGpuTest {
    private static TemporaryProperty groupBefore;

    @BeforeAll
    static void groupedLaunchesOn() {   // off by default (dev.qlora4j.backend.cuda.CudaQuantOps.GROUP_PROPERTY)
        groupBefore = TemporaryProperty.set(dev.qlora4j.backend.cuda.CudaQuantOps.GROUP_PROPERTY, "true");
    }

    @AfterAll
    static void restoreGroupedLaunches() {
        if (groupBefore != null) groupBefore.close();
    }

    @ParameterizedTest
    @CsvSource({"none,false,BF16", "none,true,F16", "lora,true,BF16", "dora,false,BF16"})
    void groupedProjectionsGiveTheSameLayerOutputBitForBit(String adapter, boolean doubleQuant, DType compute) {
        assumeTrue(CudaBackend.isAvailable(), () -> "no GPU: " + CudaDriver.unavailableReason());
        try (CudaBackend b = CudaBackend.create(0, DType.BF16, false)) {
            DecoderLayerGroupTest.assertGroupedEqualsPerProjection(b, adapter, doubleQuant, compute);
        }
    }
}
