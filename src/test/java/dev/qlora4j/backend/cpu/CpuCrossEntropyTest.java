package dev.qlora4j.backend.cpu;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * crossEntropy against a float64 log-sum-exp. Tolerance 1e-5 * (1 + |loss|): the float32 sum
 * of vocab exponentials is within about (vocab/lanes) * 2^-24 ~ 1e-5 relative at worst, which
 * moves log(sum) by the same absolute amount; the final subtraction rounds relative to |loss|.
 */
class CpuCrossEntropyTest {
    @Test
    void matchesFloat64LogSumExpAndIgnoresMinus100() {
        Random r = TestData.random("crossEntropy");
        int n = 6, vocab = 1003;
        float[] logits = TestData.gaussian(r, n * vocab, 3.0);
        for (int c = 0; c < vocab; c++) logits[5 * vocab + c] += 5000f; // large logits must not overflow
        int[] targets = {3, 1002, -100, 0, 517, 9};
        double[] ref = new double[n];
        for (int i = 0; i < n; i++) {
            if (targets[i] == -100) continue;
            double max = Double.NEGATIVE_INFINITY;
            for (int c = 0; c < vocab; c++) max = Math.max(max, logits[i * vocab + c]);
            double sum = 0;
            for (int c = 0; c < vocab; c++) sum += Math.exp(logits[i * vocab + c] - max);
            ref[i] = max + Math.log(sum) - logits[i * vocab + targets[i]];
        }
        Tensor loss;
        try (CpuBackend cpu = new CpuBackend(2)) {
            loss = cpu.crossEntropy(Tensor.of(logits, n, vocab), Tensor.ofInts(targets, n));
        }
        assertEquals(DType.F32, loss.dtype());
        assertArrayEquals(new int[] {n}, loss.shape());
        assertEquals(0f, loss.getFloat(2), "target -100 gives 0 loss");
        float[] got = loss.toFloatArray();
        double[] tol = new double[n];
        for (int i = 0; i < n; i++) tol[i] = 1e-5 * (1 + Math.abs(ref[i]));
        TestData.assertWithin(ref, got, tol, "crossEntropy");
    }
}
