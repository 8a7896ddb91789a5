package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Random;
import org.junit.jupiter.api.Test;

/** The stream GEMV's launch arithmetic (Quant4bitKernels.streamSplits / streamSharedBytes) without a GPU. */
class StreamGemvSplitTest {

    @Test
    void splitsFillTheMachineKeepTheXSliceInSharedMemoryAndNeverExceedTheChunks() {
        Random rnd = new Random();
        for (int trial = 0; trial < 5000; trial++) {
            int outF = 1 + rnd.nextInt(trial < 2500 ? 500 : 60000);
            int inF = 32 * (1 + rnd.nextInt(trial < 2500 ? 40 : 1000));
            int rows = 1 + rnd.nextInt(16);
            int sms = 1 + rnd.nextInt(140);
            int splits = Quant4bitKernels.streamSplits(sms, outF, inF, rows);
            int chunks = (inF + 127) / 128;
            long panels = (outF + 127) / 128;
            String what = outF + "x" + inF + " rows=" + rows + " sms=" + sms + " splits=" + splits;
            assertTrue(splits >= 1 && splits <= chunks, what);
            // every split gets at least one chunk: [s * C / S, (s + 1) * C / S) is non-empty when S <= C
            for (int s = 0; s < splits; s++) assertTrue((long) (s + 1) * chunks / splits > (long) s * chunks / splits, what);
            int smem = Quant4bitKernels.streamSharedBytes(inF, rows, splits);
            assertTrue(smem <= Quant4bitKernels.STREAM_FIXED_SMEM + Quant4bitKernels.STREAM_MAX_X_BYTES, what);
            // two blocks per SM fit the H100/H200's 228 KiB (1 KiB reserved per block)
            assertTrue(2L * (smem + 16 + 1024) <= 228 * 1024, what);
            // enough blocks for two per SM unless K has too few chunks to split further
            assertTrue(panels * splits >= 2L * sms || splits == chunks, what);
        }
    }

    @Test
    void benchmarkShapesOnTheH200() {
        // 132 SMs: in x out = 4096x11008 -> 86 panels, 32 chunks; 11008x4096 -> 32 panels, 86 chunks
        assertEquals(4, Quant4bitKernels.streamSplits(132, 11008, 4096, 1));
        assertEquals(4, Quant4bitKernels.streamSplits(132, 11008, 4096, 16));
        assertEquals(9, Quant4bitKernels.streamSplits(132, 4096, 11008, 1));
        assertEquals(9, Quant4bitKernels.streamSplits(132, 4096, 11008, 16));
        assertEquals(4, Quant4bitKernels.streamSplits(132, 28672, 8192, 1));
        assertEquals(7, Quant4bitKernels.streamSplits(132, 28672, 8192, 16));
        assertEquals(1, Quant4bitKernels.streamSplits(132, 300, 96, 1));
        // x slice: 8 or 16 rows x ceil(chunks / splits) chunks of 128 bf16 values
        assertEquals(Quant4bitKernels.STREAM_FIXED_SMEM + 8 * 10 * 256, Quant4bitKernels.streamSharedBytes(11008, 1, 9));
        assertEquals(Quant4bitKernels.STREAM_FIXED_SMEM + 16 * 10 * 256, Quant4bitKernels.streamSharedBytes(8192, 16, 7));
    }
}
