package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.fail;

import dev.qlora4j.quant.Nf4Matmul;
import dev.qlora4j.quant.Quant4bit;
import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;
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
 * The v2 decode GEMV (native/nf4_gemv.cu, both decodes) and the v3 streaming kernel (Decode.V3_STREAM: rows &lt;= 4;
 * larger rows fall back to v2) against the CPU twin Nf4Matmul.linear: rows 1..16, odd N
 * (partial 16-row tiles), K a multiple of 64 (also not of 128: a partial last chunk; and K below the block's 8 x 128,
 * so some warps own no chunk), blocksizes 64/128/256, with and without double quantization, x in BF16/F16/F32, with
 * and without a bias. Outputs are poisoned (NaN) before each launch; fresh random data each run.
 *
 * <p>Tolerance per output element, as CudaQuant4bitLinearGpuTest: 1e-5 * sum_k |x_k w_k| (float32 order) plus two
 * quanta of the compute dtype and one of y's dtype at the reference value.
 *
 * <p>Plus an exact check: with x one-hot rows (x[m] = e_k), each output is a single product 1 * w, so y must equal
 * the CPU's rounded weight bit for bit (catches any k-order or nibble-order mistake that a tolerance could hide).
 */
@Tag("gpu")
class Nf4GemvV2GpuTest {
    private static CudaContext ctx;

    @BeforeAll
    static void open() { ctx = QuantGpuSupport.context(); }

    @AfterAll
    static void close() { if (ctx != null) ctx.close(); }

    static Stream<Arguments> cases() {
        List<Arguments> out = new ArrayList<>();
        // K % 128 != 0 (the general path of the pair / bnb kernels) and K % 128 == 0 (their aligned path, where K is
        // also a multiple of the blocksize; K = 128: one chunk, seven idle warps)
        int[][] shapes = {{147, 1344}, {77, 192}, {33, 4160}, {1001, 64}, {147, 1280}, {33, 4096}, {50, 128}, {1001, 384}};
        int[] blocksizes = {64, 128, 256};
        DType[] xds = {DType.BF16, DType.F16, DType.F32};
        int i = 0;
        for (int rows = 1; rows <= 16; rows++) {
            for (boolean nested : new boolean[] {false, true}) {
                int[] s = shapes[i % shapes.length];
                out.add(Arguments.of(s[0], s[1], rows, nested, blocksizes[i % 3], i % 2 == 0 ? DType.BF16 : DType.F16,
                        xds[(i / 2) % 3], i % 3 == 1 ? null : (i % 3 == 0 ? DType.BF16 : DType.F32)));
                i++;
            }
        }
        return out.stream();
    }

    @ParameterizedTest(name = "[{0}, {1}] rows={2} nested={3} bs={4} compute={5} x={6} bias={7}")
    @MethodSource("cases")
    void matchesNf4Matmul(int outF, int inF, int rows, boolean nested, int blocksize, DType compute, DType xd, DType biasD) {
        Random rnd = new Random();
        QuantType type = rnd.nextInt(4) == 0 ? QuantType.FP4 : QuantType.NF4;
        DType state = new DType[] {DType.BF16, DType.F16, DType.F32}[rnd.nextInt(3)];
        float[] w = QuantGpuSupport.randomWeights(rnd, outF, inF);
        QuantState4bit qs = Quant4bit.quantize(Tensor.fromFloats(w, state, outF, inF), type, blocksize, nested);
        float[] x = QuantGpuSupport.roundedTo(xd, QuantGpuSupport.gaussian(rnd, rows * inF, 1.0));
        float[] bias = biasD == null ? null : QuantGpuSupport.roundedTo(biasD, QuantGpuSupport.gaussian(rnd, outF, 0.5));
        float[] ref = Nf4Matmul.linear(x, rows, qs, bias, compute);
        double[] sumAbs = sumAbs(x, rows, qs, compute, state);
        String what = type + " nested=" + nested + " bs=" + blocksize + " state=" + state + " compute=" + compute + " x=" + xd
                + " bias=" + biasD + " [" + outF + ", " + inF + "] rows=" + rows;
        try (CudaQuant4bit q = (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, qs, compute);
             Tensor xc = QuantGpuSupport.upload(ctx, x, compute, rows, inF);
             Tensor bdev = bias == null ? null : QuantGpuSupport.upload(ctx, bias, biasD, outF);
             Tensor y = QuantGpuSupport.poisoned(ctx, xd, rows, outF)) {
            float[] table = null;
            for (Nf4GemvKernels.Decode decode : Nf4GemvKernels.Decode.values()) {
                if (decode == Nf4GemvKernels.Decode.BNB) continue;  // bitsandbytes' weights: bnbDecodeMatchesItsWeights
                if (decode == Nf4GemvKernels.Decode.CODE) continue;  // its own numerics: codeDecodeMatchesItsNumerics
                ctx.driver().memsetD8Async(CudaContext.ptr(y), (byte) 0xFF, y.byteSize(), ctx.stream());
                Nf4GemvKernels.gemv(ctx, q, xc, rows, bdev, y, decode);
                float[] got = ctx.download(y).toFloatArray();
                if (decode == Nf4GemvKernels.Decode.TABLE) table = got;
                if (decode == Nf4GemvKernels.Decode.PAIR) {
                    // the pair table holds the same factors and the kernel forms the same products in the same order
                    // (its rolled loop changes the loop's shape, not the order of the chunks)
                    for (int e = 0; e < got.length; e++) {
                        if (Float.floatToRawIntBits(got[e]) != Float.floatToRawIntBits(table[e])) {
                            fail(what + ": " + decode + " element " + e + " = " + got[e] + ", TABLE gave " + table[e]);
                        }
                    }
                }
                for (int e = 0; e < ref.length; e++) {
                    double want = QuantGpuSupport.round(xd, ref[e]);
                    double tol = 1e-5 * sumAbs[e] + 2 * QuantGpuSupport.quantum(compute, want) + QuantGpuSupport.quantum(xd, want);
                    if (!(Math.abs(got[e] - want) <= tol)) {
                        fail(what + " (" + decode + "): element " + e + " = " + got[e] + ", reference " + want + ", tolerance " + tol);
                    }
                }
            }
        }
    }

    static Stream<Arguments> exactCases() {
        return Stream.of(
                Arguments.of(77, 192, 1, false, 64, DType.BF16, DType.BF16),
                Arguments.of(1001, 4160, 1, true, 64, DType.BF16, DType.F16),
                Arguments.of(147, 1344, 3, false, 256, DType.F16, DType.BF16),
                Arguments.of(65, 8192, 4, false, 64, DType.BF16, DType.BF16),
                Arguments.of(147, 1344, 5, true, 128, DType.BF16, DType.BF16),
                Arguments.of(33, 4160, 9, false, 256, DType.F16, DType.F16),
                Arguments.of(50, 320, 16, true, 64, DType.F16, DType.BF16),
                Arguments.of(40, 256, 16, false, 64, DType.BF16, DType.F16),
                // the aligned path: nested and not, double rounding (state != compute), one chunk per row, rows 1..16
                Arguments.of(147, 1280, 1, true, 64, DType.BF16, DType.BF16),
                Arguments.of(33, 4096, 8, true, 128, DType.BF16, DType.F16),
                Arguments.of(50, 128, 3, true, 64, DType.F16, DType.BF16),
                Arguments.of(129, 2048, 2, false, 64, DType.F16, DType.F16),
                Arguments.of(300, 1536, 6, false, 256, DType.F16, DType.F16),
                Arguments.of(1001, 1024, 16, true, 256, DType.BF16, DType.BF16));
    }

    @ParameterizedTest(name = "[{0}, {1}] rows={2} nested={3} bs={4} compute={5} state={6}")
    @MethodSource("exactCases")
    void oneHotRowsGiveTheRoundedWeightsExactly(int outF, int inF, int rows, boolean nested, int blocksize, DType compute,
                                                DType state) {
        Random rnd = new Random();
        float[] w = QuantGpuSupport.randomWeights(rnd, outF, inF);
        QuantState4bit qs = Quant4bit.quantize(Tensor.fromFloats(w, state, outF, inF), QuantType.NF4, blocksize, nested);
        float[] deq = Quant4bit.dequantizeToF32(qs);
        float[] x = new float[rows * inF];
        int[] ks = new int[rows];
        for (int m = 0; m < rows; m++) {
            ks[m] = m == 0 ? inF - 1 : rnd.nextInt(inF);  // row 0: the last k (the partial last chunk)
            x[m * inF + ks[m]] = 1f;
        }
        try (CudaQuant4bit q = (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, qs, compute);
             Tensor xc = QuantGpuSupport.upload(ctx, x, compute, rows, inF);
             Tensor y = QuantGpuSupport.poisoned(ctx, DType.F32, rows, outF)) {
            for (Nf4GemvKernels.Decode decode : Nf4GemvKernels.Decode.values()) {
                if (decode == Nf4GemvKernels.Decode.BNB) continue;  // bitsandbytes' weights: bnbDecodeMatchesItsWeights
                if (decode == Nf4GemvKernels.Decode.CODE) continue;  // its own numerics: codeDecodeMatchesItsNumerics
                ctx.driver().memsetD8Async(CudaContext.ptr(y), (byte) 0xFF, y.byteSize(), ctx.stream());
                Nf4GemvKernels.gemv(ctx, q, xc, rows, null, y, decode);
                float[] got = ctx.download(y).toFloatArray();
                for (int m = 0; m < rows; m++) {
                    for (int o = 0; o < outF; o++) {
                        float want = QuantGpuSupport.round(compute, QuantGpuSupport.round(state, deq[o * inF + ks[m]]));
                        // +0 == -0: a zero weight times 1 plus zero products may carry either sign
                        if (!(got[m * outF + o] == want)) {
                            fail(decode + " compute=" + compute + " state=" + state + " nested=" + nested + " bs=" + blocksize
                                    + ": y[" + m + ", " + o + "] = " + got[m * outF + o] + ", weight [" + o + ", " + ks[m]
                                    + "] = " + want);
                        }
                    }
                }
            }
        }
    }

    /**
     * The BNB decode against bitsandbytes' batch-1 weights w = round_T(round_T(code) * round_T(absmax))
     * ({@link BnbBatch1Reference.Weights}), whose products with x the mma forms exactly (see {@link #checkAgainstWeights}).
     */
    @ParameterizedTest(name = "[{0}, {1}] rows={2} nested={3} bs={4} compute={5}")
    @MethodSource("exactCases")
    void bnbDecodeMatchesItsWeights(int outF, int inF, int rows, boolean nested, int blocksize, DType compute, DType state) {
        Random rnd = new Random();
        QuantState4bit qs = randomQuantized(rnd, outF, inF, nested, blocksize, state);
        BnbBatch1Reference.Weights bw = new BnbBatch1Reference.Weights(qs, compute);
        try (CudaQuant4bit q = (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, qs, compute)) {
            checkAgainstWeights(q, rows, compute, rnd, Nf4GemvKernels.Decode.BNB, bw::at, describe(qs, compute, rows));
        }
    }

    /**
     * The CODE decode against its numerics: y = sum over blocks of fl(absmax * sum_k x_k round_T(code_k)), i.e. x times
     * the weights round_T(code) * absmax with the products exact (see {@link #checkAgainstWeights}; the float32 product
     * there is within 2^-24 of the exact one, far inside the tolerance, and one-hot rows give it bit for bit). Where
     * the CODE kernel does not apply (K % 128 != 0, rows 9..16) the launcher takes the exact PAIR kernel: the TABLE
     * kernel's bits.
     */
    @ParameterizedTest(name = "[{0}, {1}] rows={2} nested={3} bs={4} compute={5}")
    @MethodSource("exactCases")
    void codeDecodeMatchesItsNumerics(int outF, int inF, int rows, boolean nested, int blocksize, DType compute, DType state) {
        Random rnd = new Random();
        QuantState4bit qs = randomQuantized(rnd, outF, inF, nested, blocksize, state);
        String what = describe(qs, compute, rows);
        try (CudaQuant4bit q = (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, qs, compute)) {
            if (rows > Nf4GemvKernels.CODE_MAX_ROWS || !Nf4GemvKernels.codeApplies(q)) {
                float[] x = QuantGpuSupport.roundedTo(compute, QuantGpuSupport.gaussian(rnd, rows * inF, 1.0));
                try (Tensor xc = QuantGpuSupport.upload(ctx, x, compute, rows, inF);
                     Tensor y = QuantGpuSupport.poisoned(ctx, compute, rows, outF)) {
                    Nf4GemvKernels.gemv(ctx, q, xc, rows, null, y, Nf4GemvKernels.Decode.CODE);
                    float[] got = ctx.download(y).toFloatArray();
                    Nf4GemvKernels.gemv(ctx, q, xc, rows, null, y, Nf4GemvKernels.Decode.TABLE);
                    float[] want = ctx.download(y).toFloatArray();
                    for (int e = 0; e < got.length; e++) {
                        if (Float.floatToRawIntBits(got[e]) != Float.floatToRawIntBits(want[e])) {
                            fail(what + ": CODE (not applicable) element " + e + " = " + got[e] + ", TABLE gave " + want[e]);
                        }
                    }
                }
                return;
            }
            float[] absmax = qs.dequantizedAbsmax();
            float[] codeT = new float[16];
            for (int c = 0; c < 16; c++) codeT[c] = QuantGpuSupport.round(compute, qs.quantType().dequantValue(c));
            MemorySegment packed = qs.weight().segment();
            WeightAt weight = (o, k) -> {
                long e = (long) o * inF + k;
                int b = packed.get(ValueLayout.JAVA_BYTE, e >> 1) & 0xFF;
                int code = (e & 1) == 0 ? b >> 4 : b & 15;  // high nibble = the even element
                return codeT[code] * absmax[(int) (e / blocksize)];
            };
            checkAgainstWeights(q, rows, compute, rnd, Nf4GemvKernels.Decode.CODE, weight, what);
        }
    }

    /** w [o, k] of a decode's own weights, as a float32 value. */
    @FunctionalInterface
    interface WeightAt { float at(int o, int k); }

    /**
     * A decode whose GEMV is x times its own weights with the products exact in float32: one-hot rows of x must give
     * round_T(w [o, k]) bit for bit (F32 output); random x with a bias (T output) must be within the float32
     * summation-order tolerance of the float64 sum, plus one quantum of T for the final rounding.
     */
    private static void checkAgainstWeights(CudaQuant4bit q, int rows, DType compute, Random rnd, Nf4GemvKernels.Decode decode,
                                            WeightAt weight, String what) {
        int outF = q.outFeatures(), inF = q.inFeatures();
        float[] hot = new float[rows * inF];
        int[] ks = new int[rows];
        for (int m = 0; m < rows; m++) {
            ks[m] = m == 0 ? inF - 1 : rnd.nextInt(inF);  // row 0: the last k
            hot[m * inF + ks[m]] = 1f;
        }
        float[] x = QuantGpuSupport.roundedTo(compute, QuantGpuSupport.gaussian(rnd, rows * inF, 1.0));
        float[] bias = QuantGpuSupport.roundedTo(compute, QuantGpuSupport.gaussian(rnd, outF, 0.5));
        try (Tensor hotc = QuantGpuSupport.upload(ctx, hot, compute, rows, inF);
             Tensor xc = QuantGpuSupport.upload(ctx, x, compute, rows, inF);
             Tensor bdev = QuantGpuSupport.upload(ctx, bias, compute, outF);
             Tensor yHot = QuantGpuSupport.poisoned(ctx, DType.F32, rows, outF);
             Tensor y = QuantGpuSupport.poisoned(ctx, compute, rows, outF)) {
            Nf4GemvKernels.gemv(ctx, q, hotc, rows, null, yHot, decode);
            float[] got = ctx.download(yHot).toFloatArray();
            for (int m = 0; m < rows; m++) {
                for (int o = 0; o < outF; o++) {
                    float want = QuantGpuSupport.round(compute, weight.at(o, ks[m]));
                    if (!(got[m * outF + o] == want)) {
                        fail(what + " (" + decode + "): one-hot y[" + m + ", " + o + "] = " + got[m * outF + o] + ", weight ["
                                + o + ", " + ks[m] + "] = " + want);
                    }
                }
            }
            Nf4GemvKernels.gemv(ctx, q, xc, rows, bdev, y, decode);
            got = ctx.download(y).toFloatArray();
            for (int m = 0; m < rows; m++) {
                for (int o = 0; o < outF; o++) {
                    double sum = 0, sumAbs = 0;
                    for (int k = 0; k < inF; k++) {
                        double p = (double) x[m * inF + k] * weight.at(o, k);
                        sum += p;
                        sumAbs += Math.abs(p);
                    }
                    double want = QuantGpuSupport.round(compute, (float) (sum + bias[o]));
                    double tol = 2e-5 * sumAbs + QuantGpuSupport.quantum(compute, want) + 1e-6 * Math.abs(bias[o]);
                    if (!(Math.abs(got[m * outF + o] - want) <= tol)) {
                        fail(what + " (" + decode + "): y[" + m + ", " + o + "] = " + got[m * outF + o] + ", reference " + want
                                + ", tolerance " + tol);
                    }
                }
            }
        }
    }

    /** NF4 (or FP4 one time in three) of random weights in the state dtype. */
    private static QuantState4bit randomQuantized(Random rnd, int outF, int inF, boolean nested, int blocksize, DType state) {
        QuantType type = rnd.nextInt(3) == 0 ? QuantType.FP4 : QuantType.NF4;
        float[] w = QuantGpuSupport.randomWeights(rnd, outF, inF);
        return Quant4bit.quantize(Tensor.fromFloats(w, state, outF, inF), type, blocksize, nested);
    }

    private static String describe(QuantState4bit qs, DType compute, int rows) {
        return qs.quantType() + " nested=" + qs.nested() + " bs=" + qs.blocksize() + " compute=" + compute
                + " [" + qs.shape()[0] + ", " + qs.shape()[1] + "] rows=" + rows;
    }

    @Test
    void kernelNamesAndGrid() {
        assertEquals("q4v2_gemv_bf16_m8", Nf4GemvKernels.kernelName(DType.BF16, 1, Nf4GemvKernels.Decode.TABLE));
        assertEquals("q4v2reg_gemv_f16_m16", Nf4GemvKernels.kernelName(DType.F16, 9, Nf4GemvKernels.Decode.REGISTERS));
        assertEquals("q4v2pair_gemv_bf16_m8", Nf4GemvKernels.kernelName(DType.BF16, 8, Nf4GemvKernels.Decode.PAIR));
        assertEquals("q4v2pair_gemv_f16_m16", Nf4GemvKernels.kernelName(DType.F16, 9, Nf4GemvKernels.Decode.PAIR));
        assertEquals("q4v2_gemv_f16_m16", Nf4GemvKernels.kernelName(DType.F16, 9, Nf4GemvKernels.Decode.TABLE));
        assertEquals("q4v2bnb_gemv_f16_m16", Nf4GemvKernels.kernelName(DType.F16, 16, Nf4GemvKernels.Decode.BNB));
        assertEquals("q4v2bnb_gemv_bf16_m8", Nf4GemvKernels.kernelName(DType.BF16, 1, Nf4GemvKernels.Decode.BNB));
        assertEquals("q4v2code_gemv_bf16_m4", Nf4GemvKernels.kernelName(DType.BF16, 4, Nf4GemvKernels.Decode.CODE));
        assertEquals("q4v2code_gemv_f16_m8", Nf4GemvKernels.kernelName(DType.F16, 5, Nf4GemvKernels.Decode.CODE));
        assertEquals("q4v2code_gemv_bf16_m16", Nf4GemvKernels.kernelName(DType.BF16, 9, Nf4GemvKernels.Decode.CODE));
        assertEquals("q4v2code_gemv_f16_m16", Nf4GemvKernels.kernelName(DType.F16, 16, Nf4GemvKernels.Decode.CODE));
        assertEquals(689, Nf4GemvKernels.grid(11009));
        assertEquals("q4v3_gemv_bf16_m1", Nf4GemvKernels.v3KernelName(DType.BF16, 1));
        assertEquals("q4v3_gemv_f16_m4", Nf4GemvKernels.v3KernelName(DType.F16, 3));
        assertEquals(2 * 4096, Nf4GemvKernels.v3SharedBytes(1, 4096));
        assertEquals(0, Nf4GemvKernels.v3SharedBytes(4, 8192));
    }

    /** sum_k |x_k * w_k| per output element, over the operands as rounded to the compute dtype, in float64. */
    private static double[] sumAbs(float[] x, int rows, QuantState4bit qs, DType compute, DType state) {
        int outF = qs.shape()[0], inF = qs.shape()[1];
        float[] w = Quant4bit.dequantizeToF32(qs);
        double[] s = new double[rows * outF];
        for (int o = 0; o < outF; o++) {
            for (int k = 0; k < inF; k++) {
                double wv = Math.abs(QuantGpuSupport.round(compute, QuantGpuSupport.round(state, w[o * inF + k])));
                for (int r = 0; r < rows; r++) s[r * outF + o] += Math.abs(QuantGpuSupport.round(compute, x[r * inF + k])) * wv;
            }
        }
        return s;
    }
}
