package dev.qlora4j.backend.cuda;

import dev.qlora4j.backend.cuda.LoraGemmReference.Product;
import dev.qlora4j.tensor.Half;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * {@link LoraGemmPlan} without a GPU: which kernel each LoRA product of the step gets, the grid (one wave of resident
 * blocks on an H200's 132 SMs, at least two K tiles per slice), the products it leaves to cuBLAS, and — through the
 * CPU twin of the kernels' summation ({@link LoraGemmReference#planned}) — that the plan's operand swap, strides and
 * K slices compute the product the caller asked for.
 */
class LoraGemmPlanTest {
    private static final int SMS = 132, COUNTERS = CudaContext.ARRIVAL_COUNTERS;

    private static LoraGemmPlan plan(boolean transA, boolean transB, int m, int n, int k, int lda, int ldb, int ldc) {
        return LoraGemmPlan.of(transA, transB, m, n, k, lda, ldb, ldc, true, COUNTERS, SMS);
    }

    @ParameterizedTest(name = "{0}")
    @CsvSource({
            // name, transA, transB, m, n, k, lda, ldb, ldc, kernel, swapped, rows, cols
            "gh q,           false, false, 2048, 16, 4096,  4096,  16,   48,   lora_gemm_am_bk_n16, false, 2048, 16",
            "gh gate,        false, false, 2048, 16, 11008, 11008, 16,   32,   lora_gemm_am_bk_n16, false, 2048, 16",
            "h o,            false, true,  2048, 16, 4096,  4096,  4096, 16,   lora_gemm_am_bn_n16, false, 2048, 16",
            "H fold qkv,     false, true,  2048, 48, 4096,  4096,  4096, 4160, lora_gemm_am_bn_n48, false, 2048, 48",
            "H fold gate/up, false, true,  2048, 32, 4096,  4096,  4096, 4160, lora_gemm_am_bn_n32, false, 2048, 32",
            "dB gate,        true,  false, 11008, 16, 2048, 11008, 32,   16,   lora_gemm_ak_bk_n16, false, 11008, 16",
            "dB r64,         true,  false, 4096, 64, 2048,  4096,  64,   64,   lora_gemm_ak_bk_n64, false, 4096, 64",
            "dA group qkv,   true,  false, 48, 4096, 2048,  48,    4096, 4096, lora_gemm_ak_bk_n48, true,  4096, 48",
            "dA down,        true,  false, 16, 11008, 2048, 16,    11008, 11008, lora_gemm_ak_bk_n16, true, 11008, 16",
            "rank 8,         false, false, 2048, 8, 4096,   4096,  8,    8,    lora_gemm_am_bk_n16, false, 2048, 8",
    })
    void stepProductsGetTheirKernel(String name, boolean transA, boolean transB, int m, int n, int k, int lda, int ldb, int ldc,
                                    String kernel, boolean swapped, int rows, int cols) {
        LoraGemmPlan p = plan(transA, transB, m, n, k, lda, ldb, ldc);
        assertNotNull(p, name);
        assertEquals(kernel, p.kernel(), name);
        assertEquals(swapped, p.swapped(), name);
        assertEquals(rows, p.rows(), name);
        assertEquals(cols, p.cols(), name);
        assertEquals(k, p.depth(), name);
        if (swapped) {
            assertEquals(1, p.ldcM(), name + ": C written transposed");
            assertEquals(ldc, p.ldcN(), name);
        } else {
            assertEquals(ldc, p.ldcM(), name);
            assertEquals(1, p.ldcN(), name);
        }
        int tiles = (k + 63) / 64;
        assertTrue(p.splits() >= 1 && p.splits() <= LoraGemmPlan.MAX_SPLITS, name);
        assertTrue(p.splits() == 1 || tiles / p.splits() >= 2, name + ": at least two K tiles per slice");
        assertEquals(p.rowBlocks() * p.splits(), p.blocks(), name);
        int resident = SMS * LoraGemmPlan.blocksPerSm(p.sharedBytes());
        assertTrue(p.blocks() <= Math.max(resident, p.rowBlocks()), name + ": one wave (" + p.blocks() + " blocks, " + resident + " resident)");
        assertTrue(p.blocks() * 2 > resident || p.splits() == Math.min(tiles / 2, LoraGemmPlan.MAX_SPLITS),
                name + ": the wave is at least half full unless K ran out of slices");
        assertTrue(p.sharedBytes() <= 227 * 1024, name);
        assertEquals(p.splits() == 1 ? 0 : (long) p.blocks() * 128 * p.paddedCols() / 2, p.partialFloats(), name);
    }

    @Test
    void sharedMemoryMatchesTheKernelsLayout() {
        // lora_gemm.cu: 4 stages of (64 x 144 B A tile + B tile); bn: NP rows of 144 B; bk: 64 rows of (NP / 8 + 1) x 16 B
        assertEquals(4 * (9216 + 16 * 144), plan(false, true, 2048, 16, 4096, 4096, 4096, 16).sharedBytes());
        assertEquals(4 * (9216 + 64 * 48), plan(false, false, 2048, 16, 4096, 4096, 16, 16).sharedBytes());
        assertEquals(4 * (9216 + 64 * 144), plan(false, true, 2048, 64, 4096, 4096, 4096, 64).sharedBytes());
        assertEquals(4 * (9216 + 64 * 112), plan(true, false, 4096, 48, 2048, 4096, 48, 48).sharedBytes());
    }

    @Test
    void productsTheKernelsDoNotTakeStayOnCublas() {
        assertNull(LoraGemmPlan.of(false, true, 2048, 16, 4096, 4096, 4096, 16, false, COUNTERS, SMS), "misaligned pointers");
        assertNull(plan(false, false, 2048, 4096, 16, 16, 4096, 4096), "gx = gh A: wide output, small k");
        assertNull(plan(false, true, 2048, 4096, 16, 16, 16, 4096), "y += s h B^T: wide output, small k");
        assertNull(plan(false, true, 2048, 72, 4096, 4096, 4096, 72), "rank side above 64");
        assertNull(plan(false, true, 2048, 12, 4096, 4096, 4096, 12), "rank side not a multiple of 8");
        assertNull(plan(false, true, 2048, 16, 4100, 4100, 4100, 16), "k not a multiple of 8 (16-byte rows)");
        assertNull(plan(false, false, 2048, 16, 4096, 4092, 16, 16), "lda not a multiple of 8");
        assertNull(plan(true, false, 4100, 16, 2048, 4100, 16, 16), "dB with out not a multiple of 8");
        assertNull(plan(true, true, 4096, 16, 2048, 4096, 2048, 16), "A and B both transposed: no call site");
        assertNull(plan(false, true, 0, 16, 4096, 4096, 4096, 16), "empty");
    }

    @Test
    void oneSliceWithoutEnoughCountersOrTiles() {
        assertEquals(1, LoraGemmPlan.of(false, true, 2048, 16, 4096, 4096, 4096, 16, true, 8, SMS).splits(), "32 row blocks, 8 counters");
        assertEquals(1, plan(false, true, 2048, 16, 120, 120, 120, 16).splits(), "two tiles: no split");
        assertEquals(1, plan(false, true, 1 << 16, 16, 4096, 4096, 4096, 16).splits(), "enough row blocks to fill the GPU");
    }

    /** Fresh random products of odd and step-like shapes: the plan, as launched, computes the caller's product. */
    @ParameterizedTest(name = "{0}")
    @CsvSource({
            "gh,            false, false, 300, 16, 520, 520, 16, 48",
            "gh rank 8,     false, false, 77, 8, 1032, 1032, 8, 8",
            "h,             false, true,  130, 48, 264, 264, 264, 56",
            "h fold-like,   false, true,  65, 32, 136, 136, 136, 200",
            "dB,            true,  false, 136, 16, 333, 136, 48, 16",
            "dB rank 64,    true,  false, 200, 64, 129, 200, 64, 64",
            "dA,            true,  false, 16, 264, 301, 16, 264, 264",
            "dA group,      true,  false, 48, 136, 1000, 48, 136, 136",
    })
    void plannedSummationComputesTheProduct(String name, boolean transA, boolean transB, int m, int n, int k, int lda, int ldb,
                                            int ldc) {
        Random rnd = new Random();
        // a small SM count so that even these shapes split K
        LoraGemmPlan plan = LoraGemmPlan.of(transA, transB, m, n, k, lda, ldb, ldc, true, COUNTERS, 64);
        assertNotNull(plan, name);
        for (float beta : new float[] {0f, 1f}) {
            Product p = new Product(transA, transB, m, n, k, lda, ldb, ldc, 0.5f + rnd.nextFloat(), beta);
            float[] a = bf16(rnd, p.aLength()), b = bf16(rnd, p.bLength()), c0 = bf16(rnd, p.cLength());
            float[] got = LoraGemmReference.planned(plan, p, a, b, c0);
            for (int i = 0; i < m; i++) {
                for (int j = 0; j < ldc; j++) {
                    int at = i * ldc + j;
                    if (j >= n) {
                        if (Float.floatToRawIntBits(got[at]) != Float.floatToRawIntBits(c0[at])) fail(name + ": padding written at " + i + "," + j);
                        continue;
                    }
                    double[] ref = LoraGemmReference.element(p, a, b, c0, i, j);
                    // float32 sums of at most k terms: |error| <= k 2^-24 sum|terms| (loose, but catches any wrong term)
                    double tol = (k + 2) * 0x1p-24 * ref[1] + 1e-30;
                    if (!(Math.abs(got[at] - ref[0]) <= tol)) {
                        fail(name + " beta " + beta + " splits " + plan.splits() + ": C[" + i + "," + j + "] = " + got[at] + ", want "
                                + ref[0] + " +- " + tol);
                    }
                }
            }
        }
        assertFalse(plan.kernel().isEmpty());
    }

    private static float[] bf16(Random rnd, int n) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) v[i] = Half.roundBf16((float) rnd.nextGaussian());
        return v;
    }
}
