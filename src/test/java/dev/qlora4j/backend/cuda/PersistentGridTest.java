package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.tensor.DType;

import org.junit.jupiter.api.Test;

/** Which decode launches on tiles go persistent, and on how many blocks (Nf4TileGemvKernels.persistentGrid / Single). */
class PersistentGridTest {
    private static final int H200_SMS = 132;

    @Test
    void llama7bShapesOnAnH200() {
        // one row (batch-1 decode): three blocks of 8 warps a SM. gate / up, joint: 11008 / 8 = 1376 pairs of 8 rows
        assertEquals(396, Nf4TileGemvKernels.persistentSingle(H200_SMS, DType.BF16, 4096, 11008 / 8, true, 1));
        // one 4096 x 11008 weight: 688 tiles; 2..16 rows: two blocks a SM
        assertEquals(396, Nf4TileGemvKernels.persistentSingle(H200_SMS, DType.BF16, 4096, 688, false, 1));
        assertEquals(264, Nf4TileGemvKernels.persistentSingle(H200_SMS, DType.BF16, 4096, 688, false, 2));
        assertEquals(264, Nf4TileGemvKernels.persistentSingle(H200_SMS, DType.BF16, 4096, 688, false, 16));
        assertEquals("_p3", Nf4TileGemvKernels.persistentForm(1, 4096).suffix(), "one row: three blocks, x staged");
        assertEquals("_p3", Nf4TileGemvKernels.persistentForm(1, 11008).suffix());
        assertEquals("_p", Nf4TileGemvKernels.persistentForm(4, 4096).suffix());
        // o_proj: 256 tiles fit one wave, one block each; the grouped q / k / v (768 tiles) goes persistent
        assertEquals(0, Nf4TileGemvKernels.persistentSingle(H200_SMS, DType.BF16, 4096, 256, false, 1));
        assertEquals(396, Nf4TileGemvKernels.persistentGrid(H200_SMS, DType.BF16, 4096, 768, false, 1));
        assertEquals(192, Nf4TileGemvKernels.persistentGrid(H200_SMS, DType.BF16, 2048, 192, false, 1), "a small group: a tile a block");
        // down_proj: K = 11008 is 86 chunks, not the same number for each of the 8 warps
        assertEquals(0, Nf4TileGemvKernels.persistentGrid(H200_SMS, DType.BF16, 11008, 256, false, 1));
    }

    @Test
    void xLargerThanTheThreeBlockFormStagesTakesAnotherForm() {
        // the three-block form stages x (2 bytes a value) in 32 KiB: in_features up to 16,384
        assertEquals("_p3", Nf4TileGemvKernels.persistentForm(1, 16384).suffix());
        // Llama-70B's down_proj (28,672 in): the SM-wide kernels, which read x from global memory (three walkers a SM)
        assertEquals("_s3", Nf4TileGemvKernels.persistentForm(1, 28672).suffix());
        assertEquals(396, Nf4TileGemvKernels.persistentSingle(H200_SMS, DType.BF16, 28672, 8192 / 16, false, 1));
        try (var three = TemporaryProperty.set(Nf4TileGemvKernels.PERSISTENT_FORM_PROPERTY, "3")) {
            // asked for three blocks: two, and a grid sized for them
            assertEquals("_p", Nf4TileGemvKernels.persistentForm(1, 28672).suffix());
            assertEquals(264, Nf4TileGemvKernels.persistentSingle(H200_SMS, DType.BF16, 28672, 8192 / 16, false, 1));
            assertEquals("_p3", Nf4TileGemvKernels.persistentForm(1, 8192).suffix());
        }
        // an SM-wide form the GPU cannot hold: three blocks where they stage x, else two
        int rtx3090 = 101_376;
        assertEquals("_p3", Nf4TileGemvKernels.fitted(Nf4TileGemvKernels.SM_WIDE, 396, false, rtx3090, 16384).suffix());
        assertEquals("_p", Nf4TileGemvKernels.fitted(Nf4TileGemvKernels.SM_WIDE, 396, false, rtx3090, 28672).suffix());
    }

    @Test
    void onlyWhereTheKernelsApply() {
        assertEquals(0, Nf4TileGemvKernels.persistentGrid(H200_SMS, DType.F16, 4096, 688, false, 1), "bf16 kernels only");
        assertEquals(0, Nf4TileGemvKernels.persistentGrid(H200_SMS, DType.BF16, 1024, 688, false, 1), "8 chunks: below the ring's depth per warp");
        for (int sms : new int[] {78, 108, 131, 132}) {  // the joint decode's blocks step over whole 16-row tiles
            for (int rows : new int[] {1, 2}) {
                assertEquals(0, Nf4TileGemvKernels.persistentSingle(sms, DType.BF16, 4096, 11008 / 8, true, rows) % 2, sms + " SMs");
            }
        }
        try (var off = TemporaryProperty.set(Nf4TileGemvKernels.PERSISTENT_PROPERTY, "false")) {
            assertEquals(0, Nf4TileGemvKernels.persistentGrid(H200_SMS, DType.BF16, 4096, 768, false, 1));
        }
    }

    @Test
    void theOneRowFormFollowsTheProperty() {
        try (var two = TemporaryProperty.set(Nf4TileGemvKernels.PERSISTENT_FORM_PROPERTY, "2")) {
            assertEquals(264, Nf4TileGemvKernels.persistentGrid(H200_SMS, DType.BF16, 4096, 768, false, 1));
            assertEquals("_p", Nf4TileGemvKernels.persistentForm(1, 4096).suffix());
        }
        try (var bad = TemporaryProperty.set(Nf4TileGemvKernels.PERSISTENT_FORM_PROPERTY, "4")) {
            var e = assertThrows(IllegalArgumentException.class, () -> Nf4TileGemvKernels.persistentForm(1, 4096));
            assertTrue(e.getMessage().contains("use auto, 3, s3 or 2"), e.getMessage());
        }
        try (var sm = TemporaryProperty.set(Nf4TileGemvKernels.PERSISTENT_FORM_PROPERTY, "s3")) {
            assertEquals("_s3", Nf4TileGemvKernels.persistentForm(1, 4096).suffix());
            assertEquals("_p", Nf4TileGemvKernels.persistentForm(2, 4096).suffix(), "2..16 rows keep two blocks");
            assertEquals(396, Nf4TileGemvKernels.persistentGrid(H200_SMS, DType.BF16, 4096, 768, false, 1));
        }
    }

    @Test
    void smWideBlocksNeverHoldMoreWalkersThanTiles() {
        var form = Nf4TileGemvKernels.SM_WIDE;
        assertEquals(768, form.threads());
        assertEquals(2 * 65536 - 1024, form.sharedBytes());
        assertEquals(132, form.blocks(396, false), "three 8-warp groups a block: one block a SM");
        assertEquals(132, form.blocks(396, true));
        assertEquals(64, form.blocks(192, false), "a small group: whole blocks only");
        assertEquals(63, form.blocks(190, false));
        assertEquals(62, form.blocks(190, true), "the joint decode steps over whole 16-row tiles: an even walker count");
        assertEquals(0, form.blocks(2, false), "fewer walkers than a block's groups: the launcher takes the three-block form");
        assertEquals(396, Nf4TileGemvKernels.THREE_BLOCKS.blocks(396, true));
        assertEquals(256, Nf4TileGemvKernels.THREE_BLOCKS.threads());
        assertEquals(65536, Nf4TileGemvKernels.THREE_BLOCKS.sharedBytes());
    }

    @Test
    void smWideFormsFallBackToThreeBlocksWhereTheyCannotRun() {
        int h200 = 232_448, rtx3090 = 101_376;  // the devices' opt-in shared memory per block
        assertEquals("_s3", Nf4TileGemvKernels.fitted(Nf4TileGemvKernels.SM_WIDE, 396, true, h200, 4096).suffix());
        assertEquals("_p3", Nf4TileGemvKernels.fitted(Nf4TileGemvKernels.SM_WIDE, 396, true, rtx3090, 4096).suffix(),
                "a GPU whose blocks cannot hold the 64 KiB-aligned table");
        assertEquals("_p3", Nf4TileGemvKernels.fitted(Nf4TileGemvKernels.SM_WIDE, 2, false, h200, 4096).suffix(),
                "fewer walkers than one block's groups");
        assertEquals("_p", Nf4TileGemvKernels.fitted(Nf4TileGemvKernels.TWO_BLOCKS, 264, false, rtx3090, 4096).suffix());
    }
}
