package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.quant.Quant4bit;
import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Random;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The v7 decode GEMV (native/nf4_gemv7.cu, {@link Nf4Gemv7Kernels}, one row of x) against its CPU twin
 * {@link BnbBatch1Reference} (bitsandbytes' batch-1 numerics), on fresh random data each run, outputs poisoned (NaN)
 * before each launch: BF16 and F16 compute, double quantization on and off, blocksizes 64/128/256, in = 4096 and 11008
 * (one piece per thread, partial last warp at 11008), 28672 (896 threads), 33024 (two pieces per thread, the last warp
 * partly idle in the second piece), and small shapes; odd out, with more rows than the grid has blocks (rows taken
 * grid-stride, the load ring across iterations) and fewer (idle blocks); with and without a bias.
 *
 * <p>Checks, as the bench's "bnb" checks (native/bench/nf4_gemv_bench.cu, check_variant):
 * <ul>
 *   <li>one-hot x (x = e_k, no bias) must give round_T(round_T(code) * round_T(absmax)) of weight [o, k] bit for bit
 *       (the other products are zeros): catches any k, nibble, absmax-block or table mistake;</li>
 *   <li>random x with a bias: |y - ref| &lt;= max(2^-p |ref|, one quantum of T at ref) + 2e-5 sum_k |p_k|, p = 7 (bf16) or
 *       10 (f16). Every product p_k is bit-identical to the reference's (both are the exact product of two T values
 *       rounded once to T), so only the order of the float32 sums differs: at most a few tens of float32 additions
 *       per chain (16 per thread piece, 5 shuffle steps, one per warp), i.e. well under 2e-5 sum |p_k|; then the final
 *       rounding to T can land one quantum of T away from the reference's (the first term).</li>
 * </ul>
 * Plus: rows &gt; 1 and unsupported calls (y or bias not in the compute dtype, in &gt; 65536) fall back to v2 with v2's
 * results bit for bit, and the public linear follows -Dqlora4j.nf4.gemv=v7.
 */
@Tag("gpu")
class Nf4GemvV7GpuTest {
    private static CudaContext ctx;

    @BeforeAll
    static void open() { ctx = QuantGpuSupport.context(); }

    @AfterAll
    static void close() { if (ctx != null) ctx.close(); }

    static Stream<Arguments> cases() {
        // out, in, blocksize, nested, compute, bias dtype (null = none), type
        return Stream.of(
                Arguments.of(2501, 4096, 64, false, DType.BF16, DType.BF16, QuantType.NF4),
                Arguments.of(2501, 4096, 128, true, DType.F16, null, QuantType.NF4),
                Arguments.of(1001, 11008, 256, true, DType.BF16, null, QuantType.NF4),
                Arguments.of(1001, 11008, 64, false, DType.F16, DType.F16, QuantType.NF4),
                Arguments.of(301, 28672, 128, false, DType.BF16, DType.BF16, QuantType.NF4),
                Arguments.of(301, 28672, 64, true, DType.F16, null, QuantType.NF4),
                Arguments.of(267, 33024, 256, false, DType.F16, DType.F16, QuantType.NF4),
                Arguments.of(267, 33024, 64, true, DType.BF16, null, QuantType.NF4),
                Arguments.of(77, 320, 64, true, DType.BF16, DType.BF16, QuantType.FP4),
                Arguments.of(1, 4096, 128, false, DType.F16, DType.F16, QuantType.NF4),
                Arguments.of(4099, 1344, 256, true, DType.F16, DType.F16, QuantType.FP4));
    }

    @ParameterizedTest(name = "[{0}, {1}] bs={2} nested={3} compute={4} bias={5} {6}")
    @MethodSource("cases")
    void matchesBnbBatch1Reference(int outF, int inF, int blocksize, boolean nested, DType compute, DType biasD, QuantType type) {
        Random rnd = new Random();
        DType state = new DType[] {DType.BF16, DType.F16, DType.F32}[rnd.nextInt(3)];  // v7 ignores the state dtype
        QuantState4bit qs = Quant4bit.quantize(Tensor.fromFloats(QuantGpuSupport.randomWeights(rnd, outF, inF), state, outF, inF),
                type, blocksize, nested);
        String what = type + " state=" + state + " compute=" + compute + " nested=" + nested + " bs=" + blocksize + " bias="
                + biasD + " [" + outF + ", " + inF + "]";
        assertTrue(Nf4Gemv7Kernels.supports(compute, 1, inF, blocksize, biasD, compute), what);
        BnbBatch1Reference.Weights wref = new BnbBatch1Reference.Weights(qs, compute);
        try (CudaQuant4bit q = (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, qs, compute);
             Tensor y = QuantGpuSupport.poisoned(ctx, compute, 1, outF)) {
            // one-hot x: y[o] is weight [o, k] exactly; the last k (the last piece of the row) and a random k
            for (int k : new int[] {inF - 1, rnd.nextInt(inF)}) {
                float[] x = new float[inF];
                x[k] = 1f;
                try (Tensor xc = QuantGpuSupport.upload(ctx, x, compute, 1, inF)) {
                    float[] got = run(q, xc, null, y);
                    for (int o = 0; o < outF; o++) {
                        float want = wref.at(o, k);
                        if (!(got[o] == want)) fail(what + " one-hot k=" + k + ": y[" + o + "] = " + got[o] + ", weight " + want);
                    }
                }
            }
            // random x and bias
            float[] x = QuantGpuSupport.roundedTo(compute, QuantGpuSupport.gaussian(rnd, inF, 1.0));
            float[] bias = biasD == null ? null : QuantGpuSupport.roundedTo(biasD, QuantGpuSupport.gaussian(rnd, outF, 0.5));
            BnbBatch1Reference.Result ref = BnbBatch1Reference.linear(x, qs, bias, compute);
            try (Tensor xc = QuantGpuSupport.upload(ctx, x, compute, 1, inF);
                 Tensor bdev = bias == null ? null : QuantGpuSupport.upload(ctx, bias, biasD, outF)) {
                float[] got = run(q, xc, bdev, y);
                int p = compute == DType.F16 ? 10 : 7;
                for (int o = 0; o < outF; o++) {
                    double want = ref.y()[o];
                    double tol = Math.max(Math.scalb(Math.abs(want), -p), QuantGpuSupport.quantum(compute, want))
                            + 2e-5 * ref.sumAbs()[o];
                    if (!(Math.abs(got[o] - want) <= tol)) {
                        fail(what + " random x: y[" + o + "] = " + got[o] + ", reference " + want + ", tolerance " + tol);
                    }
                }
            }
        }
    }

    /** Poisons y, launches v7 directly, returns y. */
    private static float[] run(CudaQuant4bit q, Tensor xc, Tensor bias, Tensor y) {
        ctx.driver().memsetD8Async(CudaContext.ptr(y), (byte) 0xFF, y.byteSize(), ctx.stream());
        Nf4Gemv7Kernels.gemv(ctx, q, xc, 1, bias, y);
        return ctx.download(y).toFloatArray();
    }

    static Stream<Arguments> fallbackCases() {
        // out, in, rows, compute, bias dtype, y dtype: each is a call v7 does not take
        return Stream.of(
                Arguments.of(301, 4096, 2, DType.BF16, null, DType.BF16),          // rows > 1
                Arguments.of(301, 4096, 16, DType.F16, DType.F16, DType.F16),
                Arguments.of(301, 4096, 1, DType.BF16, null, DType.F32),           // y not in the compute dtype
                Arguments.of(301, 4096, 1, DType.F16, DType.F32, DType.F16),       // bias not in the compute dtype
                Arguments.of(5, 65536 + 32, 1, DType.BF16, null, DType.BF16));     // in > 65536
    }

    @ParameterizedTest(name = "[{0}, {1}] rows={2} compute={3} bias={4} y={5}")
    @MethodSource("fallbackCases")
    void unsupportedCallsFallBackToV2(int outF, int inF, int rows, DType compute, DType biasD, DType yd) {
        Random rnd = new Random();
        QuantState4bit qs = Quant4bit.quantize(Tensor.fromFloats(QuantGpuSupport.randomWeights(rnd, outF, inF), DType.BF16, outF, inF),
                QuantType.NF4, 64, rnd.nextBoolean());
        float[] x = QuantGpuSupport.roundedTo(compute, QuantGpuSupport.gaussian(rnd, rows * inF, 1.0));
        float[] bias = biasD == null ? null : QuantGpuSupport.roundedTo(biasD, QuantGpuSupport.gaussian(rnd, outF, 0.5));
        try (CudaQuant4bit q = (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, qs, compute);
             Tensor xc = QuantGpuSupport.upload(ctx, x, compute, rows, inF);
             Tensor bdev = bias == null ? null : QuantGpuSupport.upload(ctx, bias, biasD, outF);
             Tensor yV7 = QuantGpuSupport.poisoned(ctx, yd, rows, outF);
             Tensor yV2 = QuantGpuSupport.poisoned(ctx, yd, rows, outF)) {
            assertFalse(Nf4Gemv7Kernels.applies(q, rows, bdev, yV7));
            Quant4bitKernels.gemv(ctx, q, xc, rows, bdev, yV7, Quant4bitKernels.GemvVariant.V7);
            Nf4GemvKernels.gemv(ctx, q, xc, rows, bdev, yV2, Nf4GemvKernels.Decode.TABLE);
            assertBitIdentical(ctx.download(yV2).toFloatArray(), ctx.download(yV7).toFloatArray(), "v7 fallback");
        }
    }

    @Test
    void publicLinearFollowsTheV7Property() {
        Random rnd = new Random();
        int outF = 1003, inF = 4096;
        DType compute = DType.BF16;
        QuantState4bit qs = Quant4bit.quantize(Tensor.fromFloats(QuantGpuSupport.randomWeights(rnd, outF, inF), DType.BF16, outF, inF),
                QuantType.NF4, 64, true);
        float[] x = QuantGpuSupport.roundedTo(compute, QuantGpuSupport.gaussian(rnd, 3 * inF, 1.0));
        float[] bias = QuantGpuSupport.roundedTo(compute, QuantGpuSupport.gaussian(rnd, outF, 0.5));
        try (var before = TemporaryProperty.set(Quant4bitKernels.GEMV_VARIANT_PROPERTY, "v7");
             CudaQuant4bit q = (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, qs, compute);
             Tensor x1 = QuantGpuSupport.upload(ctx, java.util.Arrays.copyOf(x, inF), compute, 1, inF);
             Tensor x3 = QuantGpuSupport.upload(ctx, x, compute, 3, inF);
             Tensor b = QuantGpuSupport.upload(ctx, bias, compute, outF);
             Tensor y1 = QuantGpuSupport.poisoned(ctx, compute, 1, outF);
             Tensor y3 = QuantGpuSupport.poisoned(ctx, compute, 3, outF);
             Tensor got1 = CudaQuantOps.linear(ctx, x1, q, b);
             Tensor got3 = CudaQuantOps.linear(ctx, x3, q, b)) {
            Nf4Gemv7Kernels.gemv(ctx, q, x1, 1, b, y1);
            Nf4GemvKernels.gemv(ctx, q, x3, 3, b, y3, Nf4GemvKernels.Decode.TABLE);
            assertBitIdentical(ctx.download(y1).toFloatArray(), ctx.download(got1).toFloatArray(), "linear, 1 row, v7");
            assertBitIdentical(ctx.download(y3).toFloatArray(), ctx.download(got3).toFloatArray(), "linear, 3 rows, v2");
        }
    }

    private static void assertBitIdentical(float[] want, float[] got, String what) {
        for (int i = 0; i < want.length; i++) {
            if (Float.isNaN(got[i]) || Float.floatToRawIntBits(got[i]) != Float.floatToRawIntBits(want[i])) {
                fail(what + ": element " + i + " = " + got[i] + ", expected " + want[i]);
            }
        }
    }
}
