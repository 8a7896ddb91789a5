package dev.qlora4j.backend.cuda;

import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.PeftModel;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * The dequantized weights a checkpointed layer's recompute keeps for its backward (DequantCache): on a two-layer QLoRA
 * model (NF4 + double quantization, BF16, LoRA on every linear layer, so q/k/v and gate/up run the LoRA fold and o /
 * down the plain prefill GEMM) the loss and every LoRA gradient are bit for bit those of the step without the cache
 * (-Dqlora4j.cuda.dequantCacheMiB=0) and of the step without checkpointing, the backward dequantizes only down_proj
 * (the one base product the recompute skips), and the cache is empty after the step. The peak memory with and without is printed.
 */
@Tag("gpu")
class DequantCacheGpuTest {
    private static final String SHAPE = "llama-1b@2";
    static final int BATCH = 2, T = 256;

    record Step(double loss, List<float[]> grads, long backwardDequantizes, long keptWeightProducts, long peakBytes) {}

    static Step step(CudaBackend b, TransformerLM m, PeftModel peft, boolean checkpointing) {
        return step(b, m, peft, checkpointing, CheckpointKeepAttentionGpuTest.batch(m.config().vocabSize()));
    }

    /** One training step on x = {ids, positions, segments (or null), targets} of BATCH rows of T tokens. */
    static Step step(CudaBackend b, TransformerLM m, PeftModel peft, boolean checkpointing, int[][] x) {
        peft.zeroGrad();
        b.synchronize();
        b.profiler().reset();
        b.context().allocator().resetPeak();
        TransformerLM.StepResult r = m.trainStep(x[0], x[1], x[2], x[3], BATCH, checkpointing, 1f / (BATCH * T));
        b.synchronize();
        long peak = b.context().allocator().stats().peakAllocatedBytes();
        OpProfiler.Stat dq = b.profiler().stats().get("linearQuantizedBackwardInput/dequantize");
        OpProfiler.Stat kept = b.profiler().stats().get("linearQuantizedBackwardInput (kept weight)");
        List<float[]> grads = new ArrayList<>();
        for (Param p : peft.trainableParameters()) grads.add(b.toHost(p.grad()).toFloatArray().clone());
        assertEquals(0, b.context().dequantCache().bytes(), "the cache is empty after the step");
        assertTrue(!b.context().dequantCache().isOpen(), "the cache is closed after the step");
        return new Step(r.lossSum(), grads, dq == null ? 0 : dq.calls(), kept == null ? 0 : kept.calls(), peak);
    }

    @Test
    void keptWeightsGiveBitIdenticalGradientsAndNoBackwardDequantize() {
        assumeTrue(CudaBackend.isAvailable(), "no GPU");
        // the budget is switched below; this only remembers its value
        try (var old = TemporaryProperty.save(DequantCache.BUDGET_PROPERTY);
             CudaBackend b = CheckpointKeepAttentionGpuTest.profiledBackend()) {
            try (PeftModel peft = CheckpointKeepAttentionGpuTest.qloraAllLinear(b, SHAPE, 4321)) {
                TransformerLM m = peft.model();
                List<Param> params = peft.trainableParameters();
                int layers = m.numLayers();
                m.setCheckpointKeepResidual(false);   // the recompute runs o_proj: its weight is kept for the backward
                Step cached = step(b, m, peft, true);
                System.setProperty(DequantCache.BUDGET_PROPERTY, "0");
                Step uncached = step(b, m, peft, true);
                System.clearProperty(DequantCache.BUDGET_PROPERTY);
                Step none = step(b, m, peft, false);
                System.out.printf("%s, %d x %d tokens: peak %.1f MiB with the kept weights, %.1f without, %.1f without checkpointing%n",
                        SHAPE, BATCH, T, cached.peakBytes() / 1048576.0, uncached.peakBytes() / 1048576.0, none.peakBytes() / 1048576.0);
                // the recompute skips down_proj (its output is not needed by the backward), so only down is dequantized again
                assertEquals(layers, cached.backwardDequantizes(), "with the cache the backward dequantizes down_proj only");
                // the first layer's q, k, v form no input gradient (the embedding is frozen): 3 products fewer; gate and
                // up run joined (one product over the recompute's joined fold buffer, LoraGroup#forwardJoined)
                assertEquals(5L * layers - 3, cached.keptWeightProducts(), "q, k, v, o, gate+up: the backward uses the kept weight");
                assertEquals(7L * layers - 3, uncached.backwardDequantizes(), "budget 0: each base weight dequantized again");
                dev.qlora4j.model.BitIdenticalGradients.assertSame(uncached.loss(), uncached.grads(), cached.loss(), cached.grads(),
                        params, "kept dequantized weights vs dequantized again");
                dev.qlora4j.model.BitIdenticalGradients.assertSame(none.loss(), none.grads(), cached.loss(), cached.grads(),
                        params, "kept dequantized weights vs no checkpointing");
                // keeping the attention block output: the recompute skips o_proj too, so its backward dequantizes o
                m.setCheckpointKeepResidual(true);
                Step keptResidual = step(b, m, peft, true);
                assertEquals(2L * layers, keptResidual.backwardDequantizes(), "kept resid: the backward dequantizes o_proj and down_proj");
                assertEquals(4L * layers - 3, keptResidual.keptWeightProducts(), "q, k, v, gate+up: the backward uses the kept weight");
                dev.qlora4j.model.BitIdenticalGradients.assertSame(cached.loss(), cached.grads(), keptResidual.loss(),
                        keptResidual.grads(), params, "kept resid vs recomputed");
            } // closing the PeftModel closes m
        }
    }
}
