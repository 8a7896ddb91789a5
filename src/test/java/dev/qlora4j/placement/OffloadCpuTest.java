package dev.qlora4j.placement;

import dev.qlora4j.CausalLM;
import dev.qlora4j.Golden;
import dev.qlora4j.LoadOptions;
import dev.qlora4j.model.ActivationStore;
import dev.qlora4j.model.LayerResidency;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Offload on the CPU backend: the plan degenerates to "everything on cpu" (no streaming), and layers placed on
 * "disk" really stream: written to the offload folder, memory-mapped, copied into one of two host slots before each
 * use. All three layers of the golden Llama on disk exercise the slot alternation (0, 1, 0) in forward passes,
 * decode steps and the backward; logits, greedy tokens, loss and LoRA gradients must be bit-identical.
 */
class OffloadCpuTest {
    @TempDir Path folder;

    @Test
    void autoPlanOnTheCpuBackendKeepsEverythingOnTheHost() {
        try (CausalLM lm = CausalLM.fromPretrained(Golden.dir(OffloadChecks.MODEL), LoadOptions.cpu(), PlacementOptions.of("auto", null, null))) {
            assertTrue(lm.placementPlan().targets().values().stream().allMatch(t -> t.equals(DeviceTarget.CPU)));
            assertSame(LayerResidency.NONE, lm.model().residency());
        }
    }

    @Test
    void layersOnDiskGiveIdenticalLogitsTokensAndGradients() throws Exception {
        OffloadChecks.Outputs plain = OffloadChecks.run(LoadOptions.cpu(), PlacementOptions.NONE, true, null);
        PlacementOptions disk = PlacementOptions.of("{\"\":\"cpu\",\"model.layers\":\"disk\"}", null, folder);
        try (CausalLM lm = CausalLM.fromPretrained(Golden.dir(OffloadChecks.MODEL), LoadOptions.cpu(), disk)) {
            WeightStreamer w = (WeightStreamer) lm.model().residency();
            assertEquals(List.of(0, 1, 2), w.streamedLayers());
            try (var files = Files.list(folder)) {
                assertEquals(3, files.filter(p -> p.toString().endsWith(".bin")).count(), "one image file per disk layer");
            }
        }
        try (var files = Files.list(folder)) {
            assertEquals(0, files.count(), "closing the model removes its offload files");
        }
        OffloadChecks.assertSame(plain, OffloadChecks.run(LoadOptions.cpu(), disk, true, null));
        OffloadChecks.Outputs plainNoCkpt = OffloadChecks.run(LoadOptions.cpu(), PlacementOptions.NONE, false, null);
        OffloadChecks.assertSame(plainNoCkpt, OffloadChecks.run(LoadOptions.cpu(), disk, false, null));
    }

    @Test
    void activationStoreRoundTripGivesIdenticalGradients() {
        OffloadChecks.Outputs plain = OffloadChecks.run(LoadOptions.cpu(), PlacementOptions.NONE, true, null);
        // On the CPU backend the offload store is the device itself (a no-op).
        OffloadChecks.assertSame(plain, OffloadChecks.run(LoadOptions.cpu(), PlacementOptions.NONE, true,
                lm -> Offloading.activationStore(lm.backend())));
        assertSame(ActivationStore.ON_DEVICE, Offloading.activationStore(new dev.qlora4j.backend.cpu.CpuBackend()));
        // A store that really moves the inputs away (copies, then poisons the originals) exercises trainStep's offload path.
        CopyingStore store = new CopyingStore();
        OffloadChecks.assertSame(plain, OffloadChecks.run(LoadOptions.cpu(), PlacementOptions.NONE, true, lm -> store));
        assertEquals(3, store.saved);
        assertEquals(3, store.restored);
        assertEquals(2, store.prefetched);
        assertFalse(store.outstanding());
    }

    /** Copies each input to a fresh host buffer and overwrites the original with NaN once released. */
    static final class CopyingStore implements ActivationStore {
        int saved, restored, prefetched, live;

        record Copy(Tensor t) implements Saved {}

        @Override
        public Saved save(Tensor x) {
            saved++;
            live++;
            Tensor c = Tensor.zeros(x.dtype(), x.shape());
            MemorySegment.copy(x.segment(), 0, c.segment(), 0, x.byteSize());
            return new Copy(c);
        }

        @Override
        public void release(Saved s, Tensor x) {
            for (long i = 0; i < x.numel(); i++) x.setFloat(i, Float.NaN); // the device copy is gone
        }

        @Override public void prefetch(Saved s) { prefetched++; }

        @Override
        public Tensor restore(Saved s) {
            restored++;
            live--;
            return ((Copy) s).t();
        }

        @Override public void discard(Saved s) { live--; }

        boolean outstanding() { return live != 0; }
    }
}
