package dev.qlora4j.quant;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Half;
import dev.qlora4j.tensor.HostStorage;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.lang.foreign.MemorySegment;
import java.util.HashMap;
import java.util.Map;
import java.util.Set;

import static org.junit.jupiter.api.Assertions.*;

class Int8Test {
    static final String P = "model.layers.3.self_attn.o_proj";

    @Test
    void weightQuantizationHandWorked() {
        float[] w = {
            1.0f, -0.5f, 0.25f, 0.1f,    // fp16(0.1) = 0.0999755859375; scale 127
            0f, 0f, 0f, 0f,              // zero row: SCB 0, codes 0
            3.0f, 1.5f, -3.0f, 0.75f};   // scale = 127f/3f = 42.333332f; 1.5 * scale rounds to exactly 63.5 in float32 -> 64
        Int8Weight q = Int8Weight.quantize(w, 3, 4);
        assertArrayEquals(new float[] {1f, 0f, 3f}, q.scb());
        assertArrayEquals(new byte[] {127, -64, 32, 13, 0, 0, 0, 0, 127, 64, -127, 32}, q.cb(),
                "-63.5 rounds half-even to -64; 0.0999756 * 127 = 12.697 -> 13");
        float[] d = q.dequantize();
        assertEquals((127 * 1f) * (1f / 127f), d[0], 0f);
        assertEquals((-64 * 1f) * Int8Weight.INV_127, d[1], 0f);
        assertEquals((64 * 3f) * Int8Weight.INV_127, d[9], 0f);
        assertEquals(0f, d[4]);
        // input dtype does not matter beyond the fp16 cast
        Int8Weight qb = Int8Weight.quantize(Tensor.fromFloats(w, DType.F32, 3, 4));
        assertEquals(q, qb);
        // values that are not fp16 are cast first: 1/3 -> fp16 0.333251953125
        Int8Weight third = Int8Weight.quantize(new float[] {1f / 3f, 1f}, 1, 2);
        assertEquals(42, third.cb()[0]); // 0.333251953125 * 127 = 42.32
        assertEquals(1f, third.scb()[0]);
    }

    @Test
    void safetensorsRoundTripAndErrors() {
        Int8Weight q = Int8Weight.quantize(QuantBench.gaussian(12 * 40, 0.1, 4), 12, 40);
        Map<String, Tensor> m = new HashMap<>(q.toSafetensors(P));
        assertEquals(Set.of(P + ".weight", P + ".SCB", P + ".weight_format"), m.keySet());
        assertEquals(DType.I8, m.get(P + ".weight").dtype());
        assertArrayEquals(new int[] {12, 40}, m.get(P + ".weight").shape());
        assertEquals(DType.F32, m.get(P + ".SCB").dtype());
        assertEquals(DType.U8, m.get(P + ".weight_format").dtype());
        assertEquals(0, m.get(P + ".weight_format").rank());
        assertEquals(0, m.get(P + ".weight_format").getInt(0));
        assertEquals(q, Int8Weight.fromSafetensors(P, m));

        Map<String, Tensor> noFormat = new HashMap<>(m);
        noFormat.remove(P + ".weight_format");
        assertEquals(q, Int8Weight.fromSafetensors(P, noFormat), "weight_format is optional (row-major assumed)");

        Map<String, Tensor> turing = new HashMap<>(m);
        turing.put(P + ".weight_format", new Tensor(new HostStorage(MemorySegment.ofArray(new byte[] {2}), null), DType.U8, true));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Int8Weight.fromSafetensors(P, turing));
        assertTrue(e.getMessage().contains(P + ".weight_format") && e.getMessage().contains("col_turing"), e.getMessage());

        Map<String, Tensor> noScb = new HashMap<>(m);
        noScb.remove(P + ".SCB");
        e = assertThrows(IllegalArgumentException.class, () -> Int8Weight.fromSafetensors(P, noScb));
        assertTrue(e.getMessage().contains(P + ".SCB"), e.getMessage());

        Map<String, Tensor> shortScb = new HashMap<>(m);
        shortScb.put(P + ".SCB", Tensor.of(new float[11], 11));
        e = assertThrows(IllegalArgumentException.class, () -> Int8Weight.fromSafetensors(P, shortScb));
        assertTrue(e.getMessage().contains("11 values") && e.getMessage().contains("12 rows"), e.getMessage());

        Map<String, Tensor> floatWeight = new HashMap<>(m);
        floatWeight.put(P + ".weight", Tensor.of(new float[480], 12, 40));
        e = assertThrows(IllegalArgumentException.class, () -> Int8Weight.fromSafetensors(P, floatWeight));
        assertTrue(e.getMessage().contains("I8"), e.getMessage());
    }

    /** Float64 evaluation of the same decomposition (int8 part + 16-bit outlier part), no output rounding. */
    static double[][] decompositionReference(float[] x, int n, Int8Weight w, float[] bias, float threshold) {
        int k = w.inFeatures(), m = w.outFeatures();
        float[] x16 = new float[x.length];
        for (int i = 0; i < x.length; i++) x16[i] = Half.roundF16(x[i]);
        Int8Matmul.ActivationQuant q = Int8Matmul.quantizeActivations(x16, n, k, threshold);
        double[] y = new double[n * m];
        double[] int8Part = new double[n * m];
        for (int i = 0; i < n; i++) {
            for (int o = 0; o < m; o++) {
                long acc = 0;
                for (int j = 0; j < k; j++) acc += q.ca()[i * k + j] * w.cb()[o * k + j];
                int8Part[i * m + o] = acc * (double) q.sca()[i] * w.scb()[o] / (127.0 * 127.0);
                double s = int8Part[i * m + o] + (bias == null ? 0 : bias[o]);
                for (int c : q.outlierCols()) s += (double) x[i * k + c] * (w.cb()[o * k + c] * (double) w.scb()[o] / 127.0);
                y[i * m + o] = s;
            }
        }
        return new double[][] {y, int8Part};
    }

    @Test
    void matmulMatchesItsDecompositionAndTheFloatProduct() {
        int n = 5, k = 96, m = 24;
        float[] wv = QuantBench.gaussian(m * k, 0.05, 10);
        Int8Weight w = Int8Weight.quantize(wv, m, k);
        float[] x = QuantBench.randomInput(n, k, 11);
        float[] bias = QuantBench.gaussian(m, 0.1, 12);
        for (float threshold : new float[] {0f, 2.5f}) {
            float[] y = Int8Matmul.linear(x, n, w, bias, threshold);
            double[][] r = decompositionReference(x, n, w, bias, threshold);
            double[] ref = r[0];
            float[] wd = w.dequantize();
            for (int i = 0; i < n; i++) {
                float sca = 0;
                for (int j = 0; j < k; j++) sca = Math.max(sca, Math.abs(x[i * k + j]));
                for (int o = 0; o < m; o++) {
                    double yv = y[i * m + o];
                    // same decomposition: the int8 part is rounded to fp16, then the bias is added in fp16
                    double int8 = r[1][i * m + o];
                    double fp16Rounding = 0x1p-11 * (Math.abs(int8) + Math.abs(int8 + bias[o])) * 1.01 + 1e-7;
                    assertEquals(ref[i * m + o], yv, fp16Rounding, "decomposition [" + i + "," + o + "]");
                    // plain float32 x * dequant(W)^T: int8 rounding of activations (half a step of SCA/127 per value)
                    double plain = bias[o], budget = 0;
                    for (int j = 0; j < k; j++) {
                        plain += (double) x[i * k + j] * wd[o * k + j];
                        budget += Math.abs(wd[o * k + j]) * (0.5 * sca / 127 + Math.abs(x[i * k + j]) * 0x1p-11);
                    }
                    assertEquals(plain, yv, budget + fp16Rounding, "vs float product [" + i + "," + o + "]");
                }
            }
        }
    }

    @Test
    void outlierColumnsTakeThe16BitPath() {
        int n = 4, k = 64, m = 16;
        float[] wv = QuantBench.gaussian(m * k, 0.05, 20);
        Int8Weight w = Int8Weight.quantize(wv, m, k);
        float[] x = QuantBench.randomInput(n, k, 21);
        for (int i = 0; i < n; i++) x[i * k] = Math.max(-1.5f, Math.min(1.5f, x[i * k]));
        x[2 * k + 17] = 40f; // one large outlier in column 17
        x[0 * k + 5] = -7f;  // another in column 5
        float[] x16 = new float[x.length];
        for (int i = 0; i < x.length; i++) x16[i] = Half.roundF16(x[i]);

        Int8Matmul.ActivationQuant with = Int8Matmul.quantizeActivations(x16, n, k, 6f);
        assertArrayEquals(new int[] {5, 17}, with.outlierCols());
        for (int i = 0; i < n; i++) {
            assertEquals(0, with.ca()[i * k + 5], "outlier column zeroed in every row");
            assertEquals(0, with.ca()[i * k + 17]);
        }
        float rowMax = 0;
        for (int j = 0; j < k; j++) if (j != 17) rowMax = Math.max(rowMax, Math.abs(x16[2 * k + j]));
        assertEquals(rowMax, with.sca()[2], 0f, "row statistic leaves the outlier out");

        Int8Matmul.ActivationQuant without = Int8Matmul.quantizeActivations(x16, n, k, 0f);
        assertEquals(0, without.outlierCols().length);
        assertEquals(40f, without.sca()[2]);
        assertEquals(127, without.ca()[2 * k + 17]);

        // the decomposition keeps the other columns of row 2 precise; pure int8 crushes them to 40/127 steps
        float[] yWith = Int8Matmul.linear(x, n, w, null, 6f);
        float[] yWithout = Int8Matmul.linear(x, n, w, null, 0f);
        float[] wd = w.dequantize();
        double errWith = 0, errWithout = 0;
        for (int o = 0; o < m; o++) {
            double plain = 0;
            for (int j = 0; j < k; j++) plain += (double) x[2 * k + j] * wd[o * k + j];
            errWith += Math.abs(yWith[2 * m + o] - plain);
            errWithout += Math.abs(yWithout[2 * m + o] - plain);
        }
        assertTrue(errWith * 5 < errWithout, "outlier path error " + errWith + " vs pure int8 " + errWithout);
    }

    @Test
    void fp16InputsFuseTheBiasAndOutputsAreFp16() {
        int n = 3, k = 32, m = 8;
        Int8Weight w = Int8Weight.quantize(QuantBench.gaussian(m * k, 0.05, 30), m, k);
        float[] x = QuantBench.randomInput(n, k, 31);
        float[] bias = QuantBench.gaussian(m, 0.3, 32);
        float[] y = Int8Matmul.linear(x, n, w, bias, 0f, DType.F16);
        float[] yb = Int8Matmul.linear(x, n, w, bias, 0f, DType.BF16);
        for (DType d : new DType[] {DType.F16, DType.BF16}) {
            float[] x16 = new float[x.length];
            for (int i = 0; i < x.length; i++) x16[i] = Half.roundF16(Nf4Matmul.round(d, x[i])); // A (dtype d).to(fp16)
            Int8Matmul.ActivationQuant q = Int8Matmul.quantizeActivations(x16, n, k, 0f);
            for (int i = 0; i < n; i++) {
                for (int o = 0; o < m; o++) {
                    int acc = 0;
                    for (int j = 0; j < k; j++) acc += q.ca()[i * k + j] * w.cb()[o * k + j];
                    float p = ((float) acc * q.sca()[i]) * w.scb()[o];
                    if (d == DType.F16) {
                        float fused = Half.roundF16(Math.fma(p, 6.200012e-05f, Half.roundF16(bias[o])));
                        assertEquals(fused, y[i * m + o], 0f, "fp16: bias fused into the dequant fma");
                    } else {
                        float unfused = Half.roundBf16(Half.roundF16(Half.roundF16(p * 6.200012e-05f) + Half.roundBf16(bias[o])));
                        assertEquals(unfused, yb[i * m + o], 0f, "bf16: fp16 dequant, bias added in fp16, cast to bf16");
                    }
                }
            }
        }
        assertThrows(IllegalArgumentException.class, () -> Int8Matmul.linear(x, n, w, null, -1f));
        assertThrows(IllegalArgumentException.class, () -> Int8Matmul.linear(x, n + 1, w, null, 0f));
    }
}
