package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.fail;

import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.quant.Nf4Matmul;
import dev.qlora4j.quant.Quant4bit;
import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The 4-bit linear (every tensor-core GEMV variant: v2, v2reg, hybrid, stream, mma, and the streaming kernel with all chunks
 * decoded in registers; the SIMT GEMV; dequantize + cuBLAS with and without the bias epilogue) against
 * Nf4Matmul.linear.
 *
 * <p>Tolerance, per output element: |gpu - ref| <= 1e-5 * sum_k |x_k * w_k| + q(compute) + q(x dtype), where
 * the sum runs over the operands as both sides round them (x and w rounded to the compute dtype the same
 * way, so the products agree exactly) and q(d) is one unit in the last place of d at the reference value:
 * the two sides add the same products in a different order (float32, tensor-core or cuBLAS accumulation),
 * and a sum near a rounding boundary of the compute dtype may round to either neighbour.
 * Every output element is checked (outputs poisoned with NaN before the launch); fresh random data each run.
 */
@Tag("gpu")
class CudaQuant4bitLinearGpuTest {
    private static CudaContext ctx;

    @BeforeAll
    static void open() { ctx = QuantGpuSupport.context(); }

    @AfterAll
    static void close() { if (ctx != null) ctx.close(); }

    static Stream<Arguments> gemvCases() {
        List<Arguments> out = new ArrayList<>();
        int[][] shapes = {{96, 256}, {200, 1056}, {61, 4128}, {37, 91}, {48, 100}};
        for (int[] s : shapes)
            for (int rows : new int[] {1, 3, 16})
                for (DType compute : new DType[] {DType.BF16, DType.F16, DType.F32})
                    out.add(Arguments.of(s[0], s[1], rows, compute));
        return out.stream();
    }

    @ParameterizedTest(name = "[{0}, {1}] rows={2} compute={3}")
    @MethodSource("gemvCases")
    void gemvMatchesNf4Matmul(int outF, int inF, int rows, DType compute) {
        Random rnd = new Random();
        // vary the rest at random so each run covers other combinations
        QuantType type = rnd.nextBoolean() ? QuantType.NF4 : QuantType.FP4;
        boolean nested = rnd.nextBoolean();
        int blocksize = new int[] {64, 128, 256}[rnd.nextInt(3)];
        DType state = new DType[] {DType.F32, DType.BF16, DType.F16}[rnd.nextInt(3)];
        DType xd = rnd.nextBoolean() ? DType.BF16 : DType.F32;
        DType biasD = new DType[] {null, DType.F32, DType.BF16}[rnd.nextInt(3)];
        check(outF, inF, rows, compute, type, nested, blocksize, state, xd, biasD, rnd);
    }

    static Stream<Arguments> fixedCases() {
        // the double-rounding paths and every x/bias dtype at least once, deterministic choices
        return Stream.of(
                Arguments.of(128, 512, 4, DType.BF16, DType.F16, DType.BF16, DType.BF16),
                Arguments.of(128, 512, 9, DType.F16, DType.BF16, DType.F32, DType.F32),
                Arguments.of(130, 544, 16, DType.BF16, DType.BF16, DType.BF16, null),
                Arguments.of(130, 544, 1, DType.F32, DType.BF16, DType.F32, DType.BF16),
                Arguments.of(2000, 256, 2, DType.BF16, DType.BF16, DType.BF16, null));
    }

    @ParameterizedTest(name = "[{0}, {1}] rows={2} compute={3} state={4} x={5} bias={6}")
    @MethodSource("fixedCases")
    void gemvDtypeCombinations(int outF, int inF, int rows, DType compute, DType state, DType xd, DType biasD) {
        Random rnd = new Random();
        check(outF, inF, rows, compute, QuantType.NF4, rnd.nextBoolean(), 64, state, xd, biasD, rnd);
    }

    static Stream<Arguments> streamShapeCases() {
        // shapes that exercise the stream kernel's work split: one split (K <= 128, several panels, a partial
        // last chunk), many splits of a long K (the in-order reduction of the panel's last block), partial
        // panels and tiles, and both kernels (m8 / m16)
        return Stream.of(
                Arguments.of(300, 96, 1, DType.BF16),
                Arguments.of(1000, 128, 16, DType.F16),
                Arguments.of(130, 11008, 1, DType.BF16),
                Arguments.of(130, 11008, 16, DType.BF16),
                Arguments.of(520, 4128, 5, DType.F16),
                Arguments.of(4100, 1024, 12, DType.BF16));
    }

    @ParameterizedTest(name = "[{0}, {1}] rows={2} compute={3}")
    @MethodSource("streamShapeCases")
    void gemvVariantsOnSplitShapes(int outF, int inF, int rows, DType compute) {
        Random rnd = new Random();
        check(outF, inF, rows, compute, QuantType.NF4, rnd.nextBoolean(), 64, DType.BF16, DType.BF16,
                rnd.nextBoolean() ? null : DType.BF16, rnd);
    }

    static Stream<Arguments> everyDtypeCombination() {
        // compute x state x x x bias, on both paths (3 rows: GEMV; 20 rows: dequantize + cuBLAS); double quantization
        // and the quant type alternate deterministically so both appear with every compute dtype
        List<Arguments> out = new ArrayList<>();
        DType[] dtypes = {DType.F32, DType.BF16, DType.F16};
        DType[] biases = {null, DType.F32, DType.BF16, DType.F16};
        int i = 0;
        for (int rows : new int[] {3, 20})
            for (DType compute : dtypes)
                for (DType state : dtypes)
                    for (DType xd : dtypes)
                        for (DType biasD : biases) {
                            out.add(Arguments.of(rows, compute, state, xd, biasD, i % 2 == 1, (i / 2) % 3 == 2));
                            i++;
                        }
        return out.stream();
    }

    @ParameterizedTest(name = "rows={0} compute={1} state={2} x={3} bias={4} nested={5} fp4={6}")
    @MethodSource("everyDtypeCombination")
    void everyDtypeCombinationMatchesNf4Matmul(int rows, DType compute, DType state, DType xd, DType biasD, boolean nested,
                                                boolean fp4) {
        check(72, 192, rows, compute, fp4 ? QuantType.FP4 : QuantType.NF4, nested, 64, state, xd, biasD, new Random());
    }

    static Stream<Arguments> decodeRowsAndBlocksizes() {
        // every rows count of the GEMV (1..16), odd N (not a multiple of the 16-row tile or the 128-row panel), K a
        // multiple of 64 but not of 128 (a partial last chunk), blocksizes 64..4096 (4096 > K: blocks straddle rows),
        // with and without double quantization, x in each dtype
        List<Arguments> out = new ArrayList<>();
        int[] blocksizes = {64, 128, 256, 4096};
        DType[] xds = {DType.BF16, DType.F16, DType.F32};
        for (int rows = 1; rows <= 16; rows++) {
            for (boolean nested : new boolean[] {false, true}) {
                int bs = blocksizes[(rows + (nested ? 1 : 0)) % 4];
                out.add(Arguments.of(rows, nested, bs, rows % 2 == 0 ? DType.BF16 : DType.F16, xds[rows % 3]));
            }
        }
        return out.stream();
    }

    @ParameterizedTest(name = "rows={0} nested={1} bs={2} compute={3} x={4}")
    @MethodSource("decodeRowsAndBlocksizes")
    void decodeRowsAndBlocksizesMatchNf4Matmul(int rows, boolean nested, int blocksize, DType compute, DType xd) {
        Random rnd = new Random();
        check(147, 1344, rows, compute, QuantType.NF4, nested, blocksize, DType.BF16, xd, rows % 3 == 0 ? DType.BF16 : null, rnd);
    }

    @ParameterizedTest(name = "qlora4j.nf4.gemv={0}")
    @org.junit.jupiter.params.provider.ValueSource(strings = {"mma", "stream", "hybrid", "v2", "v2table", "v2reg"})
    void publicLinearFollowsTheVariantProperty(String variant) {
        try (var p = TemporaryProperty.set(Quant4bitKernels.GEMV_VARIANT_PROPERTY, variant)) {
            Random rnd = new Random();
            check(200, 1056, 7, DType.BF16, QuantType.NF4, true, 64, DType.BF16, DType.BF16, DType.BF16, rnd);
        }
    }

    static Stream<Arguments> prefillCases() {
        return Stream.of(
                Arguments.of(96, 256, 17, DType.BF16, DType.BF16, DType.BF16, null),
                Arguments.of(200, 1056, 300, DType.BF16, DType.F16, DType.F32, DType.BF16),
                Arguments.of(64, 320, 40, DType.F16, DType.BF16, DType.BF16, DType.F32),
                Arguments.of(37, 91, 33, DType.F32, DType.BF16, DType.F32, DType.F32));
    }

    @ParameterizedTest(name = "[{0}, {1}] rows={2} compute={3} state={4} x={5} bias={6}")
    @MethodSource("prefillCases")
    void prefillPathMatchesNf4Matmul(int outF, int inF, int rows, DType compute, DType state, DType xd, DType biasD) {
        Random rnd = new Random();
        check(outF, inF, rows, compute, rnd.nextBoolean() ? QuantType.NF4 : QuantType.FP4, rnd.nextBoolean(), 128, state,
                xd, biasD, rnd);
    }

    private static void check(int outF, int inF, int rows, DType compute, QuantType type, boolean nested, int blocksize,
                              DType state, DType xd, DType biasD, Random rnd) {
        float[] w = QuantGpuSupport.randomWeights(rnd, outF, inF);
        QuantState4bit qs = Quant4bit.quantize(Tensor.fromFloats(w, state, outF, inF), type, blocksize, nested);
        float[] x = QuantGpuSupport.roundedTo(xd, QuantGpuSupport.gaussian(rnd, rows * inF, 1.0));
        float[] bias = biasD == null ? null : QuantGpuSupport.roundedTo(biasD, QuantGpuSupport.gaussian(rnd, outF, 0.5));
        float[] ref = Nf4Matmul.linear(x, rows, qs, bias, compute);
        double[] sumAbs = sumAbs(x, rows, qs, compute, state);
        String what = type + " nested=" + nested + " bs=" + blocksize + " state=" + state + " compute=" + compute + " x=" + xd
                + " bias=" + biasD + " [" + outF + ", " + inF + "] rows=" + rows;
        try (CudaQuant4bit q = (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, qs, compute);
             Tensor xdev = QuantGpuSupport.upload(ctx, x, xd, rows, inF);
             Tensor bdev = bias == null ? null : QuantGpuSupport.upload(ctx, bias, biasD, outF)) {
            if (rows <= Quant4bitKernels.GEMV_MAX_ROWS) {
                // the kernels directly into a poisoned output (the public path allocates its own)
                try (Tensor y = QuantGpuSupport.poisoned(ctx, xd, rows, outF)) {
                    if (Quant4bitKernels.mmaGemvApplies(q)) {
                        // every tensor-core variant, each twice (the split kernels must leave their counters at 0), and
                        // the streaming kernel with every chunk (period 1) and every other chunk decoded in registers
                        try (Tensor xc = QuantGpuSupport.upload(ctx, x, compute, rows, inF)) {
                            for (Quant4bitKernels.GemvVariant v : Quant4bitKernels.GemvVariant.values()) {
                                // V7 / V2BNB compute bitsandbytes' batch-1 numerics and V2CODE its code-times-x sums, not
                                // Nf4Matmul's (its bits differ by ~2^-9 sqrt(in) |x w|, beyond this float32-order tolerance):
                                // Nf4GemvV7GpuTest and Nf4GemvV2GpuTest check them against their own references
                                if (v == Quant4bitKernels.GemvVariant.V7 || v == Quant4bitKernels.GemvVariant.V2BNB
                                        || v == Quant4bitKernels.GemvVariant.V2CODE) continue;
                                for (int rep = 0; rep < 2; rep++) {
                                    ctx.driver().memsetD8Async(CudaContext.ptr(y), (byte) 0xFF, y.byteSize(), ctx.stream());
                                    Quant4bitKernels.gemv(ctx, q, xc, rows, bdev, y, v);
                                    compare(ctx.download(y).toFloatArray(), ref, sumAbs, compute, xd, what + " (" + v + " #" + rep + ")");
                                }
                            }
                            for (int period : new int[] {1, 2}) {
                                ctx.driver().memsetD8Async(CudaContext.ptr(y), (byte) 0xFF, y.byteSize(), ctx.stream());
                                Quant4bitKernels.gemvStream(ctx, q, xc, rows, bdev, y, period);
                                compare(ctx.download(y).toFloatArray(), ref, sumAbs, compute, xd, what + " (register period " + period + ")");
                            }
                        }
                    } else {
                        Quant4bitKernels.gemvSimt(ctx, q, xdev, rows, bdev, y);
                        compare(ctx.download(y).toFloatArray(), ref, sumAbs, compute, xd, what + " (simt)");
                    }
                }
            }
            // the public op twice under the exact decode ("v2"): the GEMV's arrival counters must be left at zero for
            // the next launch
            try (var p = TemporaryProperty.set(Quant4bitKernels.GEMV_VARIANT_PROPERTY, "v2")) {
                for (int rep = 0; rep < 2; rep++) {
                    try (Tensor y = CudaQuantOps.linear(ctx, xdev, q, bdev)) {
                        compare(ctx.download(y).toFloatArray(), ref, sumAbs, compute, xd, what + " (linear #" + rep + ")");
                    }
                }
            }
            // and under the default (v2code for rows <= 8, whose weights code * absmax are not rounded to 16 bits: each
            // differs from the exact contract's by at most two roundings, 2^-8 of |w| in bf16, 2^-10 in f16)
            try (Tensor y = CudaQuantOps.linear(ctx, xdev, q, bdev)) {
                double codeSlack = rows <= Nf4GemvKernels.CODE_MAX_ROWS && compute != DType.F32
                        ? (compute == DType.BF16 ? 0x1p-8 : 0x1p-10) : 0;
                compare(ctx.download(y).toFloatArray(), ref, sumAbs, compute, xd, codeSlack, what + " (linear, default variant)");
            }
        }
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

    private static void compare(float[] got, float[] ref, double[] sumAbs, DType compute, DType xd, String what) {
        compare(got, ref, sumAbs, compute, xd, 0, what);
    }

    /** As above, with relSlack * sum_k |x_k w_k| more tolerance (numerics that round the weights differently). */
    private static void compare(float[] got, float[] ref, double[] sumAbs, DType compute, DType xd, double relSlack, String what) {
        for (int i = 0; i < ref.length; i++) {
            double want = QuantGpuSupport.round(xd, ref[i]);
            // Two quanta of the compute dtype: the GEMM's f32 sum is rounded to the compute dtype and the
            // bias add rounds once more on one side but not always at the same point on the other (seen on
            // the H200: FP4, bf16 compute, f32 x, bf16 bias, rows=300 differed by exactly 2 bf16 ulps).
            double tol = (1e-5 + relSlack) * sumAbs[i] + 2 * QuantGpuSupport.quantum(compute, want) + QuantGpuSupport.quantum(xd, want);
            if (!(Math.abs(got[i] - want) <= tol)) {
                fail(what + ": element " + i + " = " + got[i] + ", reference " + want + ", tolerance " + tol);
            }
        }
    }
}
