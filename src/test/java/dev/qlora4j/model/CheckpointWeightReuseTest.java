package dev.qlora4j.model;

import dev.qlora4j.Golden;
import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.cpu.CpuBackend;
import dev.qlora4j.io.CheckpointReader;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.PeftModel;
import dev.qlora4j.peft.config.InitLoraWeights;
import dev.qlora4j.peft.config.LoraConfig;
import dev.qlora4j.peft.config.ModuleSelector;
import dev.qlora4j.quant.QuantizationConfig;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Proxy;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Set;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The weight-reuse scope of gradient checkpointing (TransformerLM.setReuseDequantizedWeights): on the golden Llama
 * (3 layers) with NF4 + double-quantized linears (QLoRA config, lm_head dense) and LoRA r=4 with non-zero B on every
 * linear layer, a recording CPU backend sees, after the forward, exactly one beginWeightReuse / endWeightReuse pair
 * per layer, each around that layer's recompute (its attention forward and 6 quantized linear forwards: q, k, v, o,
 * gate, up) and its backward (its attention backward and 7 quantized grad_x: down too; and the CPU LoRA path's re-run
 * of each base forward), with no quantized op or
 * attention between the scopes and none in the forward. No scopes without checkpointing or with the switch off; with
 * kept attention and with activation offload the scopes are there too. Loss and every LoRA gradient are bit for bit
 * the same in every mode (the CPU backend's scope is the interface's no-op: this checks the model's side).
 */
class CheckpointWeightReuseTest {
    private static final int BATCH = 2, T = 24;
    private static final Set<String> RECORDED = Set.of("beginWeightReuse", "endWeightReuse", "attentionTrain",
            "attentionBackward", "linearQuantized", "linearQuantizedBackwardInput");

    /** A CPU backend that logs the calls named in RECORDED, in order, and otherwise is the CPU backend. */
    static final class Recording {
        final CpuBackend cpu = new CpuBackend(1);
        final List<String> log = Collections.synchronizedList(new ArrayList<>());
        final Backend backend = (Backend) Proxy.newProxyInstance(Backend.class.getClassLoader(), new Class<?>[] {Backend.class},
                (proxy, m, args) -> {
                    switch (m.getName()) {
                        case "equals": return proxy == args[0];
                        case "hashCode": return System.identityHashCode(proxy);
                        case "toString": return "recording " + cpu;
                        default: if (RECORDED.contains(m.getName())) log.add(m.getName());
                    }
                    try {
                        return m.invoke(cpu, args);
                    } catch (InvocationTargetException e) {
                        throw e.getCause();
                    }
                });
    }

    /** The golden Llama with 4-bit linears (QLoRA config) on a recording backend, LoRA on every linear layer. */
    record Loaded(TransformerLM model, PeftModel peft, CheckpointReader reader, Recording rec) implements AutoCloseable {
        static Loaded of() {
            Path dir = Golden.dir("llama-f32");
            Recording rec = new Recording();
            CheckpointReader r = CheckpointReader.open(dir);
            try {
                ModelConfig cfg = ModelConfig.load(dir);
                TransformerLM m = TransformerLM.load(cfg, new CheckpointWeights(r, dir.toString()), rec.backend,
                        new QuantizedLinearFactory(QuantizationConfig.qlora()));
                LoraConfig lora = LoraConfig.builder().r(4).loraAlpha(8).loraDropout(0.0)
                        .targetModules(new ModuleSelector.AllLinear()).initLoraWeights(new InitLoraWeights.Flag(false)).build();
                PeftModel peft = PeftModel.wrap(m, "llama-f32", lora, PeftModel.DEFAULT_ADAPTER, 7);
                peft.train(true);
                return new Loaded(m, peft, r, rec);
            } catch (java.io.IOException e) {
                r.close();
                throw new java.io.UncheckedIOException(e);
            }
        }

        @Override
        public void close() {
            peft.close(); // closes the model
            reader.close();
            rec.cpu.close();
        }
    }

    /** Loss, gradients in parameter order, and the recorded calls of one step. */
    record Step(double loss, List<float[]> grads, List<String> log) {}

    static Step step(Loaded l, boolean checkpointing, boolean keepAttention, boolean reuse) {
        TransformerLM m = l.model();
        int[][] b = PackedTestBatch.of(m.config().vocabSize(), BATCH, T, 9, 11);
        l.peft().zeroGrad();
        m.setCheckpointKeepAttention(keepAttention);
        m.setReuseDequantizedWeights(reuse);
        l.rec().log.clear();
        TransformerLM.StepResult r = m.trainStep(b[0], b[1], b[2], b[3], BATCH, checkpointing, 1f / 40);
        List<String> log = List.copyOf(l.rec().log);
        List<float[]> grads = new ArrayList<>();
        for (Param p : l.peft().trainableParameters()) grads.add(m.backend().toHost(p.grad()).toFloatArray().clone());
        return new Step(r.lossSum(), grads, log);
    }

    /**
     * The log of a checkpointed step with scopes: the forward (per layer one attention and 7 quantized linears, no
     * scope), then per layer one scope holding its recompute (1 attention forward unless kept, 6 quantized linears)
     * and its backward (1 attention backward, 7 quantized grad_x), and nothing recorded between or after the scopes.
     */
    static void assertOneScopePerLayer(List<String> log, int layers, boolean keepAttention, String what) {
        int first = log.indexOf("beginWeightReuse");
        assertTrue(first > 0, what + ": a scope opens after the forward: " + log);
        List<String> forward = log.subList(0, first);
        assertEquals(layers, Collections.frequency(forward, "attentionTrain"), what + ": forward attention calls");
        assertEquals(7 * layers, Collections.frequency(forward, "linearQuantized"), what + ": forward quantized linears");
        assertEquals(0, Collections.frequency(forward, "linearQuantizedBackwardInput") + Collections.frequency(forward, "endWeightReuse")
                + Collections.frequency(forward, "attentionBackward"), what + ": no backward op or scope end in the forward");
        int i = first, scopes = 0;
        while (i < log.size()) {
            assertEquals("beginWeightReuse", log.get(i), what + ": between scopes only a new scope may start, at " + i + ": " + log);
            int end = log.subList(i, log.size()).indexOf("endWeightReuse");
            assertTrue(end > 0, what + ": scope " + scopes + " is closed");
            List<String> inside = log.subList(i + 1, i + end);
            assertFalse(inside.contains("beginWeightReuse"), what + ": scopes do not nest");
            assertEquals(keepAttention ? 0 : 1, Collections.frequency(inside, "attentionTrain"), what + ": recompute attention in scope " + scopes);
            // 6 recomputed (q, k, v, o, gate, up) + 7 by the LoRA backward's generic path, which re-runs its base
            // forward before the base's grad_x (CUDA's BF16 LoRA path does not)
            assertEquals(6 + 7, Collections.frequency(inside, "linearQuantized"), what + ": quantized linears in scope " + scopes + ": " + inside);
            assertEquals(1, Collections.frequency(inside, "attentionBackward"), what + ": attention backward in scope " + scopes);
            assertEquals(7, Collections.frequency(inside, "linearQuantizedBackwardInput"), what + ": quantized grad_x in scope " + scopes);
            // the recompute (6 linears, the attention) comes before the backward inside the scope
            int firstBackward = inside.indexOf("linearQuantizedBackwardInput");
            assertTrue(Collections.frequency(inside.subList(0, firstBackward), "linearQuantized") >= 6
                    && inside.lastIndexOf("attentionTrain") < firstBackward, what + ": recompute then backward in scope " + scopes + ": " + inside);
            scopes++;
            i += end + 1;
        }
        assertEquals(layers, scopes, what + ": one scope per layer");
    }

    static void assertNoScopes(List<String> log, String what) {
        assertFalse(log.contains("beginWeightReuse") || log.contains("endWeightReuse"), what + ": no weight-reuse scope: " + log);
    }

    @Test
    void eachCheckpointedLayerRecomputesAndBacksUpInsideOneScopeWithUnchangedGradients() {
        try (Loaded l = Loaded.of()) {
            int layers = l.model().numLayers();
            List<Param> params = l.peft().trainableParameters();
            assertTrue(l.model().reuseDequantizedWeights(), "reuse is on by default");
            Step none = step(l, false, false, true);
            Step reuse = step(l, true, false, true);
            Step off = step(l, true, false, false);
            Step keepReuse = step(l, true, true, true);
            Step reuseAgain = step(l, true, false, true);
            assertNoScopes(none.log(), "no checkpointing");
            assertNoScopes(off.log(), "checkpointing with reuse off");
            assertOneScopePerLayer(reuse.log(), layers, false, "checkpointing with reuse");
            assertOneScopePerLayer(keepReuse.log(), layers, true, "checkpointing keeping the attention, with reuse");
            assertOneScopePerLayer(reuseAgain.log(), layers, false, "checkpointing with reuse, again");
            BitIdenticalGradients.assertSame(off.loss(), off.grads(), reuse.loss(), reuse.grads(), params, "reuse on vs off");
            BitIdenticalGradients.assertSame(none.loss(), none.grads(), reuse.loss(), reuse.grads(), params, "reuse vs no checkpointing");
            BitIdenticalGradients.assertSame(reuse.loss(), reuse.grads(), keepReuse.loss(), keepReuse.grads(), params,
                    "reuse with kept attention");
            BitIdenticalGradients.assertSame(reuse.loss(), reuse.grads(), reuseAgain.loss(), reuseAgain.grads(), params,
                    "reuse, second step");
        }
    }

    @Test
    void activationOffloadKeepsTheScopes() {
        try (Loaded l = Loaded.of()) {
            List<Param> params = l.peft().trainableParameters();
            Step onDevice = step(l, true, false, true);
            l.model().setActivationStore(new ActivationStore() { // an offload store that keeps inputs where they are
                @Override public Saved save(Tensor x) { return ActivationStore.ON_DEVICE.save(x); }
                @Override public void release(Saved s, Tensor x) {}
                @Override public Tensor restore(Saved s) { return ActivationStore.ON_DEVICE.restore(s); }
                @Override public void discard(Saved s) { ActivationStore.ON_DEVICE.discard(s); }
            });
            Step offloaded = step(l, true, false, true);
            l.model().setActivationStore(null);
            assertOneScopePerLayer(offloaded.log(), l.model().numLayers(), false, "activation offload with reuse");
            BitIdenticalGradients.assertSame(onDevice.loss(), onDevice.grads(), offloaded.loss(), offloaded.grads(), params,
                    "offloaded vs on-device inputs, with reuse");
        }
    }

    /** A failing backward still ends the layer's scope (the model's try/finally), so a backend frees what it kept. */
    @Test
    void anExceptionInsideTheScopeStillEndsIt() {
        try (Loaded l = Loaded.of()) {
            TransformerLM m = l.model();
            String path = "model.layers.1.mlp.down_proj";
            dev.qlora4j.nn.Linear down = m.linear(path);
            m.setLinear(path, new FailingBackward(down));
            try {
                assertThrows(IllegalStateException.class, () -> step(l, true, false, true));
                List<String> log = l.rec().log;
                assertEquals(Collections.frequency(log, "beginWeightReuse"), Collections.frequency(log, "endWeightReuse"),
                        "every opened scope was ended: " + log);
                assertEquals("endWeightReuse", log.get(log.size() - 1), "the failing layer's scope was ended last");
            } finally {
                m.setLinear(path, down);
            }
        }
    }

    /** A Linear whose backward fails (to test cleanup) and otherwise is the one it wraps. */
    private record FailingBackward(dev.qlora4j.nn.Linear inner) implements dev.qlora4j.nn.Linear {
        @Override public Tensor forward(Backend b, Tensor x) { return inner.forward(b, x); }
        @Override public int inFeatures() { return inner.inFeatures(); }
        @Override public int outFeatures() { return inner.outFeatures(); }
        @Override public Tensor backward(Backend b, Tensor x, Tensor gradOut) { throw new IllegalStateException("test: backward fails"); }
        @Override public List<Param> trainableParameters() { return inner.trainableParameters(); }
        @Override public long weightBytes() { return inner.weightBytes(); }
        @Override public void close() { inner.close(); }
    }

    @Test
    void thePropertyTurnsTheDefaultOff() {
        String old = System.getProperty(TransformerLM.REUSE_DEQUANTIZED_PROPERTY);
        try {
            System.clearProperty(TransformerLM.REUSE_DEQUANTIZED_PROPERTY);
            assertTrue(TransformerLM.reuseDequantizedFromProperty(), "on when unset");
            System.setProperty(TransformerLM.REUSE_DEQUANTIZED_PROPERTY, "false");
            assertFalse(TransformerLM.reuseDequantizedFromProperty(), "off with false");
            System.setProperty(TransformerLM.REUSE_DEQUANTIZED_PROPERTY, " FALSE ");
            assertFalse(TransformerLM.reuseDequantizedFromProperty(), "off with FALSE");
            System.setProperty(TransformerLM.REUSE_DEQUANTIZED_PROPERTY, "true");
            assertTrue(TransformerLM.reuseDequantizedFromProperty(), "on with true");
        } finally {
            if (old == null) System.clearProperty(TransformerLM.REUSE_DEQUANTIZED_PROPERTY);
            else System.setProperty(TransformerLM.REUSE_DEQUANTIZED_PROPERTY, old);
        }
    }
}
