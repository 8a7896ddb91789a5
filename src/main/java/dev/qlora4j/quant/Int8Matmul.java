package dev.qlora4j.quant;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Half;

/**
 * LLM.int8 linear layer (bitsandbytes' MatMul8bitLt forward with an int8 weight), CPU reference.
 *
 * <ol>
 *   <li>The input A (of dtype {@code inputDType}) is cast to fp16.</li>
 *   <li>threshold &gt; 0: outlier columns are those with some |a16| &gt;= fp16(threshold). Row statistics
 *       SCA = max |a16| over the row's non-outlier values; the int8 row is round-half-even(a16 * (127/SCA))
 *       with outlier columns set to 0. threshold = 0: plain row-wise absmax, no outliers.</li>
 *   <li>int32 accumulation of CA · CB^T (exact).</li>
 *   <li>{@code int8_mm_dequant} as the CUDA kernel: fp16(fma((acc * SCA) * SCB, 6.200012e-05f, bias)) with
 *       the bias fused only when it is fp16; otherwise added afterwards to the fp16 result (torch add_, fp16
 *       rounding); then cast to the input dtype.</li>
 *   <li>Outliers: out += A[:, cols] · dequant(CB[:, cols])^T, both operands in the input dtype (the
 *       dequantized columns (CB * SCB) * (1/127) rounded to it), float32-class accumulation, result rounded
 *       to the input dtype (torch addmm). We accumulate in float64 and round once; cuBLAS's float32
 *       accumulation order is not reproducible, so this term matches to float32 accuracy only.</li>
 * </ol>
 * Everything before step 5 is bit-exact with bitsandbytes' kernels except the int8 scale: the kernel's
 * {@code __fdividef(127, SCA)} is approximate, we use the correctly rounded 127/SCA (see {@link Int8Weight}).
 */
public final class Int8Matmul {
    /** The CUDA kernel's 1/(127*127) literal (equal to float32(1/16129)). */
    public static final float MM_DEQUANT_CONST = 6.200012e-05f;

    private Int8Matmul() {}

    /** Int8 codes and statistics of the activations. ca [n * k], sca [n], outlierCols sorted ascending. */
    public record ActivationQuant(byte[] ca, float[] sca, int[] outlierCols) {}

    /** y [n, out] for float32 input x [n, in] (input dtype float32). */
    public static float[] linear(float[] x, int n, Int8Weight w, float[] bias, float threshold) {
        return linear(x, n, w, bias, threshold, DType.F32);
    }

    /**
     * y [n, out] = x [n, in] W^T + bias, where x and bias hold values of {@code inputDType} (F16, BF16 or
     * F32; other values are rounded to it first). The result holds values of inputDType.
     */
    public static float[] linear(float[] x, int n, Int8Weight w, float[] bias, float threshold, DType inputDType) {
        if (inputDType != DType.F16 && inputDType != DType.BF16 && inputDType != DType.F32) {
            throw new IllegalArgumentException("input dtype must be F16, BF16 or F32, got " + inputDType);
        }
        if (!(threshold >= 0f)) throw new IllegalArgumentException("threshold must be >= 0, got " + threshold);
        int k = w.inFeatures();
        int m = w.outFeatures();
        if (n < 0 || (long) n * k != x.length) {
            throw new IllegalArgumentException("x holds " + x.length + " values, need n*in = " + n + "*" + k);
        }
        if (bias != null && bias.length != m) {
            throw new IllegalArgumentException("bias has " + bias.length + " values, weight has " + m + " output rows");
        }
        float[] a = new float[x.length];   // A in its own dtype
        float[] a16 = new float[x.length]; // A.to(float16)
        for (int i = 0; i < x.length; i++) {
            a[i] = Nf4Matmul.round(inputDType, x[i]);
            a16[i] = Half.roundF16(a[i]);
        }
        float[] b = null;
        if (bias != null) {
            b = new float[m];
            for (int o = 0; o < m; o++) b[o] = Nf4Matmul.round(inputDType, bias[o]);
        }
        ActivationQuant q = quantizeActivations(a16, n, k, threshold);
        float[] out = new float[n * m];
        byte[] cb = w.cb();
        float[] scb = w.scb();
        final float[] bf = b;
        boolean fusedBias = bf != null && inputDType == DType.F16;
        Parallel.forRange(m, Math.max(1, 8192 / Math.max(1, k * Math.max(1, n))), (o0, o1) -> {
            for (int o = o0; o < o1; o++) {
                int wo = o * k;
                for (int i = 0; i < n; i++) {
                    int ao = i * k;
                    int acc = 0;
                    for (int j = 0; j < k; j++) acc += q.ca()[ao + j] * cb[wo + j];
                    float p = ((float) acc * q.sca()[i]) * scb[o];
                    float h = Half.roundF16(Math.fma(p, MM_DEQUANT_CONST, fusedBias ? bf[o] : 0f));
                    if (bf != null && !fusedBias) h = Half.roundF16(h + bf[o]);
                    out[i * m + o] = Nf4Matmul.round(inputDType, h);
                }
            }
        });
        int[] cols = q.outlierCols();
        if (cols.length > 0) {
            // subB[c][o] = ((CB[o, c] * SCB[o]) * (1/127)) rounded to the input dtype
            float[] subB = new float[cols.length * m];
            for (int c = 0; c < cols.length; c++) {
                for (int o = 0; o < m; o++) {
                    subB[c * m + o] = Nf4Matmul.round(inputDType, Int8Weight.dequant(cb[o * k + cols[c]], scb[o]));
                }
            }
            for (int i = 0; i < n; i++) {
                for (int o = 0; o < m; o++) {
                    double s = out[i * m + o];
                    for (int c = 0; c < cols.length; c++) s += (double) a[i * k + cols[c]] * subB[c * m + o];
                    out[i * m + o] = Nf4Matmul.round(inputDType, (float) s);
                }
            }
        }
        return out;
    }

    /**
     * {@code int8_vectorwise_quant(A16, threshold)}: a16 [n, k] holds fp16 values. Outlier columns are the
     * columns where some |a16| >= fp16(threshold) (none when threshold is 0); their codes are zeroed in
     * every row.
     */
    public static ActivationQuant quantizeActivations(float[] a16, int n, int k, float threshold) {
        if ((long) n * k != a16.length) throw new IllegalArgumentException(a16.length + " values do not fill [" + n + ", " + k + "]");
        byte[] ca = new byte[a16.length];
        float[] sca = new float[n];
        int[] cols = new int[0];
        if (threshold > 0f) {
            float t16 = Half.roundF16(threshold);
            boolean[] outlier = new boolean[k];
            int count = 0;
            for (int i = 0; i < n; i++) {
                for (int j = 0; j < k; j++) {
                    if (!outlier[j] && Math.abs(a16[i * k + j]) >= t16) {
                        outlier[j] = true;
                        count++;
                    }
                }
            }
            cols = new int[count];
            for (int j = 0, c = 0; j < k; j++) if (outlier[j]) cols[c++] = j;
        }
        for (int i = 0; i < n; i++) sca[i] = Int8Weight.quantizeRow(a16, i * k, k, threshold, ca, i * k);
        for (int c : cols) {
            for (int i = 0; i < n; i++) ca[i * k + c] = 0;
        }
        return new ActivationQuant(ca, sca, cols);
    }
}
