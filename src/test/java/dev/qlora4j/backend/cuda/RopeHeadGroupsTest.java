package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;

import org.junit.jupiter.api.Test;

/** How the fused RoPE kernels split heads into groups (no GPU needed: the launch geometry only). */
class RopeHeadGroupsTest {

    @Test
    void decodeStepsSpreadOverTheHeadsAndLongSequencesKeepOneAnglePerPair() {
        assertEquals(64, FusedKernels.ropeHeadGroups(64, 64), "a decode step (1 row, 64 pairs): one group per head");
        assertEquals(4, FusedKernels.ropeHeadGroups(300 * 64, 40), "19,200 pairs need 4 groups to reach 65,536 items");
        assertEquals(1, FusedKernels.ropeHeadGroups(2048 * 64, 64), "a training sequence fills the GPU by rows alone");
        assertEquals(1, FusedKernels.ropeHeadGroups(FusedKernels.ROPE_ITEMS_TO_FILL, 40));
        assertEquals(1, FusedKernels.ropeHeadGroups(0, 8), "no rows: nothing to split");
        assertEquals(4, FusedKernels.ropeHeadGroups(3, 4), "never more groups than heads");
    }
}
