package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.fail;

import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.quant.Int8Matmul;
import dev.qlora4j.quant.Int8Weight;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Half;
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
 * LLM.int8 on the GPU (native/int8.cu) against Int8Matmul.linear.
 *
 * <p>Without outliers (threshold 0, or no value above it) every step is deterministic integer or float32
 * arithmetic in the same order as the CPU, so outputs must be equal (as values: +0 and -0 are equal).
 * With outliers the CPU adds the outlier products in float64 and the GPU in float32: tolerance
 * 1e-5 * sum over outlier columns |a * w| + one unit in the last place of the input dtype.
 */
@Tag("gpu")
class CudaQuantInt8GpuTest {
    private static CudaContext ctx;

    @BeforeAll
    static void open() { ctx = QuantGpuSupport.context(); }

    @AfterAll
    static void close() { if (ctx != null) ctx.close(); }

    static Stream<Arguments> cases() {
        List<Arguments> out = new ArrayList<>();
        int[][] shapes = {{1, 130, 100}, {5, 64, 99}, {70, 200, 256}};  // rows, out, in
        for (int[] s : shapes)
            for (DType in : new DType[] {DType.F32, DType.BF16, DType.F16})
                for (float threshold : new float[] {0f, 6f})
                    out.add(Arguments.of(s[0], s[1], s[2], in, threshold));
        return out.stream();
    }

    @ParameterizedTest(name = "rows={0} [{1}, {2}] {3} threshold={4}")
    @MethodSource("cases")
    void matchesInt8Matmul(int rows, int outF, int inF, DType in, float threshold) {
        Random rnd = new Random();
        Int8Weight w = Int8Weight.quantize(QuantGpuSupport.randomWeights(rnd, outF, inF), outF, inF);
        float[] x = QuantGpuSupport.gaussian(rnd, rows * inF, 1.0);
        int[] outlierCols = {3, inF / 2, inF - 1};
        for (int c : outlierCols) x[rnd.nextInt(rows) * inF + c] = (float) (8 + 4 * rnd.nextDouble()) * (rnd.nextBoolean() ? 1 : -1);
        x = QuantGpuSupport.roundedTo(in, x);
        DType biasD = rnd.nextBoolean() ? null : (rnd.nextBoolean() ? in : DType.F32);
        float[] bias = biasD == null ? null : QuantGpuSupport.roundedTo(biasD, QuantGpuSupport.gaussian(rnd, outF, 0.5));
        float[] ref = Int8Matmul.linear(x, rows, w, bias, threshold, in);
        double[] outlierSum = outlierSums(x, rows, w, threshold, in);
        try (QuantizedWeight q = CudaQuantOps.prepare8bit(ctx, w, threshold);
             Tensor xdev = QuantGpuSupport.upload(ctx, x, in, rows, inF);
             Tensor bdev = bias == null ? null : QuantGpuSupport.upload(ctx, bias, biasD, outF)) {
            for (int rep = 0; rep < 2; rep++) {
                try (Tensor y = CudaQuantOps.linear(ctx, xdev, q, bdev)) {
                    float[] got = ctx.download(y).toFloatArray();
                    for (int i = 0; i < ref.length; i++) {
                        double tol = outlierSum[i] == 0 ? 0 : 1e-5 * outlierSum[i] + QuantGpuSupport.quantum(in, ref[i]);
                        if (!(Math.abs(got[i] - ref[i]) <= tol)) {
                            fail("rows=" + rows + " " + in + " threshold=" + threshold + " bias=" + biasD + ": element " + i
                                    + " = " + got[i] + ", reference " + ref[i] + ", tolerance " + tol);
                        }
                    }
                }
            }
            // the weight dequantizes like Int8Weight.dequantize (then the cast)
            try (Tensor d = CudaQuantOps.dequantize(ctx, q, DType.F32)) {
                assertArrayEquals(w.dequantize(), ctx.download(d).toFloatArray());
            }
        }
    }

    /** sum over outlier columns of |a * dequant(w)| per output (0 when there are no outliers). */
    private static double[] outlierSums(float[] x, int rows, Int8Weight w, float threshold, DType in) {
        int k = w.inFeatures(), m = w.outFeatures();
        double[] s = new double[rows * m];
        if (threshold == 0f) return s;
        float t16 = Half.roundF16(threshold);
        boolean[] outlier = new boolean[k];
        for (int i = 0; i < rows * k; i++) if (Math.abs(Half.roundF16(x[i])) >= t16) outlier[i % k] = true;
        float[] wd = w.dequantize();
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < m; o++)
                for (int c = 0; c < k; c++)
                    if (outlier[c]) s[r * m + o] += Math.abs((double) x[r * k + c] * QuantGpuSupport.round(in, wd[o * k + c]));
        return s;
    }
}
