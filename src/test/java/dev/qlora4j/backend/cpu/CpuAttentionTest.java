package dev.qlora4j.backend.cpu;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.qlora4j.backend.KvCache;
import dev.qlora4j.tensor.Tensor;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * attention: a prefill followed by decode steps, each compared with a float64 reference that
 * runs full causal attention over the whole sequence so far (no cache), honouring left padding,
 * grouped-query heads and the sliding window.
 *
 * <p>Tolerance 1e-5 absolute + 1e-5 relative: scores are float32 dot products of length
 * headDim = 20 (error ~ 20 * 2^-24 * |q||k|), which perturb the softmax weights by the same
 * relative amount; the output is a convex combination of unit-scale values.
 */
class CpuAttentionTest {
    private static final int HEADS = 4, KV_HEADS = 2, HEAD_DIM = 20, CAPACITY = 12;
    private static final int LAYERS = 2, LAYER = 1;

    @Test
    void prefillWithLeftPaddingThenDecodeMatchesFullCausalAttention() {
        runScenario(new int[] {0, 3}, 7, 3, 0);
    }

    @Test
    void slidingWindowLimitsTheVisibleSlots() {
        runScenario(new int[] {0, 2}, 6, 4, 3);
    }

    @Test
    void decodeOnlyFromAnEmptyCache() {
        runScenario(new int[] {0}, 1, 4, 0);
    }

    /**
     * Batch pads.length, a prefill of promptLen tokens (row b's slots before pads[b] are padding
     * with garbage keys), then decodeSteps single-token steps.
     */
    private static void runScenario(int[] pads, int promptLen, int decodeSteps, int window) {
        Random r = TestData.random("attention pads=" + java.util.Arrays.toString(pads) + " window=" + window);
        int batch = pads.length;
        int qWidth = HEADS * HEAD_DIM, kvWidth = KV_HEADS * HEAD_DIM;
        float scale = (float) (1 / Math.sqrt(HEAD_DIM));
        // Everything written so far, per batch row and slot, for the reference.
        float[][][] allK = new float[batch][CAPACITY][], allV = new float[batch][CAPACITY][];
        try (CpuBackend cpu = new CpuBackend(2); KvCache cache = cpu.newKvCache(LAYERS, batch, KV_HEADS, CAPACITY, HEAD_DIM)) {
            int start = 0;
            for (int step = 0; step <= decodeSteps; step++) {
                int t = step == 0 ? promptLen : 1;
                float[] q = TestData.gaussian(r, batch * t * qWidth, 1.0);
                float[] k = TestData.gaussian(r, batch * t * kvWidth, 1.0);
                float[] v = TestData.gaussian(r, batch * t * kvWidth, 1.0);
                for (int b = 0; b < batch; b++) {
                    for (int i = 0; i < t; i++) {
                        int row = b * t + i;
                        allK[b][start + i] = java.util.Arrays.copyOfRange(k, row * kvWidth, (row + 1) * kvWidth);
                        allV[b][start + i] = java.util.Arrays.copyOfRange(v, row * kvWidth, (row + 1) * kvWidth);
                    }
                }
                Tensor out = cpu.attention(Tensor.of(q, batch * t, qWidth), Tensor.of(k, batch * t, kvWidth),
                        Tensor.of(v, batch * t, kvWidth), cache, LAYER, start, Tensor.ofInts(pads, batch),
                        HEADS, KV_HEADS, HEAD_DIM, scale, window);
                assertArrayEquals(new int[] {batch * t, qWidth}, out.shape());
                double[] ref = reference(q, allK, allV, pads, batch, t, start, scale, window);
                TestData.assertClose(ref, out.toFloatArray(), 1e-5, 1e-5, "attention step " + step);
                start += t;
            }
            checkCacheHolds(cache, allK, allV, batch, start);
        }
    }

    private static double[] reference(float[] q, float[][][] allK, float[][][] allV, int[] pads, int batch,
                                      int t, int start, float scale, int window) {
        int qWidth = HEADS * HEAD_DIM;
        int group = HEADS / KV_HEADS;
        double[] out = new double[batch * t * qWidth];
        for (int b = 0; b < batch; b++) {
            for (int i = 0; i < t; i++) {
                int slot = start + i;
                for (int h = 0; h < HEADS; h++) {
                    int qo = (b * t + i) * qWidth + h * HEAD_DIM;
                    int ko = (h / group) * HEAD_DIM;
                    int lo = Math.max(pads[b], window > 0 ? slot - window + 1 : 0);
                    if (lo > slot) continue; // a padding query sees nothing: zeros
                    double[] s = new double[slot - lo + 1];
                    double max = Double.NEGATIVE_INFINITY;
                    for (int j = lo; j <= slot; j++) {
                        double dot = 0;
                        for (int c = 0; c < HEAD_DIM; c++) dot += (double) q[qo + c] * allK[b][j][ko + c];
                        s[j - lo] = dot * scale;
                        max = Math.max(max, s[j - lo]);
                    }
                    double sum = 0;
                    for (int j = 0; j < s.length; j++) sum += s[j] = Math.exp(s[j] - max);
                    for (int j = lo; j <= slot; j++) {
                        double p = s[j - lo] / sum;
                        for (int c = 0; c < HEAD_DIM; c++) out[qo + c] += p * allV[b][j][ko + c];
                    }
                }
            }
        }
        return out;
    }

    /** Layer LAYER holds every key and value at [b, kvHead, slot, :]; the other layer is untouched. */
    private static void checkCacheHolds(KvCache cache, float[][][] allK, float[][][] allV, int batch, int used) {
        Tensor keys = cache.keys(LAYER), values = cache.values(LAYER);
        assertArrayEquals(new int[] {batch, KV_HEADS, CAPACITY, HEAD_DIM}, keys.shape());
        for (int b = 0; b < batch; b++) {
            for (int kh = 0; kh < KV_HEADS; kh++) {
                for (int slot = 0; slot < used; slot++) {
                    for (int c = 0; c < HEAD_DIM; c++) {
                        long idx = (((long) b * KV_HEADS + kh) * CAPACITY + slot) * HEAD_DIM + c;
                        assertEquals(allK[b][slot][kh * HEAD_DIM + c], keys.getFloat(idx));
                        assertEquals(allV[b][slot][kh * HEAD_DIM + c], values.getFloat(idx));
                    }
                }
            }
        }
        for (float f : cache.keys(0).toFloatArray()) assertEquals(0f, f, "layer 0 must stay empty");
    }
}
