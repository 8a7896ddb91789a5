package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.List;
import org.junit.jupiter.api.Test;

class GemvWaveSplitTest {
    private static GemvWaveSplit.Piece p(int row0, int rows) { return new GemvWaveSplit.Piece(row0, rows); }

    @Test
    void wideWeightsAreCutIntoOneWavePiecesOnWholeBlocks() {
        // H200: 132 SMs x 2 blocks x 16 rows = 4224 rows per wave
        assertEquals(List.of(p(0, 4224), p(4224, 4224), p(8448, 2560)), GemvWaveSplit.pieces(11008, 4096, 64, 256, 132));
        assertEquals(List.of(p(0, 4224), p(4224, 4224), p(8448, 2560)), GemvWaveSplit.pieces(11008, 4096, 64, 0, 132));
        assertEquals(List.of(p(0, 4096)), GemvWaveSplit.pieces(4096, 11008, 64, 256, 132), "one wave: one launch");
        assertEquals(List.of(p(0, 4224)), GemvWaveSplit.pieces(4224, 4096, 64, 256, 132), "exactly one wave");
    }

    @Test
    void aCutThatWouldSplitAnAbsmaxBlockOrANestedGroupKeepsOneLaunch() {
        // 16 SMs: 512 rows per wave; in = 96, blocksize 4096: 512 * 96 = 49152 values = 12 blocks, 12 % 256 != 0
        assertEquals(List.of(p(0, 2000)), GemvWaveSplit.pieces(2000, 96, 4096, 256, 16));
        assertEquals(List.of(p(0, 512), p(512, 512), p(1024, 512), p(1536, 464)), GemvWaveSplit.pieces(2000, 96, 4096, 0, 16));
        assertEquals(List.of(p(0, 2000)), GemvWaveSplit.pieces(2000, 96, 65536, 0, 16), "49152 values are not a whole block");
    }
}
