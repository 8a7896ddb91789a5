package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.cuda.Dim3;
import org.junit.jupiter.api.Test;

/** The warp-specialized forward's launch shape (TrainAttentionWsForward; no GPU needed). */
class TrainAttentionWsForwardTest {
    @Test
    void gridIsHeadsTimesBatchByQueryTilesOf128() {
        Dim3 g = TrainAttentionWsForward.grid(32, 2, 2048);
        assertEquals(64, g.x(), "heads x batch");
        assertEquals(16, g.y(), "2,048 tokens: 16 tiles of 128 queries");
        assertEquals(3, TrainAttentionWsForward.grid(8, 1, 257).y(), "a cut last tile");
        assertEquals(1, TrainAttentionWsForward.grid(8, 1, 1).y());
    }

    @Test
    void tooManyTilesForOneLaunchSaysWhatToDo() {
        var e = assertThrows(IllegalArgumentException.class,
                () -> TrainAttentionWsForward.grid(32, 1, 65_536 * TrainAttentionWsForward.ROWS));
        assertTrue(e.getMessage().contains("split the batch or the sequence"), e.getMessage());
    }

    @Test
    void sharedMemoryIsQAndTwoStagesOfKAndVPlusBarriers() {
        // native/attention_fwd_ws.cuh, fws::SMEM_BYTES: 1 KB alignment slack, 5 tiles of 128 x 128 bf16, 8 mbarriers
        assertEquals(1024 + 5 * 32_768 + 64, TrainAttentionWsForward.SHARED_BYTES);
        assertTrue(TrainAttentionWsForward.SHARED_BYTES <= 232_448, "fits the 227 KB an H100 / H200 block may opt into");
    }
}
