package dev.qlora4j.peft;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.cpu.CpuBackend;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Named;

import java.util.stream.Stream;

/**
 * Backends the adapter tests run on: the reference-ops test backend (always) and the real CPU
 * backend, whose training ops (scale, axpyInPlace, dropout, rowNorms, linearBackward*, ...) are
 * implemented on another branch: until they are merged, tests on it are skipped by
 * {@link #assumeTrainingOps}.
 */
final class TestBackends {
    private TestBackends() {}

    static Stream<Named<Backend>> all() {
        return Stream.of(Named.of("ref-ops", new RefOpsBackend()), Named.of("cpu", new CpuBackend(1)));
    }

    /** Skips (JUnit assumption) when the backend lacks the training ops adapters use. */
    static void assumeTrainingOps(Backend b) {
        try {
            Tensor a = Tensor.of(new float[] {1, 2, 3, 4}, 2, 2);
            Tensor v = Tensor.of(new float[] {1, 2}, 2);
            b.scale(a, 2f);
            b.axpyInPlace(Tensor.of(new float[] {1, 2, 3, 4}, 2, 2), 1f, a);
            b.mul(a, a);
            b.dropout(a, 0.5f, 1);
            b.rowNorms(a);
            b.scaleColumns(a, v);
            b.transpose(a);
            b.linearBackwardInput(a, a);
            b.linearBackwardWeight(a, a, Tensor.zeros(dev.qlora4j.tensor.DType.F32, 2, 2));
            b.sumRowsInto(a, Tensor.zeros(dev.qlora4j.tensor.DType.F32, 2));
        } catch (UnsupportedOperationException e) {
            Assumptions.assumeTrue(false, "needs the CPU backend's training ops (branch cpu-backward): " + e.getMessage());
        }
    }
}
