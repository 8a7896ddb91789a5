package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

/** TokenPick's checks and SamplingKernels' first-pass grid (no GPU needed). */
class TokenPickTest {

    @Test
    void picksCheckWhatTheKernelsCanDo() {
        TokenPick g = TokenPick.greedy(new int[] {2}, 1f);
        assertTrue(g.greedy());
        assertFalse(g.penalized());
        assertTrue(TokenPick.greedy(new int[0], 1.1f).penalized());
        TokenPick s = TokenPick.sampled(new int[0], 1f, 0.7f, 50, 0.9, new double[] {0.25});
        assertFalse(s.greedy());
        assertEquals(50, s.topK());
        var tooMany = assertThrows(IllegalArgumentException.class, () -> TokenPick.greedy(new int[] {1, 2, 3, 4, 5}, 1f));
        assertTrue(tooMany.getMessage().contains("at most 4"), tooMany.getMessage());
        assertThrows(IllegalArgumentException.class, () -> TokenPick.greedy(new int[0], 0f));
        assertThrows(IllegalArgumentException.class, () -> TokenPick.sampled(new int[0], 1f, 0f, 0, 0.9, new double[1]));
        assertThrows(IllegalArgumentException.class, () -> TokenPick.sampled(new int[0], 1f, 1f, 0, 1.5, new double[1]));
        assertThrows(NullPointerException.class, () -> TokenPick.sampled(new int[0], 1f, 1f, 0, 0.9, null));
        // the record keeps its own copies
        double[] u = {0.5};
        TokenPick copy = TokenPick.sampled(new int[0], 1f, 1f, 0, 0.9, u);
        u[0] = 0.9;
        assertEquals(0.5, copy.uniforms()[0]);
    }

    @Test
    void theFirstPassSpreadsEachRowOverSeveralBlocks() {
        assertEquals(32, SamplingKernels.prepareBlocks(132, 1, 128_256));  // batch 1: capped at 32 blocks a row
        assertEquals(32, SamplingKernels.prepareBlocks(132, 1, 32_000));
        assertEquals(4, SamplingKernels.prepareBlocks(132, 64, 32_000));   // two blocks an SM over all rows
        assertEquals(1, SamplingKernels.prepareBlocks(132, 1, 7));         // at least 1,024 values a block
        assertEquals(1, SamplingKernels.prepareBlocks(132, 512, 32_000));
    }
}
