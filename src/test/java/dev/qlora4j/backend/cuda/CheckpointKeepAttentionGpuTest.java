package dev.qlora4j.backend.cuda;

import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.model.QuantizedLinearFactory;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.PeftModel;
import dev.qlora4j.peft.config.InitLoraWeights;
import dev.qlora4j.peft.config.LoraConfig;
import dev.qlora4j.peft.config.ModuleSelector;
import dev.qlora4j.quant.QuantizationConfig;
import dev.qlora4j.tensor.DType;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * Gradient checkpointing keeping the attention result (TransformerLM.setCheckpointKeepAttention) on the GPU: a
 * two-layer QLoRA model of the TinyLlama shape (NF4 + double quantization, BF16 activations, head dim 64 and 32 query
 * heads over 4 kv heads: the tensor-core attention kernels), LoRA r=8 with non-zero B on every linear layer, two rows of
 * 256 tokens with packed segments. Keeping the attention gives the loss and every LoRA gradient bit for bit as the full
 * recompute and as no checkpointing, and runs the attention forward once per layer instead of twice (counted by the
 * backend's op profiler, so a silent fallback to the full recompute fails). Keeping the attention block output (resid),
 * alone or with the attention, gives the same bits too. The peak memory of each mode is printed.
 */
@Tag("gpu")
class CheckpointKeepAttentionGpuTest {
    private static final String SHAPE = "llama-1b@2";
    private static final int BATCH = 2, T = 256;

    /** KEEP: the attention result; KEEP_RESIDUAL: the attention block output; KEEP_BOTH: both. */
    enum Mode { NONE, RECOMPUTE, KEEP, KEEP_RESIDUAL, KEEP_BOTH }

    record Step(double loss, List<float[]> grads, long attentionCalls, long peakBytes) {}

    /** A BF16 backend with the op profiler on (it counts calls per op); the property is restored after. */
    static CudaBackend profiledBackend() {
        try (var p = TemporaryProperty.set(OpProfiler.PROPERTY, "true")) {
            return CudaBackend.create(0, DType.BF16, false);
        }
    }

    /**
     * A synthetic QLoRA model of the shape (NF4 + double quantization, BF16) with LoRA r 8 on every linear layer and
     * a random lora_B (so every product is live), in training mode; closing it closes the model.
     */
    static PeftModel qloraAllLinear(CudaBackend b, String shape, int seed) {
        TransformerLM m = SyntheticWeights.model(shape, b, seed, new QuantizedLinearFactory(QuantizationConfig.qlora()));
        LoraConfig cfg = LoraConfig.builder().r(8).loraAlpha(16).loraDropout(0.0).targetModules(new ModuleSelector.AllLinear())
                .initLoraWeights(new InitLoraWeights.Flag(false)).build();
        PeftModel peft = PeftModel.wrap(m, "synthetic-" + shape, cfg, PeftModel.DEFAULT_ADAPTER, 5);
        peft.train(true);
        return peft;
    }

    static int[][] batch(int vocab) {
        return dev.qlora4j.model.PackedTestBatch.of(vocab, BATCH, T, 100, 3);  // row 0 packs two examples
    }

    static Step step(CudaBackend b, TransformerLM m, PeftModel peft, Mode mode) {
        int[][] x = batch(m.config().vocabSize());
        peft.zeroGrad();
        m.setCheckpointKeepAttention(mode == Mode.KEEP || mode == Mode.KEEP_BOTH);
        m.setCheckpointKeepResidual(mode == Mode.KEEP_RESIDUAL || mode == Mode.KEEP_BOTH);
        b.synchronize();
        b.profiler().reset();
        b.context().allocator().resetPeak();
        TransformerLM.StepResult r = m.trainStep(x[0], x[1], x[2], x[3], BATCH, mode != Mode.NONE, 1f / (BATCH * T));
        b.synchronize();
        long peak = b.context().allocator().stats().peakAllocatedBytes();
        OpProfiler.Stat s = b.profiler().stats().get("attentionTrain");
        List<float[]> grads = new ArrayList<>();
        for (Param p : peft.trainableParameters()) grads.add(b.toHost(p.grad()).toFloatArray().clone());
        return new Step(r.lossSum(), grads, s == null ? 0 : s.calls(), peak);
    }

    static void assertBitIdentical(Step expected, Step actual, List<Param> params, String what) {
        dev.qlora4j.model.BitIdenticalGradients.assertSame(expected.loss(), expected.grads(), actual.loss(), actual.grads(), params, what);
    }

    @Test
    void keptAttentionGivesBitIdenticalLoraGradientsWithOneAttentionForwardPerLayer() {
        assumeTrue(CudaBackend.isAvailable(), "no GPU");
        try (CudaBackend b = profiledBackend()) {
            try (PeftModel peft = qloraAllLinear(b, SHAPE, 1234)) {
                TransformerLM m = peft.model();
                List<Param> params = peft.trainableParameters();
                Step none = step(b, m, peft, Mode.NONE);
                Step keep = step(b, m, peft, Mode.KEEP);
                Step recompute = step(b, m, peft, Mode.RECOMPUTE);
                Step keepAgain = step(b, m, peft, Mode.KEEP);
                Step keepResidual = step(b, m, peft, Mode.KEEP_RESIDUAL);
                Step keepBoth = step(b, m, peft, Mode.KEEP_BOTH);
                int layers = m.numLayers();
                System.out.printf("%s, %d x %d tokens: loss %.6f; attention forwards %d / %d / %d; peak %.1f / %.1f / %.1f MiB "
                                + "(no checkpointing / full recompute / kept attention)%n", SHAPE, BATCH, T, keep.loss() / (BATCH * T),
                        none.attentionCalls(), recompute.attentionCalls(), keep.attentionCalls(),
                        none.peakBytes() / 1048576.0, recompute.peakBytes() / 1048576.0, keep.peakBytes() / 1048576.0);
                assertBitIdentical(recompute, keep, params, "kept attention vs full recompute");
                assertBitIdentical(keep, keepAgain, params, "kept attention, second step");
                assertEquals(layers, none.attentionCalls(), "attention forwards without checkpointing");
                assertEquals(2L * layers, recompute.attentionCalls(), "attention forwards with the full recompute");
                assertEquals(layers, keep.attentionCalls(), "attention forwards keeping the attention");
                assertBitIdentical(none, keep, params, "kept attention vs no checkpointing");
                System.out.printf("kept attention block output: peak %.1f MiB; both kept: %.1f MiB%n",
                        keepResidual.peakBytes() / 1048576.0, keepBoth.peakBytes() / 1048576.0);
                assertBitIdentical(recompute, keepResidual, params, "kept attention block output vs full recompute");
                assertBitIdentical(recompute, keepBoth, params, "both kept vs full recompute");
                assertEquals(2L * layers, keepResidual.attentionCalls(), "attention forwards keeping the block output alone");
                assertEquals(layers, keepBoth.attentionCalls(), "attention forwards keeping both");
            } // closing the PeftModel closes m
        }
    }
}
