package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.cuda.Dim3;
import org.junit.jupiter.api.Test;

/** The warp-specialized dK/dV backward's launch shape (TrainAttentionWsBackward; no GPU needed). */
class TrainAttentionWsBackwardTest {
    @Test
    void gridIsKvHeadsTimesBatchByKeyBlocksOf128() {
        Dim3 g = TrainAttentionWsBackward.grid(8, 2, 2048);
        assertEquals(16, g.x(), "kv heads x batch");
        assertEquals(16, g.y(), "2,048 tokens: 16 blocks of 128 keys");
        assertEquals(2, TrainAttentionWsBackward.grid(8, 1, 130).y(), "a cut last block");
    }

    @Test
    void sharedMemoryIsKVAndThreeStagesOfQDoLseDeltaPlusBarriers() {
        // native/attention_bwd_ws.cuh, bws::SMEM_BYTES: 1 KB slack, K and V (32 KB each), 3 x (Q, dO: 16 KB each;
        // 512 bytes of lse / delta), 6 mbarriers
        assertEquals(1024 + 65_536 + 3 * (32_768 + 512) + 48, TrainAttentionWsBackward.SHARED_BYTES);
        assertTrue(TrainAttentionWsBackward.SHARED_BYTES <= 232_448, "fits the 227 KB an H100 / H200 block may opt into");
    }
}
