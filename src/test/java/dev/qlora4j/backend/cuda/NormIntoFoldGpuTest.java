package dev.qlora4j.backend.cuda;

import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.LoraGroup;
import dev.qlora4j.peft.PeftModel;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * The norms before q/k/v and gate/up writing straight into the LoRA fold's [x | H] buffers (LoraGroup#foldInputWidth;
 * the buffer then stands for the norm's output in the groups' forward and backward) on DequantCacheGpuTest's QLoRA
 * model: a training step gives the loss and every LoRA gradient bit for bit as with -Dqlora4j.cuda.normIntoFold=false
 * (the fold copies x into its own buffer), without checkpointing and with it (the recompute takes the same route). That
 * the route is taken: LoraGroup#foldInputWidth names the [x | H] width for both groups of a layer (0 with the switch off).
 */
@Tag("gpu")
class NormIntoFoldGpuTest {
    @AfterEach
    void clear() { System.clearProperty(LoraGroup.NORM_INTO_FOLD_PROPERTY); }

    @Test
    void theStepIsBitForBitTheCopyingOne() {
        assumeTrue(CudaBackend.isAvailable(), "no GPU");
        try (CudaBackend b = CheckpointKeepAttentionGpuTest.profiledBackend();
             PeftModel peft = CheckpointKeepAttentionGpuTest.qloraAllLinear(b, "llama-1b@2", 41)) {
            TransformerLM m = peft.model();
            List<Param> params = peft.trainableParameters();
            int hidden = m.config().hiddenSize();
            try (dev.qlora4j.tensor.Tensor xShape = b.context().empty(dev.qlora4j.tensor.DType.BF16, DequantCacheGpuTest.BATCH
                    * DequantCacheGpuTest.T, hidden)) {
                String l = "model.layers.1.";
                assertEquals(hidden + 64, LoraGroup.foldInputWidth(b, xShape, m.linear(l + "self_attn.q_proj"),
                        m.linear(l + "self_attn.k_proj"), m.linear(l + "self_attn.v_proj")), "q/k/v: r 8 x 3, padded to 64");
                assertEquals(hidden + 64, LoraGroup.foldInputWidth(b, xShape, m.linear(l + "mlp.gate_proj"),
                        m.linear(l + "mlp.up_proj")), "gate/up");
                System.setProperty(LoraGroup.NORM_INTO_FOLD_PROPERTY, "false");
                assertEquals(0, LoraGroup.foldInputWidth(b, xShape, m.linear(l + "mlp.gate_proj"), m.linear(l + "mlp.up_proj")));
                System.clearProperty(LoraGroup.NORM_INTO_FOLD_PROPERTY);
            }
            DequantCacheGpuTest.Step into = DequantCacheGpuTest.step(b, m, peft, false);
            OpProfiler.Stat folds = b.profiler().stats().get("lora fold forward (base + LoRA GEMMs)");
            assertEquals(2L * m.numLayers(), folds == null ? 0 : folds.calls(), "q/k/v and gate/up fold in every layer");
            DequantCacheGpuTest.Step intoCheckpointed = DequantCacheGpuTest.step(b, m, peft, true);
            System.setProperty(LoraGroup.NORM_INTO_FOLD_PROPERTY, "false");
            DequantCacheGpuTest.Step copying = DequantCacheGpuTest.step(b, m, peft, false);
            DequantCacheGpuTest.Step copyingCheckpointed = DequantCacheGpuTest.step(b, m, peft, true);
            dev.qlora4j.model.BitIdenticalGradients.assertSame(copying.loss(), copying.grads(), into.loss(), into.grads(),
                    params, "norm into the fold's buffer vs the fold's copy");
            dev.qlora4j.model.BitIdenticalGradients.assertSame(copyingCheckpointed.loss(), copyingCheckpointed.grads(),
                    intoCheckpointed.loss(), intoCheckpointed.grads(), params, "the same with checkpointing");
            assertTrue(into.peakBytes() > 0 && copying.peakBytes() > 0);
            System.out.printf("peak %.1f MiB with the norms into the fold's buffers, %.1f copying%n",
                    into.peakBytes() / 1048576.0, copying.peakBytes() / 1048576.0);
        }
    }
}
