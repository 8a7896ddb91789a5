package dev.qlora4j.backend.cpu;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.qlora4j.tensor.Tensor;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * crossEntropyWithGrad: losses equal the forward crossEntropy op bit for bit and a float64
 * log-softmax; the gradient matches central finite differences of gradScale * sum(losses) in
 * float64; rows with target -100 give loss 0 and a zero gradient row; large logits stay finite.
 */
class CrossEntropyBackwardTest {

    private static double rowLoss(double[] l, int o, int vocab, int t) {
        double max = Double.NEGATIVE_INFINITY;
        for (int j = 0; j < vocab; j++) max = Math.max(max, l[o + j]);
        double sum = 0;
        for (int j = 0; j < vocab; j++) sum += Math.exp(l[o + j] - max);
        return max + Math.log(sum) - l[o + t];
    }

    @Test
    void lossesAndGradientsMatchFloat64() {
        Random r = TestData.random("crossEntropyWithGrad");
        int n = 5, vocab = 43;
        float gradScale = 0.25f;
        float[] logits = TestData.gaussian(r, n * vocab, 3.0);
        int[] targets = {4, -100, 42, 0, 17};
        double[] fd = FiniteDifferences.gradient(FiniteDifferences.toDoubles(logits), l -> {
            double s = 0;
            for (int i = 0; i < n; i++) if (targets[i] != -100) s += rowLoss(l, i * vocab, vocab, targets[i]);
            return gradScale * s;
        });
        try (CpuBackend cpu = new CpuBackend(2)) {
            Tensor[] out = cpu.crossEntropyWithGrad(Tensor.of(logits, n, vocab), Tensor.ofInts(targets, n), gradScale);
            float[] losses = out[0].toFloatArray();
            float[] grad = out[1].toFloatArray();
            assertArrayEquals(cpu.crossEntropy(Tensor.of(logits, n, vocab), Tensor.ofInts(targets, n)).toFloatArray(),
                    losses, "the same losses as the forward op");
            double[] ref = new double[n];
            for (int i = 0; i < n; i++) {
                ref[i] = targets[i] == -100 ? 0 : rowLoss(FiniteDifferences.toDoubles(logits), i * vocab, vocab, targets[i]);
            }
            TestData.assertClose(ref, losses, 1e-6, 1e-6, "losses");
            FiniteDifferences.assertGradient(fd, grad, "grad_logits");
            for (int j = 0; j < vocab; j++) assertEquals(0f, grad[vocab + j], "ignored row has a zero gradient");
        }
    }

    @Test
    void largeLogitsStayFinite() {
        int vocab = 20;
        float[] logits = new float[vocab];
        for (int j = 0; j < vocab; j++) logits[j] = 1000f + j;
        try (CpuBackend cpu = new CpuBackend(1)) {
            Tensor[] out = cpu.crossEntropyWithGrad(Tensor.of(logits, 1, vocab), Tensor.ofInts(new int[] {19}, 1), 1f);
            double sum = 0;
            for (int j = 0; j < vocab; j++) sum += Math.exp(j - 19.0);
            assertEquals(Math.log(sum), out[0].getFloat(0), 1e-6);
            float[] grad = out[1].toFloatArray();
            double gradSum = 0;
            for (float v : grad) {
                gradSum += v;
                if (!Float.isFinite(v)) throw new AssertionError("non-finite gradient " + v);
            }
            assertEquals(0, gradSum, 1e-6, "softmax - onehot sums to zero");
            assertEquals(1 / sum - 1, grad[19], 1e-6);
        }
    }
}
