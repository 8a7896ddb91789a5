package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.tensor.DType;

import org.junit.jupiter.api.Test;

/**
 * The v7 launcher's geometry and applicability (no GPU). It must mirror native/nf4_gemv5.cuh (threads_for, pieces_for
 * with D = 2: one 32-value piece per thread up to 1024 threads, two up to in = 65536) and the bench's grid rule
 * (min(out, min(8, fit) x SMs)), or the kernel would leave pieces of a row unread.
 */
class Nf4Gemv7KernelsTest {
    @Test
    void threadsAreOnePieceOf32ValuesEachRoundedUpToAWarp() {
        assertEquals(128, Nf4Gemv7Kernels.threads(4096));     // 128 pieces
        assertEquals(352, Nf4Gemv7Kernels.threads(11008));    // 344 pieces: the last warp 24 of 32
        assertEquals(896, Nf4Gemv7Kernels.threads(28672));
        assertEquals(32, Nf4Gemv7Kernels.threads(32));
        assertEquals(1024, Nf4Gemv7Kernels.threads(32768));   // the largest one-piece block
        assertEquals(1, Nf4Gemv7Kernels.piecesPerThread(32768));
        // two pieces per thread above 32768: ceil(pieces / 2) rounded up to a warp
        assertEquals(2, Nf4Gemv7Kernels.piecesPerThread(32768 + 32));
        assertEquals(544, Nf4Gemv7Kernels.threads(33024));    // 1032 pieces -> 516 -> 544
        assertEquals(1024, Nf4Gemv7Kernels.threads(65536));
        assertThrows(IllegalArgumentException.class, () -> Nf4Gemv7Kernels.piecesPerThread(65536 + 32));
    }

    @Test
    void blocksPerSmAreTheRegisterFitCappedAt8() {
        // 64 registers per thread: 32 warps per SM
        assertEquals(8, Nf4Gemv7Kernels.blocksPerSm(128));    // 4 warps: 8 fit, the b8 cap
        assertEquals(8, Nf4Gemv7Kernels.blocksPerSm(32));
        assertEquals(2, Nf4Gemv7Kernels.blocksPerSm(352));    // 11 warps
        assertEquals(1, Nf4Gemv7Kernels.blocksPerSm(896));
        assertEquals(1, Nf4Gemv7Kernels.blocksPerSm(1024));
        assertEquals(1056, Nf4Gemv7Kernels.grid(132, 4096, 4096));
        assertEquals(264, Nf4Gemv7Kernels.grid(132, 4096, 11008));
        assertEquals(132, Nf4Gemv7Kernels.grid(132, 8192, 28672));
        assertEquals(77, Nf4Gemv7Kernels.grid(132, 77, 4096));  // never more blocks than rows
        assertEquals(1, Nf4Gemv7Kernels.grid(132, 1, 320));
    }

    @Test
    void kernelNames() {
        assertEquals("q4v7_gemv_bf16_p1", Nf4Gemv7Kernels.kernelName(DType.BF16, 4096));
        assertEquals("q4v7_gemv_f16_p1", Nf4Gemv7Kernels.kernelName(DType.F16, 32768));
        assertEquals("q4v7_gemv_f16_p2", Nf4Gemv7Kernels.kernelName(DType.F16, 33024));
        assertThrows(IllegalArgumentException.class, () -> Nf4Gemv7Kernels.kernelName(DType.F32, 4096));
    }

    @Test
    void v7TakesOnlyOneRowOf16BitComputeWithTheKernelsLayout() {
        assertTrue(Nf4Gemv7Kernels.supports(DType.BF16, 1, 4096, 64, null, DType.BF16));
        assertTrue(Nf4Gemv7Kernels.supports(DType.F16, 1, 65536, 32, DType.F16, DType.F16));
        assertFalse(Nf4Gemv7Kernels.supports(DType.BF16, 2, 4096, 64, null, DType.BF16));    // rows > 1
        assertFalse(Nf4Gemv7Kernels.supports(DType.F32, 1, 4096, 64, null, DType.F32));     // f32 compute
        assertFalse(Nf4Gemv7Kernels.supports(DType.BF16, 1, 4112, 64, null, DType.BF16));    // in % 32 != 0
        assertFalse(Nf4Gemv7Kernels.supports(DType.BF16, 1, 65568, 64, null, DType.BF16));   // in > 65536
        assertFalse(Nf4Gemv7Kernels.supports(DType.BF16, 1, 4096, 16, null, DType.BF16));    // blocksize < 32
        assertFalse(Nf4Gemv7Kernels.supports(DType.BF16, 1, 4096, 96, null, DType.BF16));    // not a power of two
        assertFalse(Nf4Gemv7Kernels.supports(DType.BF16, 1, 4096, 64, null, DType.F32));     // y not T
        assertFalse(Nf4Gemv7Kernels.supports(DType.BF16, 1, 4096, 64, DType.F16, DType.BF16)); // bias not T
    }

    @Test
    void theVariantPropertyNamesV7() {
        assertEquals(Quant4bitKernels.GemvVariant.V7, Quant4bitKernels.parseVariant(" V7"));
        assertEquals(Quant4bitKernels.GemvVariant.V2, Quant4bitKernels.parseVariant("v2"));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Quant4bitKernels.parseVariant("v8"));
        assertTrue(e.getMessage().contains("v7") && e.getMessage().contains("'v8'"), e.getMessage());
    }
}
