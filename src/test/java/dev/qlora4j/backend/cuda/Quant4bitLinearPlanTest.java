package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Half;
import org.junit.jupiter.api.Test;

/** The host-side decisions of the 4-bit linear (no GPU): the prefill plan and the GEMV variant properties. */
class Quant4bitLinearPlanTest {
    private static final DType[] DTYPES = {DType.F32, DType.BF16, DType.F16};

    @Test
    void prefillWithBiasAccumulatesInFloat32AndAddsTheBiasBeforeTheOneRounding() {
        for (DType x : DTYPES) {
            for (DType compute : DTYPES) {
                CudaQuantOps.PrefillPlan p = CudaQuantOps.prefillPlan(x, compute, true);
                assertEquals(DType.F32, p.gemmOutput(), x + "/" + compute);
                assertTrue(p.biasEpilogue(), x + "/" + compute);
            }
        }
    }

    @Test
    void prefillWithoutBiasLetsTheGemmRoundToTheComputeDtype() {
        for (DType x : DTYPES) {
            for (DType compute : DTYPES) {
                CudaQuantOps.PrefillPlan p = CudaQuantOps.prefillPlan(x, compute, false);
                assertEquals(compute, p.gemmOutput(), x + "/" + compute);
                assertFalse(p.biasEpilogue(), x + "/" + compute);
            }
        }
    }

    @Test
    void roundingTheSumBeforeAddingTheBiasIsFarFromTheReference() {
        // why the bias is not the beta = 1 operand of a 16-bit GEMM: sum 1.0041504 + bias -1 in bf16
        float sum = 1.0f + 1.0f / 256 + 1.0f / 4096;  // float32 accumulator
        float bias = -1.0f;
        float reference = Half.roundBf16(sum + bias);                   // one rounding (Nf4Matmul, the epilogue)
        float twice = Half.roundBf16(Half.roundBf16(sum) + bias);      // GEMM output rounded, then the bias
        assertEquals(0.00415039f, reference, 1e-8f);
        assertEquals(0.0078125f, twice, 0f);  // bf16(sum) = 1.0078125
        // about 120 bf16 ulps of the result apart, beyond the linear tests' tolerance of 2 ulps + 1e-5 * sum |x w|
        assertTrue(Math.abs(reference - twice) > 8 * Math.ulp(reference) * 65536);
    }

    @Test
    void variantPropertyNamesTheThreeKernels() {
        assertEquals(Quant4bitKernels.GemvVariant.V2CODE, Quant4bitKernels.parseVariant(""));
        assertEquals(Quant4bitKernels.GemvVariant.V2, Quant4bitKernels.parseVariant("v2"));
        assertEquals(Quant4bitKernels.GemvVariant.V2REG, Quant4bitKernels.parseVariant(" V2reg "));
        assertEquals(Quant4bitKernels.GemvVariant.V2TABLE, Quant4bitKernels.parseVariant("v2table"));
        assertEquals(Quant4bitKernels.GemvVariant.V2BNB, Quant4bitKernels.parseVariant("v2bnb"));
        assertEquals(Quant4bitKernels.GemvVariant.V2CODE, Quant4bitKernels.parseVariant("v2code"));
        assertEquals(Quant4bitKernels.GemvVariant.HYBRID, Quant4bitKernels.parseVariant(" Hybrid "));
        assertEquals(Quant4bitKernels.GemvVariant.STREAM, Quant4bitKernels.parseVariant("stream"));
        assertEquals(Quant4bitKernels.GemvVariant.MMA, Quant4bitKernels.parseVariant("MMA"));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Quant4bitKernels.parseVariant("fast"));
        assertTrue(e.getMessage().contains("qlora4j.nf4.gemv") && e.getMessage().contains("'fast'"), e.getMessage());
    }

    @Test
    void hybridPeriodIsAPositiveChunkCount() {
        assertEquals(1, Quant4bitKernels.parseHybridPeriod("1"));
        assertEquals(3, Quant4bitKernels.parseHybridPeriod(" 3 "));
        for (String bad : new String[] {"0", "-2", "65", "x", ""}) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Quant4bitKernels.parseHybridPeriod(bad));
            assertTrue(e.getMessage().contains("qlora4j.nf4.hybridPeriod"), e.getMessage());
        }
    }
}
