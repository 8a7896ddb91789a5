package dev.qlora4j.backend.cuda;

import dev.qlora4j.backend.cuda.LoraGemmReference.Product;
import dev.qlora4j.cuda.Cublas;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Half;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * native/lora_gemm.cu through {@link LoraGemmKernels} against its CPU twin {@link LoraGemmReference} on fresh random
 * data each run: the Llama-7B step's LoRA products (tokens 2048, in / out 4096 and 11008, ranks 16 / 32 / 48 / 64, C
 * with a row stride wider than the product where the call sites have one) and odd shapes (tokens and features not a
 * multiple of the 64-row / 64-k tiles, rank 8 / 24 / 40 / 56, a handful of tokens).
 *
 * <p>Outputs: with beta = 0, C is poisoned (0xFF bytes: NaN) before each launch, so an element not written (or read
 * while beta = 0) shows; with beta = 1, C holds random values. Columns past n (ldc &gt; n) must come back unchanged.
 * Tolerance per element, against the float64 sum of the exact float32 products:
 * <ul>
 *   <li>F32 C: 2e-5 sum |alpha a b| + 2^-22 |beta c0|: only the order of the float32 sums differs (k <= 11008 terms
 *       in chains of mma k16 steps, then at most 32 slice partials; random-signed terms give errors ~sqrt(k) 2^-24, far
 *       below 2e-5 of the magnitude sum), plus the rounding of the final add;</li>
 *   <li>BF16 C: that, plus one BF16 quantum at the reference (the one final rounding may land either side).</li>
 * </ul>
 * Large shapes are checked on 4096 sampled elements (every row block / slice reduction is among them with high
 * probability, and the last row and column always), small ones completely. Determinism: a second launch gives the
 * same bits.
 */
@Tag("gpu")
class LoraGemmGpuTest {
    private static CudaContext ctx;

    @BeforeAll
    static void open() { ctx = QuantGpuSupport.context(); }

    @AfterAll
    static void close() { if (ctx != null) ctx.close(); }

    @ParameterizedTest(name = "{0}")
    @CsvSource({
            // name, transA, transB, m, n, k, lda, ldb, ldc, F32 C, alpha, beta
            "gh q (out 4096 r16 into GH48),   false, false, 2048, 16, 4096,  4096,  16,    48,    false, 2.0, 0",
            "gh gate (out 11008 r16),         false, false, 2048, 16, 11008, 11008, 16,    32,    false, 2.0, 0",
            "gh r64,                          false, false, 2048, 64, 4096,  4096,  64,    64,    false, 0.5, 0",
            "h o (in 4096 r16),               false, true,  2048, 16, 4096,  4096,  4096,  16,    false, 1.0, 0",
            "h down (in 11008 r16),           false, true,  2048, 16, 11008, 11008, 11008, 16,    false, 1.0, 0",
            "H fold qkv (R48 into X'),        false, true,  2048, 48, 4096,  4096,  4096,  4160,  false, 1.0, 0",
            "H fold gate/up (R32),            false, true,  2048, 32, 4096,  4096,  4096,  4160,  false, 1.0, 0",
            "dB q (out 4096, kept H48),       true,  false, 4096, 16, 2048,  4096,  48,    16,    true,  2.0, 1",
            "dB gate (out 11008, kept H32),   true,  false, 11008, 16, 2048, 11008, 32,    16,    true,  2.0, 1",
            "dB r64,                          true,  false, 4096, 64, 2048,  4096,  64,    64,    true,  2.0, 1",
            "dA o (in 4096 r16),              true,  false, 16, 4096, 2048,  16,    4096,  4096,  true,  1.0, 1",
            "dA down (in 11008 r16),          true,  false, 16, 11008, 2048, 16,    11008, 11008, true,  1.0, 1",
            "dA group qkv (R48, beta 0),      true,  false, 48, 4096, 2048,  48,    4096,  4096,  true,  1.0, 0",
            "dA group gate/up (R32, beta 0),  true,  false, 32, 4096, 2048,  32,    4096,  4096,  true,  1.0, 0",
            "odd gh m1000 k520 r8,            false, false, 1000, 8, 520,    520,   8,     8,     false, 2.0, 0",
            "odd gh m77 k4104 r24 ldc40,      false, false, 77, 24, 4104,    4104,  24,    40,    false, 2.0, 0",
            "odd h m1001 k136 r40,            false, true,  1001, 40, 136,   136,   136,   40,    false, 1.0, 0",
            "odd h m2047 k11008 r56 ldc64,    false, true,  2047, 56, 11008, 11008, 11008, 64,    false, 1.0, 0",
            "odd h m5 k64 r16,                false, true,  5, 16, 64,       64,    64,    16,    false, 1.0, 0",
            "odd dB out1000 n999 r8,          true,  false, 1000, 8, 999,    1000,  16,    8,     true,  2.0, 1",
            "odd dB out4104 n33 r48,          true,  false, 4104, 48, 33,    4104,  48,    48,    true,  2.0, 1",
            "odd dA in1048 n1001 r24,         true,  false, 24, 1048, 1001,  24,    1048,  1048,  true,  1.0, 1",
            "odd dA in520 n2047 r64 beta0,    true,  false, 64, 520, 2047,   64,    520,   520,   true,  1.0, 0",
    })
    void matchesTheCpuTwinAndIsDeterministic(String name, boolean transA, boolean transB, int m, int n, int k, int lda, int ldb,
                                             int ldc, boolean f32, float alpha, float beta) {
        Random rnd = new Random();
        Product p = new Product(transA, transB, m, n, k, lda, ldb, ldc, alpha, beta);
        float[] a = gaussian(rnd, p.aLength(), 1.0), b = gaussian(rnd, p.bLength(), 0.1), c0 = gaussian(rnd, p.cLength(), 1.0);
        DType cType = f32 ? DType.F32 : DType.BF16;
        if (!f32) c0 = QuantGpuSupport.roundedTo(DType.BF16, c0);
        float[] first, second;
        try (Tensor ad = QuantGpuSupport.upload(ctx, a, DType.BF16, p.aLength());
             Tensor bd = QuantGpuSupport.upload(ctx, b, DType.BF16, p.bLength());
             Tensor cd = ctx.empty(cType, p.cLength())) {
            first = run(p, ad, bd, cd, c0, cType, name);
            second = run(p, ad, bd, cd, c0, cType, name);
        }
        assertArrayEquals(first, second, name + ": two launches must give the same bits");
        boolean full = (long) m * n <= 200_000;
        int samples = full ? m * n : 4096;
        for (int s = 0; s < samples; s++) {
            int i = full ? s / n : s == 0 ? m - 1 : rnd.nextInt(m), j = full ? s % n : s == 0 ? n - 1 : rnd.nextInt(n);
            double[] ref = LoraGemmReference.element(p, a, b, c0, i, j);
            double tol = 2e-5 * ref[1] + 0x1p-22 * Math.abs(beta * c0[i * ldc + j]) + (f32 ? 0 : QuantGpuSupport.quantum(DType.BF16, ref[0]))
                    + 1e-30;
            float got = first[i * ldc + j];
            if (!(Math.abs(got - ref[0]) <= tol)) fail(name + ": C[" + i + "," + j + "] = " + got + ", reference " + ref[0] + " +- " + tol);
        }
        // columns past n: as they were (poison with beta = 0, c0 with beta = 1)
        for (int i = 0; i < m; i += Math.max(1, m / 97)) {
            for (int j = n; j < ldc; j++) {
                float got = first[i * ldc + j], want = beta == 0 ? Float.NaN : c0[i * ldc + j];
                if (Float.floatToIntBits(got) != Float.floatToIntBits(want)) fail(name + ": padding C[" + i + "," + j + "] written: " + got);
            }
        }
    }

    /** C set (poisoned for beta = 0, else c0), the kernel launched, C returned as floats. */
    private static float[] run(Product p, Tensor a, Tensor b, Tensor c, float[] c0, DType cType, String name) {
        if (p.beta() == 0f) {
            ctx.driver().memsetD8Async(CudaContext.ptr(c), (byte) 0xFF, c.byteSize(), ctx.stream());
        } else {
            try (Tensor init = QuantGpuSupport.upload(ctx, c0, cType, c0.length)) {
                ctx.driver().memcpyDtoDAsync(CudaContext.ptr(c), CudaContext.ptr(init), c.byteSize(), ctx.stream());
                ctx.synchronize();
            }
        }
        boolean launched = LoraGemmKernels.tryLaunch(ctx, p.transA(), p.transB(), p.m(), p.n(), p.k(), p.alpha(), CudaContext.ptr(a),
                p.lda(), CudaContext.ptr(b), p.ldb(), p.beta(), CudaContext.ptr(c), p.ldc(),
                cType == DType.F32 ? Cublas.DataType.F32 : Cublas.DataType.BF16);
        assertTrue(launched, name + ": the plan should take this product");
        return ctx.download(c).toFloatArray();
    }

    /** A product the kernels do not take (k not a multiple of 8) goes to cuBLAS through LoraGemmKernels.gemm, correctly. */
    @Test
    void unsupportedShapesFallBackToCublas() {
        Random rnd = new Random();
        int m = 300, n = 16, k = 1002;
        Product p = new Product(false, true, m, n, k, k, k, n, 1f, 0f);
        float[] a = gaussian(rnd, p.aLength(), 1.0), b = gaussian(rnd, p.bLength(), 0.1);
        try (Tensor ad = QuantGpuSupport.upload(ctx, a, DType.BF16, p.aLength());
             Tensor bd = QuantGpuSupport.upload(ctx, b, DType.BF16, p.bLength());
             Tensor cd = QuantGpuSupport.poisoned(ctx, DType.F32, p.cLength())) {
            assertFalse(LoraGemmKernels.tryLaunch(ctx, false, true, m, n, k, 1f, CudaContext.ptr(ad), k, CudaContext.ptr(bd), k, 0f,
                    CudaContext.ptr(cd), n, Cublas.DataType.F32));
            LoraGemmKernels.gemm(ctx, false, true, m, n, k, 1f, CudaContext.ptr(ad), k, CudaContext.ptr(bd), k, 0f, CudaContext.ptr(cd), n,
                    Cublas.DataType.F32);
            float[] got = ctx.download(cd).toFloatArray();
            for (int i = 0; i < m; i++) {
                for (int j = 0; j < n; j++) {
                    double[] ref = LoraGemmReference.element(p, a, b, new float[p.cLength()], i, j);
                    if (!(Math.abs(got[i * n + j] - ref[0]) <= 2e-5 * ref[1] + 1e-30)) fail("fallback C[" + i + "," + j + "] = " + got[i * n + j]);
                }
            }
        }
    }

    private static float[] gaussian(Random rnd, int len, double scale) {
        float[] v = new float[len];
        for (int i = 0; i < len; i++) v[i] = Half.roundBf16((float) (rnd.nextGaussian() * scale));
        return v;
    }
}
