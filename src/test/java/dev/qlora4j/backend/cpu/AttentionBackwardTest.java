package dev.qlora4j.backend.cpu;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.qlora4j.backend.AttentionResult;
import dev.qlora4j.backend.KvCache;
import dev.qlora4j.tensor.Tensor;
import java.util.Arrays;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * Training attention: the forward (output and saved log-sum-exp) against a float64 reference and
 * against the cached inference attention; the backward against central finite differences of
 * the float64 forward, with grouped-query heads, packed segments and a sliding window; packing
 * isolation; GQA gradients as sums over the group; thread-count independence.
 */
class AttentionBackwardTest {

    /** One configuration: B rows of T tokens, segments [B*T] or null. */
    private record Config(int batch, int tokens, int heads, int kvHeads, int headDim, int window, int[] segments) {
        int qWidth() { return heads * headDim; }
        int kvWidth() { return kvHeads * headDim; }
        float scale() { return (float) (1 / Math.sqrt(headDim)); }
        Tensor segmentTensor() { return segments == null ? null : Tensor.ofInts(segments, batch * tokens); }
        boolean visible(int b, int t, int s) {
            if (s > t || (window > 0 && t - s >= window)) return false;
            return segments == null || segments[b * tokens + s] == segments[b * tokens + t];
        }
    }

    /** Float64 attention: returns out [B*T, heads*D]; fills lse [B, heads, T] when not null. */
    private static double[] reference(Config c, double[] q, double[] k, double[] v, double[] lse) {
        int d = c.headDim(), T = c.tokens(), group = c.heads() / c.kvHeads();
        double[] out = new double[c.batch() * T * c.qWidth()];
        double[] p = new double[T];
        for (int b = 0; b < c.batch(); b++) {
            for (int h = 0; h < c.heads(); h++) {
                int kh = h / group;
                for (int t = 0; t < T; t++) {
                    int qo = (b * T + t) * c.qWidth() + h * d;
                    double max = Double.NEGATIVE_INFINITY;
                    for (int s = 0; s <= t; s++) {
                        if (!c.visible(b, t, s)) continue;
                        int ko = (b * T + s) * c.kvWidth() + kh * d;
                        double dot = 0;
                        for (int i = 0; i < d; i++) dot += q[qo + i] * k[ko + i];
                        p[s] = dot * c.scale();
                        max = Math.max(max, p[s]);
                    }
                    double sum = 0;
                    for (int s = 0; s <= t; s++) if (c.visible(b, t, s)) sum += Math.exp(p[s] - max);
                    for (int s = 0; s <= t; s++) {
                        if (!c.visible(b, t, s)) continue;
                        double w = Math.exp(p[s] - max) / sum;
                        int vo = (b * T + s) * c.kvWidth() + kh * d;
                        for (int i = 0; i < d; i++) out[qo + i] += w * v[vo + i];
                    }
                    if (lse != null) lse[(b * c.heads() + h) * T + t] = max + Math.log(sum);
                }
            }
        }
        return out;
    }

    private static float[][] inputs(Random r, Config c) {
        int rows = c.batch() * c.tokens();
        return new float[][] {TestData.gaussian(r, rows * c.qWidth(), 1.0), TestData.gaussian(r, rows * c.kvWidth(), 1.0),
                TestData.gaussian(r, rows * c.kvWidth(), 1.0), TestData.gaussian(r, rows * c.qWidth(), 1.0)};
    }

    private static AttentionResult forward(CpuBackend cpu, Config c, float[] q, float[] k, float[] v) {
        int rows = c.batch() * c.tokens();
        return cpu.attentionTrain(Tensor.of(q, rows, c.qWidth()), Tensor.of(k, rows, c.kvWidth()),
                Tensor.of(v, rows, c.kvWidth()), c.segmentTensor(), c.batch(), c.heads(), c.kvHeads(), c.headDim(),
                c.scale(), c.window());
    }

    private static Tensor[] backward(CpuBackend cpu, Config c, float[] q, float[] k, float[] v, AttentionResult fwd,
                                     float[] g) {
        int rows = c.batch() * c.tokens();
        return cpu.attentionBackward(Tensor.of(q, rows, c.qWidth()), Tensor.of(k, rows, c.kvWidth()),
                Tensor.of(v, rows, c.kvWidth()), c.segmentTensor(), fwd, Tensor.of(g, rows, c.qWidth()), c.batch(),
                c.heads(), c.kvHeads(), c.headDim(), c.scale(), c.window());
    }

    /**
     * Forward tolerance 1e-5 absolute + 1e-5 relative, as in CpuAttentionTest: float32 scores of
     * length-headDim dot products perturb the softmax weights by ~headDim * 2^-24 relative.
     */
    @Test
    void forwardMatchesFloat64AndTheCachedAttention() {
        Random r = TestData.random("attentionTrain forward");
        try (CpuBackend cpu = new CpuBackend(2)) {
            for (int window : new int[] {0, 4}) {
                Config c = new Config(2, 9, 4, 2, 16, window, null);
                float[][] in = inputs(r, c);
                int rows = c.batch() * c.tokens();
                try (AttentionResult fwd = forward(cpu, c, in[0], in[1], in[2])) {
                    double[] lse = new double[c.batch() * c.heads() * c.tokens()];
                    double[] ref = reference(c, FiniteDifferences.toDoubles(in[0]), FiniteDifferences.toDoubles(in[1]),
                            FiniteDifferences.toDoubles(in[2]), lse);
                    TestData.assertClose(ref, fwd.out().toFloatArray(), 1e-5, 1e-5, "out window=" + window);
                    assertArrayEquals(new int[] {c.batch(), c.heads(), c.tokens()}, fwd.lse().shape());
                    TestData.assertClose(lse, fwd.lse().toFloatArray(), 1e-5, 1e-5, "lse window=" + window);
                    try (KvCache cache = cpu.newKvCache(1, c.batch(), c.kvHeads(), c.tokens(), c.headDim())) {
                        Tensor cached = cpu.attention(Tensor.of(in[0], rows, c.qWidth()), Tensor.of(in[1], rows, c.kvWidth()),
                                Tensor.of(in[2], rows, c.kvWidth()), cache, 0, 0, Tensor.ofInts(new int[c.batch()], c.batch()),
                                c.heads(), c.kvHeads(), c.headDim(), c.scale(), window);
                        TestData.assertClose(FiniteDifferences.toDoubles(cached.toFloatArray()), fwd.out().toFloatArray(),
                                1e-5, 1e-5, "training vs cached attention, window=" + window);
                    }
                }
            }
        }
    }

    private static void checkGradients(Config c, String what) {
        Random r = TestData.random("attention backward " + what);
        float[][] in = inputs(r, c);
        double[] q = FiniteDifferences.toDoubles(in[0]), k = FiniteDifferences.toDoubles(in[1]);
        double[] v = FiniteDifferences.toDoubles(in[2]), g = FiniteDifferences.toDoubles(in[3]);
        double[] fdQ = FiniteDifferences.gradient(q.clone(), qs -> FiniteDifferences.dot(g, reference(c, qs, k, v, null)));
        double[] fdK = FiniteDifferences.gradient(k.clone(), ks -> FiniteDifferences.dot(g, reference(c, q, ks, v, null)));
        double[] fdV = FiniteDifferences.gradient(v.clone(), vs -> FiniteDifferences.dot(g, reference(c, q, k, vs, null)));
        try (CpuBackend cpu = new CpuBackend(2); AttentionResult fwd = forward(cpu, c, in[0], in[1], in[2])) {
            Tensor[] grads = backward(cpu, c, in[0], in[1], in[2], fwd, in[3]);
            FiniteDifferences.assertGradient(fdQ, grads[0].toFloatArray(), what + " grad_q");
            FiniteDifferences.assertGradient(fdK, grads[1].toFloatArray(), what + " grad_k");
            FiniteDifferences.assertGradient(fdV, grads[2].toFloatArray(), what + " grad_v");
        }
    }

    @Test
    void gradientsMatchFiniteDifferencesWithGroupedHeadsAndPacking() {
        checkGradients(new Config(2, 7, 4, 2, 6, 0, new int[] {0, 0, 0, 1, 1, 1, 1, 5, 5, 6, 6, 6, 6, 6}), "GQA 4/2 packed");
    }

    @Test
    void gradientsMatchFiniteDifferencesWithASlidingWindow() {
        checkGradients(new Config(2, 7, 2, 2, 6, 3, null), "MHA window 3");
    }

    @Test
    void gradientsMatchFiniteDifferencesWithOneKvHeadWindowAndSegments() {
        checkGradients(new Config(1, 9, 4, 1, 5, 4, new int[] {2, 2, 2, 2, 2, 2, 3, 3, 3}), "MQA 4/1 window 4 packed");
    }

    /** Two examples packed in one row: example 2 neither sees example 1 nor sends it gradient. */
    @Test
    void packedExamplesDoNotAttendToEachOther() {
        Random r = TestData.random("attention packing");
        int[] segs = {0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1};
        Config c = new Config(1, 12, 4, 2, 8, 0, segs);
        int first = 5; // example 1 = tokens [0, 5), example 2 = [5, 12)
        float[][] in = inputs(r, c);
        try (CpuBackend cpu = new CpuBackend(2)) {
            float[] out = forward(cpu, c, in[0], in[1], in[2]).out().toFloatArray();
            float[][] perturbed = {in[0].clone(), in[1].clone(), in[2].clone()};
            for (int a = 0; a < 3; a++) {
                int width = a == 0 ? c.qWidth() : c.kvWidth();
                for (int i = 0; i < first * width; i++) perturbed[a][i] += 3f + i % 5;
            }
            float[] out2 = forward(cpu, c, perturbed[0], perturbed[1], perturbed[2]).out().toFloatArray();
            int split = first * c.qWidth();
            assertArrayEquals(Arrays.copyOfRange(out, split, out.length), Arrays.copyOfRange(out2, split, out2.length),
                    "example 2's outputs do not depend on example 1");
            boolean changed = false;
            for (int i = 0; i < split; i++) changed |= out[i] != out2[i];
            assertEquals(true, changed, "example 1's outputs do change (the perturbation is real)");

            // example 2 alone as its own sequence gives the same outputs
            Config alone = new Config(1, 7, 4, 2, 8, 0, null);
            float[] alone2 = forward(cpu, alone, Arrays.copyOfRange(in[0], split, in[0].length),
                    Arrays.copyOfRange(in[1], first * c.kvWidth(), in[1].length),
                    Arrays.copyOfRange(in[2], first * c.kvWidth(), in[2].length)).out().toFloatArray();
            assertArrayEquals(alone2, Arrays.copyOfRange(out, split, out.length), "packed = unpacked");

            // a loss on example 2 only sends no gradient to example 1's q, k, v
            float[] g = in[3].clone();
            Arrays.fill(g, 0, split, 0f);
            Tensor[] grads = backward(cpu, c, in[0], in[1], in[2], forward(cpu, c, in[0], in[1], in[2]), g);
            for (int a = 0; a < 3; a++) {
                float[] ga = grads[a].toFloatArray();
                int width = a == 0 ? c.qWidth() : c.kvWidth();
                for (int i = 0; i < first * width; i++) assertEquals(0f, ga[i], "gradient " + a + " of example 1 at " + i);
            }
        }
    }

    /**
     * GQA: the gradient of a shared kv head is the sum of the gradients the group's query heads
     * would send to private copies of it (repeat_kv), bit for bit (same per-head float ops, summed
     * in head order).
     */
    @Test
    void groupedKvGradientsAreSumsOverTheGroup() {
        Random r = TestData.random("attention GQA sum");
        Config gqa = new Config(2, 6, 6, 2, 8, 0, null);
        Config mha = new Config(2, 6, 6, 6, 8, 0, null);
        int group = 3, d = 8, rows = 12;
        float[][] in = inputs(r, gqa);
        float[] kRep = new float[rows * mha.kvWidth()], vRep = new float[rows * mha.kvWidth()];
        for (int row = 0; row < rows; row++) {
            for (int h = 0; h < 6; h++) {
                System.arraycopy(in[1], row * gqa.kvWidth() + (h / group) * d, kRep, row * mha.kvWidth() + h * d, d);
                System.arraycopy(in[2], row * gqa.kvWidth() + (h / group) * d, vRep, row * mha.kvWidth() + h * d, d);
            }
        }
        try (CpuBackend cpu = new CpuBackend(2)) {
            AttentionResult fg = forward(cpu, gqa, in[0], in[1], in[2]);
            AttentionResult fm = forward(cpu, mha, in[0], kRep, vRep);
            assertArrayEquals(fm.out().toFloatArray(), fg.out().toFloatArray(), "repeat_kv gives the same forward");
            Tensor[] gg = backward(cpu, gqa, in[0], in[1], in[2], fg, in[3]);
            Tensor[] gm = backward(cpu, mha, in[0], kRep, vRep, fm, in[3]);
            assertArrayEquals(gm[0].toFloatArray(), gg[0].toFloatArray(), "grad_q");
            for (int a = 1; a < 3; a++) {
                float[] rep = gm[a].toFloatArray();
                float[] sum = new float[rows * gqa.kvWidth()];
                for (int row = 0; row < rows; row++) {
                    for (int h = 0; h < 6; h++) {
                        for (int i = 0; i < d; i++) {
                            sum[row * gqa.kvWidth() + (h / group) * d + i] += rep[row * mha.kvWidth() + h * d + i];
                        }
                    }
                }
                assertArrayEquals(sum, gg[a].toFloatArray(), a == 1 ? "grad_k" : "grad_v");
            }
        }
    }

    @Test
    void backwardDoesNotDependOnTheThreadCount() {
        Random r = TestData.random("attention threads");
        Config c = new Config(2, 16, 4, 2, 8, 5, null);
        float[][] in = inputs(r, c);
        try (CpuBackend one = new CpuBackend(1); CpuBackend four = new CpuBackend(4)) {
            Tensor[] a = backward(one, c, in[0], in[1], in[2], forward(one, c, in[0], in[1], in[2]), in[3]);
            Tensor[] b = backward(four, c, in[0], in[1], in[2], forward(four, c, in[0], in[1], in[2]), in[3]);
            for (int i = 0; i < 3; i++) assertArrayEquals(a[i].toFloatArray(), b[i].toFloatArray(), "gradient " + i);
        }
    }

    @Test
    void badShapesAreRejectedWithAMessage() {
        try (CpuBackend cpu = new CpuBackend(1)) {
            Tensor q = Tensor.of(new float[6 * 8], 6, 8), k = Tensor.of(new float[6 * 4], 6, 4);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> cpu.attentionTrain(q, k, k, null, 4, 2, 1, 4, 0.5f, 0));
            assertEquals(true, e.getMessage().contains("B = 4"), e.getMessage());
            assertThrows(IllegalArgumentException.class,
                    () -> cpu.attentionTrain(q, k, k, Tensor.ofInts(new int[5], 5), 2, 2, 1, 4, 0.5f, 0));
            assertThrows(IllegalArgumentException.class, () -> cpu.attentionTrain(q, k, k, null, 2, 3, 2, 4, 0.5f, 0));
        }
    }
}
