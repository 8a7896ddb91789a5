package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.tensor.DType;

import java.util.BitSet;
import org.junit.jupiter.api.Test;

/** The tile layout's index map (the host twin of native/q4_common.cuh's q4_tile_word) and when it applies. */
class Q4LayoutTest {
    @Test
    void everyWordHasOnePlaceAndTheDocumentedOne() {
        int out = 48, in = 384, chunks = in / 128, pieces = in / 8;
        BitSet seen = new BitSet();
        for (int r = 0; r < out; r++) {
            for (int kp = 0; kp < pieces; kp++) {
                long word = Q4Layout.tileWord(r, kp, chunks);
                assertTrue(word >= 0 && word < (long) out * pieces, "word " + word);
                assertFalse(seen.get((int) word), "row " + r + " piece " + kp + " collides");
                seen.set((int) word);
                // byte of (r, k = 8 kp): tile r / 16, chunk k / 128, half (r % 16) / 8, lane 4 (r % 8) + (k % 128) / 32,
                // byte (k % 32) / 2 of the lane's 16
                int k = 8 * kp;
                long byteOffset = ((((long) (r / 16) * chunks + k / 128) * 2 + (r % 16) / 8) * 32 + 4 * (r % 8) + (k % 128) / 32) * 16
                        + (k % 32) / 2;
                assertEquals(byteOffset, word * 4, "row " + r + " k " + k);
            }
        }
        assertEquals(out * pieces, seen.cardinality());
    }

    @Test
    void toTilesMovesWholeWords() {
        int out = 16, in = 256;
        byte[] rows = new byte[out * in / 2];
        for (int i = 0; i < rows.length; i++) rows[i] = (byte) (i * 7 + 3);
        byte[] tiles = Q4Layout.toTiles(rows, out, in);
        // row 9, k = 160..167: word 9 * 32 + 20 of the rows; in tiles: tile 0, chunk 1, half 1, lane 4 * 1 + 1, word 0
        int src = (9 * (in / 8) + 20) * 4, dst = (((0 * 2 + 1) * 2 + 1) * 32 + 5) * 16;
        for (int b = 0; b < 4; b++) assertEquals(rows[src + b], tiles[dst + b]);
    }

    @Test
    void appliesToWholeTilesOfAlignedWeightsWithSixteenBitCompute() {
        assertTrue(Q4Layout.tilesApply(4096, 11008, 64, true, 256, DType.BF16));
        assertTrue(Q4Layout.tilesApply(11008, 4096, 64, false, 0, DType.F16));
        assertFalse(Q4Layout.tilesApply(4096, 11008, 64, true, 256, DType.F32), "float32 compute: the SIMT GEMV");
        assertFalse(Q4Layout.tilesApply(4100, 4096, 64, true, 256, DType.BF16), "a partial tile");
        assertFalse(Q4Layout.tilesApply(4096, 4160, 64, true, 256, DType.BF16), "a partial chunk");
        assertFalse(Q4Layout.tilesApply(4096, 4096 + 128, 256, false, 0, DType.BF16), "blocks across rows");
        assertFalse(Q4Layout.tilesApply(4096, 4096, 64, true, 200, DType.BF16), "a nested blocksize not a power of two");
        assertFalse(Q4Layout.tilesApply(1 << 17, 1 << 17, 64, false, 0, DType.BF16), "2^31 words or more");
    }

    @Test
    void thePropertyNamesALayout() {
        try (var p = TemporaryProperty.clear(Q4Layout.PROPERTY)) {
            assertEquals(Q4Layout.TILES, Q4Layout.requested());
            System.setProperty(Q4Layout.PROPERTY, "rows");
            assertEquals(Q4Layout.ROWS, Q4Layout.requested());
            System.setProperty(Q4Layout.PROPERTY, "interleaved");
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, Q4Layout::requested);
            assertTrue(e.getMessage().contains("tiles") && e.getMessage().contains("rows"), e.getMessage());
        }
    }
}
