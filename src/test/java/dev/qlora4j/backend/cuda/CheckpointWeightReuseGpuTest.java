package dev.qlora4j.backend.cuda;

import dev.qlora4j.model.QuantizedLinearFactory;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.model.WeightSource;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.PeftModel;
import dev.qlora4j.peft.config.InitLoraWeights;
import dev.qlora4j.peft.config.LoraConfig;
import dev.qlora4j.peft.config.ModuleSelector;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.quant.QuantizationConfig;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * The backward of a checkpointed layer reusing the 4-bit weights its recompute dequantized
 * (TransformerLM.setReuseDequantizedWeights, CudaBackend.beginWeightReuse): a two-layer QLoRA model of the TinyLlama
 * shape, LoRA r=8 with non-zero B on every linear layer, two rows of 256 tokens with packed segments, one step with
 * checkpointing per setting. With reuse on and off (and without checkpointing) the loss and every LoRA gradient are
 * bit for bit the same; the backward's dequantizations (op profiler: "linearQuantizedBackwardInput/dequantize") drop
 * from 7 to 1 per layer (down, which the recompute does not run) where the kept weight has the backward's bits, and
 * the backend counts 6 reused weights per layer; nothing stays kept after a step. Three dtype setups:
 * <ul>
 *   <li>BF16 activations, NF4 + double quantization with BF16 compute of BF16 weights (QLoRA, the CUDA BF16 LoRA
 *       path): reused;</li>
 *   <li>F32 activations, F32 compute of F32 weights (the generic LoRA path, whose backward re-runs its base forward
 *       inside the scope): reused;</li>
 *   <li>F32 activations with BF16 compute (the forward's weight is BF16, the backward's F32): not reused, same
 *       counts as off.</li>
 * </ul>
 * Peak memory with and without reuse is printed.
 */
@Tag("gpu")
class CheckpointWeightReuseGpuTest {
    private static final String SHAPE = "llama-1b@2";
    private static final int BATCH = 2, T = 256;

    record Step(double loss, List<float[]> grads, long backwardDequantizations, long reused, long peakBytes) {}

    /** A backend with the op profiler on (it counts calls per op); the property is restored after. */
    static CudaBackend profiledBackend(DType activations) {
        String old = System.getProperty(OpProfiler.PROPERTY);
        System.setProperty(OpProfiler.PROPERTY, "true");
        try {
            return CudaBackend.create(0, activations, false);
        } finally {
            if (old == null) System.clearProperty(OpProfiler.PROPERTY);
            else System.setProperty(OpProfiler.PROPERTY, old);
        }
    }

    /** The synthetic weights with every matrix cast to F32 on the device (so 4-bit states are F32: mid F32 at F32 compute). */
    record F32Matrices(WeightSource inner, CudaBackend b) implements WeightSource {
        @Override public boolean has(String name) { return inner.has(name); }

        @Override
        public Tensor get(String name) {
            Tensor t = inner.get(name);
            if (t.rank() != 2) return t;
            Tensor f = b.cast(t, DType.F32);
            t.close();
            return f;
        }

        @Override public String describe() { return inner.describe() + ", matrices as F32"; }
    }

    static Step step(CudaBackend b, TransformerLM m, PeftModel peft, boolean checkpointing, boolean reuse) {
        int[][] x = dev.qlora4j.model.PackedTestBatch.of(m.config().vocabSize(), BATCH, T, 100, 3);
        peft.zeroGrad();
        m.setReuseDequantizedWeights(reuse);
        b.synchronize();
        b.profiler().reset();
        b.context().allocator().resetPeak();
        long reusedBefore = b.reusedDequantizations();
        TransformerLM.StepResult r = m.trainStep(x[0], x[1], x[2], x[3], BATCH, checkpointing, 1f / (BATCH * T));
        b.synchronize();
        long peak = b.context().allocator().stats().peakAllocatedBytes();
        assertEquals(0, b.keptDequantizedWeights(), "nothing stays kept after a step");
        OpProfiler.Stat s = b.profiler().stats().get("linearQuantizedBackwardInput/dequantize");
        List<float[]> grads = new ArrayList<>();
        for (Param p : peft.trainableParameters()) grads.add(b.toHost(p.grad()).toFloatArray().clone());
        return new Step(r.lossSum(), grads, s == null ? 0 : s.calls(), b.reusedDequantizations() - reusedBefore, peak);
    }

    static void assertBitIdentical(Step expected, Step actual, List<Param> params, String what) {
        dev.qlora4j.model.BitIdenticalGradients.assertSame(expected.loss(), expected.grads(), actual.loss(), actual.grads(), params, what);
    }

    /** One model per setup: steps without checkpointing, with reuse, without, with again; the counts as expected. */
    static void check(DType activations, QuantizationConfig q, boolean f32Weights, boolean reusable, String what) {
        assumeTrue(CudaBackend.isAvailable(), "no GPU");
        try (CudaBackend b = profiledBackend(activations)) {
            var c = SyntheticWeights.config(SHAPE);
            WeightSource w = SyntheticWeights.onDevice(c, b, 1234);
            if (f32Weights) w = new F32Matrices(w, b);
            TransformerLM m = TransformerLM.load(c, w, b, new QuantizedLinearFactory(q));
            LoraConfig cfg = LoraConfig.builder().r(8).loraAlpha(16).loraDropout(0.0).targetModules(new ModuleSelector.AllLinear())
                    .initLoraWeights(new InitLoraWeights.Flag(false)).build();
            try (PeftModel peft = PeftModel.wrap(m, "synthetic-" + SHAPE, cfg, PeftModel.DEFAULT_ADAPTER, 5)) {
                peft.train(true);
                List<Param> params = peft.trainableParameters();
                Step none = step(b, m, peft, false, true);
                Step on = step(b, m, peft, true, true);
                Step off = step(b, m, peft, true, false);
                Step onAgain = step(b, m, peft, true, true);
                int layers = m.numLayers();
                System.out.printf("%s: loss %.6f; backward dequantizations %d (reuse on) / %d (off), %d reused; peak %.1f / %.1f MiB "
                                + "(reuse on / off), %.1f MiB without checkpointing%n", what, on.loss() / (BATCH * T),
                        on.backwardDequantizations(), off.backwardDequantizations(), on.reused(),
                        on.peakBytes() / 1048576.0, off.peakBytes() / 1048576.0, none.peakBytes() / 1048576.0);
                assertBitIdentical(off, on, params, what + ": reuse on vs off");
                assertBitIdentical(on, onAgain, params, what + ": reuse on, second step");
                assertBitIdentical(none, on, params, what + ": reuse vs no checkpointing");
                assertEquals(7L * layers, off.backwardDequantizations(), what + ": every grad_x dequantizes with reuse off");
                assertEquals(0, off.reused(), what + ": nothing reused with reuse off");
                assertEquals(7L * layers, none.backwardDequantizations(), what + ": every grad_x dequantizes without checkpointing");
                assertEquals(0, none.reused(), what + ": no scope without checkpointing");
                if (reusable) {
                    assertEquals(layers, on.backwardDequantizations(), what + ": only down (not recomputed) dequantizes with reuse on");
                    assertEquals(6L * layers, on.reused(), what + ": q, k, v, o, gate, up reused per layer");
                    assertEquals(layers, onAgain.backwardDequantizations(), what + ": and again in a second step");
                } else {
                    assertEquals(7L * layers, on.backwardDequantizations(), what + ": dtypes differ, so every grad_x dequantizes");
                    assertEquals(0, on.reused(), what + ": dtypes differ, nothing reused");
                }
            } // closing the PeftModel closes m
        }
    }

    @Test
    void qloraBf16ReusesTheRecomputedWeightsWithBitIdenticalGradients() {
        check(DType.BF16, QuantizationConfig.qlora(), false, true, SHAPE + " QLoRA, bf16 activations");
    }

    @Test
    void f32ComputeOfF32WeightsReusesThemOnTheGenericLoraPath() {
        QuantizationConfig f32 = new QuantizationConfig(false, true, 6.0, null, false, false, DType.F32, QuantType.NF4, true,
                DType.U8, 64);
        check(DType.F32, f32, true, true, SHAPE + " NF4 of f32 weights, f32 compute and activations");
    }

    @Test
    void bf16ComputeUnderF32ActivationsDequantizesAsBefore() {
        check(DType.F32, QuantizationConfig.qlora(), false, false, SHAPE + " QLoRA, f32 activations (bf16 compute)");
    }
}
