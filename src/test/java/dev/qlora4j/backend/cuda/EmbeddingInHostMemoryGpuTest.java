package dev.qlora4j.backend.cuda;

import dev.qlora4j.model.QuantizedLinearFactory;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.PeftModel;
import dev.qlora4j.peft.config.InitLoraWeights;
import dev.qlora4j.peft.config.LoraConfig;
import dev.qlora4j.peft.config.ModuleSelector;
import dev.qlora4j.quant.QuantizationConfig;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * The token embedding in page-locked host memory (TransformerLM.setEmbeddingInHostMemory) on the GPU: a two-layer
 * QLoRA model of the TinyLlama shape (untied head), BF16 activations; the lookup of every token (including the
 * 16-byte path's rows) gives the device table's bits, a checkpointed training step gives the same loss and LoRA
 * gradients bit for bit, the GPU memory in use drops by the table's size, and moving the table back restores both.
 */
@Tag("gpu")
class EmbeddingInHostMemoryGpuTest {
    private static final int BATCH = 2, T = 256;

    record Step(double loss, List<float[]> grads) {}

    static Step step(CudaBackend b, TransformerLM m, PeftModel peft) {
        int[][] x = CheckpointKeepAttentionGpuTest.batch(m.config().vocabSize());
        peft.zeroGrad();
        TransformerLM.StepResult r = m.trainStep(x[0], x[1], x[2], x[3], BATCH, true, 1f / (BATCH * T));
        List<float[]> grads = new ArrayList<>();
        for (Param p : peft.trainableParameters()) grads.add(b.toHost(p.grad()).toFloatArray().clone());
        return new Step(r.lossSum(), grads);
    }

    @Test
    void hostTableGivesTheDeviceTablesBitsAndFreesItsGpuMemory() {
        assumeTrue(CudaBackend.isAvailable(), "no GPU");
        try (CudaBackend b = CudaBackend.create(0, DType.BF16, false)) {
            TransformerLM m = SyntheticWeights.model("llama-1b@2", b, 99, new QuantizedLinearFactory(QuantizationConfig.qlora()));
            assertFalse(m.lmHeadIsEmbedding(), "the synthetic Llama has its own head");
            int vocab = m.config().vocabSize();
            int[] ids = new int[vocab];   // every row of the table, in a scrambled order
            for (int i = 0; i < vocab; i++) ids[i] = (int) ((i * 7919L) % vocab);
            float[] onDevice;
            try (Tensor idT = b.upload(Tensor.ofInts(ids, vocab)); Tensor e = b.embedding(idT, m.embedTokens())) {
                onDevice = b.toHost(e).toFloatArray().clone();
            }
            LoraConfig cfg = LoraConfig.builder().r(8).loraAlpha(16).loraDropout(0.0).targetModules(new ModuleSelector.AllLinear())
                    .initLoraWeights(new InitLoraWeights.Flag(false)).build();
            try (PeftModel peft = PeftModel.wrap(m, "synthetic", cfg, PeftModel.DEFAULT_ADAPTER, 5)) {
                peft.train(true);
                Step device = step(b, m, peft);
                b.synchronize();
                long before = b.context().allocator().stats().allocatedBytes();
                long table = m.embedTokens().byteSize();
                m.setEmbeddingInHostMemory(true);
                assertTrue(m.embeddingInHostMemory());
                long after = b.context().allocator().stats().allocatedBytes();
                System.out.printf("embedding table %.1f MiB: GPU memory in use %.1f -> %.1f MiB%n", table / 1048576.0,
                        before / 1048576.0, after / 1048576.0);
                assertTrue(before - after >= table, "the table's GPU memory is given back: " + before + " -> " + after);
                try (Tensor idT = b.upload(Tensor.ofInts(ids, vocab)); Tensor e = b.embedding(idT, m.embedTokens())) {
                    assertArrayEquals(onDevice, b.toHost(e).toFloatArray(), "lookup from host memory vs device memory");
                }
                Step host = step(b, m, peft);
                dev.qlora4j.model.BitIdenticalGradients.assertSame(device.loss(), device.grads(), host.loss(), host.grads(),
                        peft.trainableParameters(), "embedding in host memory vs on the GPU");
                m.setEmbeddingInHostMemory(false);
                assertFalse(m.embeddingInHostMemory());
                Step back = step(b, m, peft);
                dev.qlora4j.model.BitIdenticalGradients.assertSame(device.loss(), device.grads(), back.loss(), back.grads(),
                        peft.trainableParameters(), "embedding moved back to the GPU");
                assertEquals(table, m.embedTokens().byteSize());
            }
        }
    }
}
