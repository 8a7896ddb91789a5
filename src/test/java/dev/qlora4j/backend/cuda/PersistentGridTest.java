package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.tensor.DType;

import org.junit.jupiter.api.Test;

/** Which decode launches on tiles go persistent, and on how many blocks (Nf4TileGemvKernels.persistentGrid / Single). */
class PersistentGridTest {
    private static final int H200_SMS = 132;

    @Test
    void llama7bShapesOnAnH200() {
        // gate / up, joint: 11008 / 8 = 1376 pairs of 8 rows over 2 x 132 blocks (even)
        assertEquals(264, Nf4TileGemvKernels.persistentSingle(H200_SMS, DType.BF16, 4096, 11008 / 8, true));
        // one 4096 x 11008 weight: 688 tiles
        assertEquals(264, Nf4TileGemvKernels.persistentSingle(H200_SMS, DType.BF16, 4096, 688, false));
        // o_proj: 256 tiles fit one wave, one block each; the grouped q / k / v (768 tiles) goes persistent
        assertEquals(0, Nf4TileGemvKernels.persistentSingle(H200_SMS, DType.BF16, 4096, 256, false));
        assertEquals(264, Nf4TileGemvKernels.persistentGrid(H200_SMS, DType.BF16, 4096, 768, false));
        assertEquals(192, Nf4TileGemvKernels.persistentGrid(H200_SMS, DType.BF16, 2048, 192, false), "a small group: a tile a block");
        // down_proj: K = 11008 is 86 chunks, not the same number for each of the 8 warps
        assertEquals(0, Nf4TileGemvKernels.persistentGrid(H200_SMS, DType.BF16, 11008, 256, false));
    }

    @Test
    void onlyWhereTheKernelsApply() {
        assertEquals(0, Nf4TileGemvKernels.persistentGrid(H200_SMS, DType.F16, 4096, 688, false), "bf16 kernels only");
        assertEquals(0, Nf4TileGemvKernels.persistentGrid(H200_SMS, DType.BF16, 1024, 688, false), "8 chunks: below the ring's depth per warp");
        for (int sms : new int[] {78, 108, 131, 132}) {  // the joint decode's blocks step over whole 16-row tiles
            assertEquals(0, Nf4TileGemvKernels.persistentSingle(sms, DType.BF16, 4096, 11008 / 8, true) % 2, sms + " SMs");
        }
        try (var off = TemporaryProperty.set(Nf4TileGemvKernels.PERSISTENT_PROPERTY, "false")) {
            assertEquals(0, Nf4TileGemvKernels.persistentGrid(H200_SMS, DType.BF16, 4096, 768, false));
        }
    }
}
