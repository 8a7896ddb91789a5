package dev.qlora4j.placement;

import dev.qlora4j.CausalLM;
import dev.qlora4j.Golden;
import dev.qlora4j.LoadOptions;
import dev.qlora4j.backend.cuda.CudaActivationOffload;
import dev.qlora4j.backend.cuda.CudaBackend;
import dev.qlora4j.quant.QuantizationConfig;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * Weight and activation offload on the GPU against the all-on-GPU model (F32 activations): layers streamed from
 * pinned host memory and from a memory-mapped file (copy stream, events, double buffering), dense and 4-bit, must
 * give bit-identical logits, greedy tokens, loss and LoRA gradients (the same kernels read the same bytes; only
 * where the weights wait between uses differs), with and without gradient checkpointing; activation offload
 * (pinned host copies on a side stream) must give bit-identical gradients.
 */
@Tag("gpu")
class OffloadGpuTest {
    @TempDir Path folder;

    @BeforeAll
    static void gpu() {
        assumeTrue(CudaBackend.isAvailable(), "no GPU");
        System.setProperty(CudaBackend.ACTIVATIONS_PROPERTY, "f32");
    }

    static LoadOptions cuda() { return LoadOptions.defaults().withDevice("cuda"); }

    /** Layer 0 from pinned host memory, 1 from disk, 2 from pinned host memory: the slots alternate 0, 1, 0. */
    PlacementOptions mixed() {
        return PlacementOptions.of("{\"\":0,\"model.layers.0\":\"cpu\",\"model.layers.1\":\"disk\",\"model.layers.2\":\"cpu\"}", null, folder);
    }

    @Test
    void streamedDenseLayersGiveIdenticalResults() {
        for (boolean ckpt : new boolean[] {true, false}) {
            OffloadChecks.Outputs plain = OffloadChecks.run(cuda(), PlacementOptions.NONE, ckpt, null);
            OffloadChecks.assertSame(plain, OffloadChecks.run(cuda(), mixed(), ckpt, null));
        }
        try (CausalLM lm = CausalLM.fromPretrained(Golden.dir(OffloadChecks.MODEL), cuda(), mixed())) {
            WeightStreamer w = assertInstanceOf(WeightStreamer.class, lm.model().residency());
            assertEquals(List.of(0, 1, 2), w.streamedLayers());
            assertFalse(((CudaBackend) lm.backend()).decodeGraphsEnabled(), "decode graphs are off while layers stream");
        }
    }

    @Test
    void streamedFourBitLayersGiveIdenticalResults() {
        LoadOptions q = cuda().withQuantization(QuantizationConfig.qlora());
        OffloadChecks.Outputs plain = OffloadChecks.run(q, PlacementOptions.NONE, true, null);
        OffloadChecks.assertSame(plain, OffloadChecks.run(q, mixed(), true, null));
        LoadOptions int8 = cuda().withQuantization(QuantizationConfig.int8());
        OffloadChecks.assertSame(OffloadChecks.run(int8, PlacementOptions.NONE, true, null), OffloadChecks.run(int8, mixed(), true, null));
    }

    @Test
    void autoPlanWithATightBudgetOffloadsLayersAndMatches() throws Exception {
        // One byte short of all three layers: the plan streams; after its two slots no layer fits, so all three stream.
        var sizes = ModuleSizes.of(dev.qlora4j.model.ModelConfig.load(Golden.dir(OffloadChecks.MODEL)),
                dev.qlora4j.tensor.DType.F32, null);
        long fixed = sizes.get(ModuleSizes.EMBED) + sizes.get(ModuleSizes.NORM) + sizes.get(ModuleSizes.LM_HEAD);
        long layer = sizes.get(ModuleSizes.layer(0));
        PlacementOptions tight = PlacementOptions.of("auto", "{\"0\":" + (fixed + 3 * layer - 1) + "}", null);
        try (CausalLM lm = CausalLM.fromPretrained(Golden.dir(OffloadChecks.MODEL), cuda(), tight)) {
            assertEquals(List.of(0, 1, 2), lm.placementPlan().offloadedLayers(), lm.placementPlan().table());
        }
        OffloadChecks.assertSame(OffloadChecks.run(cuda(), PlacementOptions.NONE, true, null), OffloadChecks.run(cuda(), tight, true, null));
    }

    @Test
    void activationOffloadGivesIdenticalGradients() {
        OffloadChecks.Outputs plain = OffloadChecks.run(cuda(), PlacementOptions.NONE, true, null);
        OffloadChecks.assertSame(plain, OffloadChecks.run(cuda(), PlacementOptions.NONE, true, lm -> {
            var s = Offloading.activationStore(lm.backend());
            assertInstanceOf(CudaActivationOffload.class, s);
            return s;
        }));
        // Both offloads at once.
        OffloadChecks.assertSame(plain, OffloadChecks.run(cuda(), mixed(), true, lm -> Offloading.activationStore(lm.backend())));
        assertTrue(plain.grads().stream().anyMatch(g -> { for (float v : g) if (v != 0) return true; return false; }),
                "the gradients compared are not all zero");
    }
}
