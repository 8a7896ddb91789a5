package dev.qlora4j.peft;

import dev.qlora4j.tensor.Tensor;

/**
 * The BF16 lora_A copies of a LoraGroup's adapters stacked into one [sum r, in] tensor (the B operand of the
 * group's single x [A_0; A_1; ...]^T GEMM), with what it was made from: the same TrainableTensors, value tensors
 * and versions, so that it is re-made after any change of one of them (an optimizer step bumps the versions).
 */
final class StackedA implements AutoCloseable {
    private final TrainableTensor[] parts;
    private final Tensor[] values;
    private final long[] versions;
    private final Tensor stacked;

    private StackedA(TrainableTensor[] parts, Tensor[] values, long[] versions, Tensor stacked) {
        this.parts = parts;
        this.values = values;
        this.versions = versions;
        this.stacked = stacked;
    }

    /** stacked (owned from here) made from the current lora_A values of group, in order. */
    static StackedA of(LoraAdapter[] group, Tensor stacked) {
        int k = group.length;
        TrainableTensor[] parts = new TrainableTensor[k];
        Tensor[] values = new Tensor[k];
        long[] versions = new long[k];
        for (int i = 0; i < k; i++) {
            parts[i] = group[i].a();
            values[i] = parts[i].value();
            versions[i] = parts[i].version();
        }
        return new StackedA(parts, values, versions, stacked);
    }

    /** Whether this is the stack of group's lora_A values now. */
    boolean matches(LoraAdapter[] group) {
        if (group.length != parts.length) return false;
        for (int i = 0; i < parts.length; i++) {
            TrainableTensor a = group[i].a();
            if (a != parts[i] || a.value() != values[i] || a.version() != versions[i]) return false;
        }
        return true;
    }

    /** [sum r, in] BF16, owned by this. */
    Tensor tensor() { return stacked; }

    @Override
    public void close() { stacked.close(); }
}
