package dev.qlora4j.backend.cuda;

import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.LoraGroup;
import dev.qlora4j.peft.PeftModel;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * gate/up as one joined GEMM (LoraGroup#forwardJoined: one [n, 2 * intermediate] output, SwiGLU over its halves,
 * the input gradient as one GEMM over both layers' gradients) against the two layers run separately
 * (-Dqlora4j.cuda.joinedGroups=false), on a two-layer QLoRA model (NF4 + double quantization, BF16, LoRA on every
 * linear layer): the loss and every LoRA gradient agree to BF16 rounding (grad_x is rounded once instead of once
 * per layer), the joined step is deterministic (bit for bit run to run), it runs one input-gradient product fewer
 * per layer, and with checkpointing (the recompute keeps the joined fold buffer) it gives the bits of the step
 * without.
 */
@Tag("gpu")
class JoinedGroupGpuTest {
    private static final String SHAPE = "llama-1b@2";

    @Test
    void joinedGateUpAgreesWithSeparateLayersAndIsDeterministic() {
        assumeTrue(CudaBackend.isAvailable(), "no GPU");
        try (var old = TemporaryProperty.save(LoraGroup.JOINED_PROPERTY);
             CudaBackend b = CheckpointKeepAttentionGpuTest.profiledBackend()) {
            try (PeftModel peft = CheckpointKeepAttentionGpuTest.qloraAllLinear(b, SHAPE, 987)) {
                TransformerLM m = peft.model();
                List<Param> params = peft.trainableParameters();
                int layers = m.numLayers();
                System.setProperty(LoraGroup.JOINED_PROPERTY, "false");
                DequantCacheGpuTest.Step separate = DequantCacheGpuTest.step(b, m, peft, false);
                long separateProducts = b.profiler().stats().get("linearQuantizedBackwardInput").calls();
                System.clearProperty(LoraGroup.JOINED_PROPERTY);
                DequantCacheGpuTest.Step joined = DequantCacheGpuTest.step(b, m, peft, false);
                long joinedProducts = b.profiler().stats().get("linearQuantizedBackwardInput").calls();
                DequantCacheGpuTest.Step again = DequantCacheGpuTest.step(b, m, peft, false);
                DequantCacheGpuTest.Step checkpointed = DequantCacheGpuTest.step(b, m, peft, true);

                assertEquals(separateProducts - layers, joinedProducts, "gate/up: one input-gradient GEMM per layer instead of two");
                dev.qlora4j.model.BitIdenticalGradients.assertSame(joined.loss(), joined.grads(), again.loss(), again.grads(),
                        params, "joined, run to run");
                dev.qlora4j.model.BitIdenticalGradients.assertSame(joined.loss(), joined.grads(), checkpointed.loss(),
                        checkpointed.grads(), params, "joined, checkpointing vs none");
                assertEquals(separate.loss(), joined.loss(), 1e-3 * Math.abs(separate.loss()), "loss");
                for (int i = 0; i < params.size(); i++) {
                    double err = relativeError(joined.grads().get(i), separate.grads().get(i));
                    assertTrue(err <= 1e-2, params.get(i).name() + ": relative error " + err + " against the separate layers");
                }
            } // closing the PeftModel closes m
        }
    }

    /**
     * q/k/v joined too: on a GQA shape with head dim 128 (two Llama3-8B layers) and unpacked rows, where the Hopper
     * attention backward writes dQ / dK / dV into one buffer and the q/k/v input gradient is one GEMM over it. The
     * same checks as for gate/up; the first layer (frozen embedding) forms only the adapters' gradients from it.
     */
    @Test
    void joinedQkvAgreesWithSeparateLayersAndIsDeterministic() {
        assumeTrue(CudaBackend.isAvailable(), "no GPU");
        try (var old = TemporaryProperty.save(LoraGroup.JOINED_PROPERTY);
             CudaBackend b = CheckpointKeepAttentionGpuTest.profiledBackend()) {
            try (PeftModel peft = CheckpointKeepAttentionGpuTest.qloraAllLinear(b, "llama3-8b@2", 654)) {
                TransformerLM m = peft.model();
                List<Param> params = peft.trainableParameters();
                int layers = m.numLayers();
                int[][] x = unpackedBatch(m.config().vocabSize(), 11);
                System.setProperty(LoraGroup.JOINED_PROPERTY, "false");
                DequantCacheGpuTest.Step separate = DequantCacheGpuTest.step(b, m, peft, false, x);
                long separateProducts = b.profiler().stats().get("linearQuantizedBackwardInput").calls();
                System.clearProperty(LoraGroup.JOINED_PROPERTY);
                DequantCacheGpuTest.Step joined = DequantCacheGpuTest.step(b, m, peft, false, x);
                long joinedProducts = b.profiler().stats().get("linearQuantizedBackwardInput").calls();
                assertEquals(layers, b.profiler().stats().get("attentionBackward").calls(),
                        "one attention backward per layer (the joined one)");
                DequantCacheGpuTest.Step again = DequantCacheGpuTest.step(b, m, peft, false, x);
                DequantCacheGpuTest.Step checkpointed = DequantCacheGpuTest.step(b, m, peft, true, x);

                // separate: q, k, v, o, gate, up, down per layer, the first layer's q, k, v skipped (frozen embedding);
                // joined: q/k/v, o, gate/up, down, the first layer's q/k/v skipped
                assertEquals(7L * layers - 3, separateProducts, "separate input-gradient products");
                assertEquals(4L * layers - 1, joinedProducts, "joined input-gradient products");
                dev.qlora4j.model.BitIdenticalGradients.assertSame(joined.loss(), joined.grads(), again.loss(), again.grads(),
                        params, "joined q/k/v, run to run");
                dev.qlora4j.model.BitIdenticalGradients.assertSame(joined.loss(), joined.grads(), checkpointed.loss(),
                        checkpointed.grads(), params, "joined q/k/v, checkpointing vs none");
                assertEquals(separate.loss(), joined.loss(), 1e-3 * Math.abs(separate.loss()), "loss");
                for (int i = 0; i < params.size(); i++) {
                    double err = relativeError(joined.grads().get(i), separate.grads().get(i));
                    assertTrue(err <= 1e-2, params.get(i).name() + ": relative error " + err + " against the separate layers");
                }
            }
        }
    }

    /**
     * The joined groups' GH from the input-gradient GEMM (CudaJoinedInputGrad#intoWide: [grad_x | GH] in one GEMM,
     * the norm backward reading grad_x with the wider row stride) against GH by its own GEMMs
     * (-Dqlora4j.cuda.ghInGemm=false), q/k/v and gate/up joined (two Llama3-8B layers, unpacked rows): the loss and
     * every LoRA gradient agree to BF16 rounding (s B is rounded to BF16 in the wide GEMM's weights; lora_alpha = 2r
     * makes s = 2, a power of two, so that differs only in the sums' order), and the wide path with checkpointing
     * (GH from the recompute's kept fold buffer) gives the bits of the step without.
     */
    @Test
    void ghFromTheInputGradientGemmAgreesWithItsOwnGemms() {
        assumeTrue(CudaBackend.isAvailable(), "no GPU");
        try (var old = TemporaryProperty.save(CudaJoinedInputGrad.WIDE_PROPERTY);
             CudaBackend b = CheckpointKeepAttentionGpuTest.profiledBackend()) {
            try (PeftModel peft = CheckpointKeepAttentionGpuTest.qloraAllLinear(b, "llama3-8b@2", 321)) {
                TransformerLM m = peft.model();
                List<Param> params = peft.trainableParameters();
                int[][] x = unpackedBatch(m.config().vocabSize(), 12);
                System.setProperty(CudaJoinedInputGrad.WIDE_PROPERTY, "false");
                DequantCacheGpuTest.Step own = DequantCacheGpuTest.step(b, m, peft, false, x);
                System.clearProperty(CudaJoinedInputGrad.WIDE_PROPERTY);
                DequantCacheGpuTest.Step wide = DequantCacheGpuTest.step(b, m, peft, false, x);
                DequantCacheGpuTest.Step checkpointed = DequantCacheGpuTest.step(b, m, peft, true, x);

                dev.qlora4j.model.BitIdenticalGradients.assertSame(wide.loss(), wide.grads(), checkpointed.loss(),
                        checkpointed.grads(), params, "GH in the GEMM, checkpointing vs none");
                assertEquals(own.loss(), wide.loss(), 1e-3 * Math.abs(own.loss()), "loss");
                for (int i = 0; i < params.size(); i++) {
                    double err = relativeError(wide.grads().get(i), own.grads().get(i));
                    assertTrue(err <= 1e-2, params.get(i).name() + ": relative error " + err + " against GH by its own GEMMs");
                }
            }
        }
    }

    /** {ids, positions, null segments, targets}: BATCH rows of T tokens, one example each (the last target ignored). */
    private static int[][] unpackedBatch(int vocab, long seed) {
        int rows = DequantCacheGpuTest.BATCH, t = DequantCacheGpuTest.T, n = rows * t;
        java.util.Random r = new java.util.Random(seed);
        int[] ids = new int[n], pos = new int[n], targets = new int[n];
        for (int i = 0; i < n; i++) {
            ids[i] = r.nextInt(vocab);
            pos[i] = i % t;
            targets[i] = i % t == t - 1 ? -100 : r.nextInt(vocab);
        }
        return new int[][] {ids, pos, null, targets};
    }

    /** |a - b| / |b| over the whole array (b not all zero). */
    private static double relativeError(float[] a, float[] b) {
        double num = 0, den = 0;
        for (int i = 0; i < a.length; i++) {
            double d = a[i] - b[i];
            num += d * d;
            den += (double) b[i] * b[i];
        }
        assertTrue(den > 0, "a gradient that is all zero");
        return Math.sqrt(num / den);
    }
}
