package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

/** The stored-dS scratch's size and when it is taken (TrainAttentionKernels; no GPU needed). */
class StoredDsScratchTest {
    private static final long GIB = 1L << 30, MIB = 1L << 20;

    @Test
    void scratchIsOneTilePerCausalTilePairAndHead() {
        // Llama-7B: 32 heads, T = 2,048: 32 x 33 / 2 = 528 tile pairs of 64 x 64 bf16 (8 KiB) per head
        assertEquals(32L * 528 * 8192, TrainAttentionKernels.storedDsBytes(1, 32, 2048));
        // T = 65 is two tiles a side (3 pairs); batch 4
        assertEquals(4L * 8 * 3 * 8192, TrainAttentionKernels.storedDsBytes(4, 8, 65));
    }

    @Test
    void scratchNeverRaisesThePeakOnceThePeakIsAboveTheBudget() {
        long budget = 2 * GIB, scratch = 132 * MIB;
        assertTrue(TrainAttentionKernels.storedDsFits(scratch, 100 * MIB, 100 * MIB, budget), "small use: under the budget");
        assertTrue(TrainAttentionKernels.storedDsFits(scratch, 5 * GIB, 6 * GIB, budget), "fits under the step's peak");
        assertFalse(TrainAttentionKernels.storedDsFits(scratch, 6 * GIB - 100 * MIB, 6 * GIB, budget), "would raise the peak");
        assertFalse(TrainAttentionKernels.storedDsFits(3 * GIB, 0, 100 * GIB, budget), "larger than the budget");
    }
}
