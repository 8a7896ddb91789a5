package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.quant.Int8Weight;
import dev.qlora4j.quant.Quant4bit;
import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Random;
import org.junit.jupiter.api.Test;

/** CPU-only checks of the CUDA quantized ops: argument validation, tables, and the GEMV's work split. */
class CudaQuantValidationTest {

    /** A weight of another backend, for the "wrong backend" and shape checks. */
    private record Foreign(int outFeatures, int inFeatures) implements QuantizedWeight {
        @Override public long deviceBytes() { return 0; }

        @Override public void close() {}
    }

    @Test
    void linearRejectsBadShapesAndDtypesWithHelpfulMessages() {
        QuantizedWeight w = new Foreign(8, 16);
        var e = assertThrows(IllegalArgumentException.class, () -> CudaQuantOps.linear(null, Tensor.zeros(DType.F32, 2, 3, 16), w, null));
        assertTrue(e.getMessage().contains("reshape it to 2-D"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> CudaQuantOps.linear(null, Tensor.zeros(DType.F32, 2, 15), w, null));
        assertTrue(e.getMessage().contains("15 features") && e.getMessage().contains("expects 16"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> CudaQuantOps.linear(null, Tensor.zeros(DType.I32, 2, 16), w, null));
        assertTrue(e.getMessage().contains("x must be F32, BF16 or F16"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class,
                () -> CudaQuantOps.linear(null, Tensor.zeros(DType.F32, 2, 16), w, Tensor.zeros(DType.F32, 9)));
        assertTrue(e.getMessage().contains("bias must be [8]"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> CudaQuantOps.linear(null, Tensor.zeros(DType.F32, 2, 16), w, null));
        assertTrue(e.getMessage().contains("prepared for another backend"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> CudaQuantOps.dequantize(null, w, DType.F32));
        assertTrue(e.getMessage().contains("prepared for another backend"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> CudaQuantOps.dequantize(null, w, DType.I8));
        assertTrue(e.getMessage().contains("dequantize dtype must be F32, BF16 or F16"), e.getMessage());
    }

    @Test
    void prepareRejectsWhatTheKernelsCannotTake() {
        QuantState4bit s3d = Quant4bit.quantize(new float[64], new int[] {2, 2, 16}, QuantType.NF4, 64, false);
        var e = assertThrows(IllegalArgumentException.class, () -> CudaQuantOps.prepare4bit(null, s3d, DType.BF16));
        assertTrue(e.getMessage().contains("must be 2-D"), e.getMessage());
        QuantState4bit s = Quant4bit.quantize(new float[64], new int[] {2, 32}, QuantType.NF4, 64, false);
        e = assertThrows(IllegalArgumentException.class, () -> CudaQuantOps.prepare4bit(null, s, DType.I32));
        assertTrue(e.getMessage().contains("bnb_4bit_compute_dtype"), e.getMessage());
        Int8Weight w8 = Int8Weight.quantize(new float[32], 2, 16);
        for (float t : new float[] {-1f, Float.NaN, Float.POSITIVE_INFINITY}) {
            e = assertThrows(IllegalArgumentException.class, () -> CudaQuantOps.prepare8bit(null, w8, t));
            assertTrue(e.getMessage().contains("llm_int8_threshold"), e.getMessage());
        }
        e = assertThrows(IllegalArgumentException.class,
                () -> CudaQuantOps.quantize4bit(null, Tensor.zeros(DType.F32, 64), QuantType.NF4, 64, false));
        assertTrue(e.getMessage().contains("2-D"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class,
                () -> CudaQuantOps.quantize4bit(null, Tensor.zeros(DType.I8, 4, 64), QuantType.NF4, 64, false));
        assertTrue(e.getMessage().contains("F32, BF16 or F16"), e.getMessage());
        for (int bs : new int[] {16, 48, 8192}) {
            e = assertThrows(IllegalArgumentException.class,
                    () -> CudaQuantOps.quantize4bit(null, Tensor.zeros(DType.F32, 4, 64), QuantType.NF4, bs, false));
            assertTrue(e.getMessage().contains("power of two in 32..4096"), e.getMessage());
        }
    }

    @Test
    void dequantTablesAreTheKernelConstants() {
        float[] fp4 = CudaQuantOps.dequantTable(QuantType.FP4);
        assertEquals(Float.floatToRawIntBits(-0f), Float.floatToRawIntBits(fp4[8]), "FP4 code 8 is -0 in the kernel table");
        for (QuantType t : QuantType.values()) {
            float[] table = CudaQuantOps.dequantTable(t);
            for (int q = 0; q < 16; q++) assertEquals(Float.floatToRawIntBits(t.dequantValue(q)), Float.floatToRawIntBits(table[q]));
        }
        assertEquals(0, Quant4bitKernels.dtypeCode(DType.F32, "x"));
        assertEquals(1, Quant4bitKernels.dtypeCode(DType.BF16, "x"));
        assertEquals(2, Quant4bitKernels.dtypeCode(DType.F16, "x"));
    }

    // Mirror of nf4.cu's stream-K split (range_start, chunk_owner), to check the arithmetic the kernel relies on.
    private static int rangeStart(long w, long warps, long total) { return (int) (w * total / warps); }

    private static int chunkOwner(long c, long warps, long total) { return (int) (((c + 1) * warps + total - 1) / total - 1); }

    @Test
    void streamKSplitGivesEveryChunkToExactlyOneWarpAndFindsEachTilesContributors() {
        Random rnd = new Random();
        for (int trial = 0; trial < 2000; trial++) {
            int outF = 1 + rnd.nextInt(trial < 1000 ? 300 : 30000);
            int inF = 32 * (1 + rnd.nextInt(trial < 1000 ? 40 : 900));
            int rows = 1 + rnd.nextInt(16);
            int sms = 1 + rnd.nextInt(140);
            long total = Quant4bitKernels.gemvChunks(outF, inF);
            int grid = Quant4bitKernels.gemvGrid(sms, rows, total);
            int warps = (int) Math.min((long) grid * Quant4bitKernels.GEMV_WARPS, total);
            assertTrue(grid >= 1 && warps >= 1);
            int chunksPerTile = (inF + 127) / 128;
            // ranges: contiguous, non-empty, covering [0, total)
            for (int w = 0; w < warps; w++) assertTrue(rangeStart(w + 1, warps, total) > rangeStart(w, warps, total));
            assertEquals(0, rangeStart(0, warps, total));
            assertEquals(total, rangeStart(warps, warps, total));
            for (int probe = 0; probe < 50; probe++) {
                long c = (long) (rnd.nextDouble() * total);
                int owner = chunkOwner(c, warps, total);
                assertTrue(rangeStart(owner, warps, total) <= c && c < rangeStart(owner + 1, warps, total),
                        "chunk " + c + " of " + total + " over " + warps + " warps");
            }
            // each warp holds at most two partial tiles: its first and its last
            for (int probe = 0; probe < 20; probe++) {
                int w = rnd.nextInt(warps);
                int s = rangeStart(w, warps, total), e = rangeStart(w + 1, warps, total);
                int partial = 0;
                for (int tile = s / chunksPerTile; tile <= (e - 1) / chunksPerTile; tile++) {
                    int first = tile * chunksPerTile, last = first + chunksPerTile - 1;
                    if (!(first >= s && last < e)) {
                        partial++;
                        assertTrue(tile == s / chunksPerTile || tile == (e - 1) / chunksPerTile);
                    }
                }
                assertTrue(partial <= 2);
            }
        }
    }

    @Test
    void gemvGridFillsTheMachineButNeverOutnumbersTheWork() {
        assertEquals(132 * 3, Quant4bitKernels.gemvGrid(132, 1, Quant4bitKernels.gemvChunks(11008, 4096)));
        assertEquals(132 * 2, Quant4bitKernels.gemvGrid(132, 16, Quant4bitKernels.gemvChunks(11008, 4096)));
        assertEquals(1, Quant4bitKernels.gemvGrid(132, 1, Quant4bitKernels.gemvChunks(16, 128)));
        assertEquals(2, Quant4bitKernels.gemvGrid(132, 1, Quant4bitKernels.gemvChunks(16, 128 * 9)));
        assertEquals(688L * 32, Quant4bitKernels.gemvChunks(11008, 4096));
        assertEquals(256L * 86, Quant4bitKernels.gemvChunks(4096, 11008));
    }
}
