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
import dev.qlora4j.peft.config.PrefixTuningConfig;
import dev.qlora4j.peft.prefix.TrainablePrefixTuning;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Proxy;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicInteger;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;

/**
 * Gradient checkpointing that keeps each layer's attention result (TransformerLM.setCheckpointKeepAttention):
 * loss and every trainable gradient bit for bit those of the full recompute and of no checkpointing, on the golden
 * Llama (GQA, LoRA r=4 on every linear layer with non-zero B, two rows with packed segments), Mistral (sliding window
 * 16 over 24 tokens) and prefix tuning; the attention forward runs once per layer (not twice) when kept, which a
 * counting backend sees (so a silent fallback to the full recompute fails); with an activation store (offload) the
 * attention is recomputed; the kept bytes are reported in activationBytes.
 */
class CheckpointKeepAttentionTest {
    private static final int BATCH = 2, T = 24;

    /**
     * No checkpointing; checkpointing with the full recompute; keeping the attention result; keeping the attention
     * block output (resid); keeping both.
     */
    enum Mode {
        NONE, RECOMPUTE, KEEP, KEEP_RESIDUAL, KEEP_BOTH;

        boolean keepsAttention() { return this == KEEP || this == KEEP_BOTH; }

        boolean keepsResidual() { return this == KEEP_RESIDUAL || this == KEEP_BOTH; }
    }

    /** A CPU backend whose training-attention forwards (and prefix merges) are counted. */
    static final class Counting {
        final CpuBackend cpu = new CpuBackend(1);
        final AtomicInteger attentionTrain = new AtomicInteger(), prefixAttention = new AtomicInteger();
        /** The attention block's residual add + norm: once per layer forward, skipped by a recompute that keeps resid. */
        final AtomicInteger addRmsNorms = new AtomicInteger();
        /** What the backend reports as its device memory (-1: none, as the CPU backend). */
        volatile long deviceMemory = -1;
        final Backend backend = (Backend) Proxy.newProxyInstance(Backend.class.getClassLoader(), new Class<?>[] {Backend.class},
                (proxy, m, args) -> {
                    switch (m.getName()) {
                        case "equals": return proxy == args[0];
                        case "hashCode": return System.identityHashCode(proxy);
                        case "toString": return "counting " + cpu;
                        case "attentionTrain": attentionTrain.incrementAndGet(); break;
                        case "prefixAttention": prefixAttention.incrementAndGet(); break;
                        case "addInPlaceRmsNorm": addRmsNorms.incrementAndGet(); break;
                        case "deviceMemoryBytes": return deviceMemory;
                        default: break;
                    }
                    try {
                        return m.invoke(cpu, args);
                    } catch (InvocationTargetException e) {
                        throw e.getCause();
                    }
                });
    }

    /**
     * What one step gave: loss, gradients in parameter order, attention forwards run, prefix merges run, residual
     * add + norm launches, activation bytes reported.
     */
    record Step(double loss, List<float[]> grads, int attentionCalls, int prefixCalls, int addRmsNorms, long activationBytes) {}

    /** The golden model on a counting CPU backend, with its reader (the CPU model maps the checkpoint's weights). */
    record Loaded(TransformerLM model, CheckpointReader reader, Counting counting) implements AutoCloseable {
        static Loaded of(String golden) {
            Path dir = Golden.dir(golden);
            Counting c = new Counting();
            CheckpointReader r = CheckpointReader.open(dir);
            try {
                ModelConfig cfg = ModelConfig.load(dir);
                return new Loaded(TransformerLM.load(cfg, new CheckpointWeights(r, dir.toString()), c.backend, LinearFactory.DENSE), r, c);
            } catch (java.io.IOException e) {
                r.close();
                throw new java.io.UncheckedIOException(e);
            }
        }

        @Override
        public void close() {
            model.close();
            reader.close();
            counting.cpu.close();
        }
    }

    /** Two rows of T tokens; row 0 packs two examples (segments), with ignored targets at each example's end. */
    static int[][] batch(int vocab) {
        return PackedTestBatch.of(vocab, BATCH, T, 9, 11);
    }

    static Step step(Loaded l, Mode mode, List<Param> params, Runnable zeroGrad, Runnable begin, Runnable end) {
        TransformerLM m = l.model();
        zeroGrad.run();
        m.setCheckpointKeepAttention(mode.keepsAttention());
        m.setCheckpointKeepResidual(mode.keepsResidual());
        return run(l, params, begin, end, mode != Mode.NONE);
    }

    /** One step with the model's keep settings as they are: counters reset, gradients read back. */
    private static Step run(Loaded l, List<Param> params, Runnable begin, Runnable end, boolean checkpointing) {
        TransformerLM m = l.model();
        int[][] b = batch(m.config().vocabSize());
        l.counting().attentionTrain.set(0);
        l.counting().prefixAttention.set(0);
        l.counting().addRmsNorms.set(0);
        begin.run();
        TransformerLM.StepResult r = m.trainStep(b[0], b[1], b[2], b[3], BATCH, checkpointing, 1f / 40);
        end.run();
        List<float[]> grads = new ArrayList<>();
        for (Param p : params) grads.add(m.backend().toHost(p.grad()).toFloatArray().clone());
        return new Step(r.lossSum(), grads, l.counting().attentionTrain.get(), l.counting().prefixAttention.get(),
                l.counting().addRmsNorms.get(), r.activationBytes());
    }

    static void assertBitIdentical(Step expected, Step actual, List<Param> params, String what) {
        dev.qlora4j.model.BitIdenticalGradients.assertSame(expected.loss(), expected.grads(), actual.loss(), actual.grads(), params, what);
    }

    /** Bytes of one layer's attention result for the test batch: out [B*T, heads*hd] + lse F32 [B, heads, T]. */
    static long attentionBytes(TransformerLM m) {
        ModelConfig c = m.config();
        long elem = m.backend().activationDType().byteSize();
        return (long) BATCH * T * c.numAttentionHeads() * c.headDim() * elem + 4L * BATCH * c.numAttentionHeads() * T;
    }

    /** Bytes of one layer's attention block output for the test batch: resid [B*T, hidden]. */
    static long residualBytes(TransformerLM m) {
        return (long) BATCH * T * m.config().hiddenSize() * m.backend().activationDType().byteSize();
    }

    /**
     * Every mode gives the same bits; keeping the attention runs it once per layer, keeping resid runs the attention
     * block's residual add + norm once per layer (the recompute norms the kept resid instead), and the kept bytes are
     * reported.
     */
    static Map<Mode, Step> compareModes(Loaded l, List<Param> params, Runnable zeroGrad, Runnable begin, Runnable end, String what) {
        Map<Mode, Step> s = new java.util.EnumMap<>(Mode.class);
        for (Mode mode : new Mode[] {Mode.NONE, Mode.KEEP, Mode.RECOMPUTE, Mode.KEEP_BOTH, Mode.KEEP_RESIDUAL, Mode.KEEP,
                Mode.KEEP_BOTH}) {
            s.put(mode, step(l, mode, params, zeroGrad, begin, end)); // KEEP twice: a second step reuses nothing stale
        }
        for (Mode mode : new Mode[] {Mode.KEEP, Mode.KEEP_RESIDUAL, Mode.KEEP_BOTH}) {
            assertBitIdentical(s.get(Mode.RECOMPUTE), s.get(mode), params, what + ", " + mode + " vs full recompute");
            assertBitIdentical(s.get(Mode.NONE), s.get(mode), params, what + ", " + mode + " vs no checkpointing");
        }
        int layers = l.model().numLayers();
        assertEquals(layers, s.get(Mode.NONE).attentionCalls(), what + ": attention forwards without checkpointing");
        assertEquals(2 * layers, s.get(Mode.RECOMPUTE).attentionCalls(), what + ": attention forwards with the full recompute");
        assertEquals(layers, s.get(Mode.KEEP).attentionCalls(), what + ": attention forwards keeping the attention (not recomputed)");
        assertEquals(2 * layers, s.get(Mode.KEEP_RESIDUAL).attentionCalls(), what + ": attention forwards keeping resid alone");
        assertEquals(layers, s.get(Mode.KEEP_BOTH).attentionCalls(), what + ": attention forwards keeping both");
        assertEquals(2 * layers, s.get(Mode.RECOMPUTE).addRmsNorms(), what + ": residual add + norm with the full recompute");
        assertEquals(layers, s.get(Mode.KEEP_RESIDUAL).addRmsNorms(), what + ": residual add + norm keeping resid (not remade)");
        assertEquals(layers, s.get(Mode.KEEP_BOTH).addRmsNorms(), what + ": residual add + norm keeping both");
        long base = s.get(Mode.RECOMPUTE).activationBytes(), att = layers * attentionBytes(l.model()), res = layers * residualBytes(l.model());
        assertEquals(base + att, s.get(Mode.KEEP).activationBytes(), what + ": the kept attention is counted in activationBytes");
        assertEquals(base + res, s.get(Mode.KEEP_RESIDUAL).activationBytes(), what + ": the kept resid is counted in activationBytes");
        assertEquals(base + att + res, s.get(Mode.KEEP_BOTH).activationBytes(), what + ": both are counted in activationBytes");
        return s;
    }

    static final LoraConfig LORA = LoraConfig.builder().r(4).loraAlpha(8).loraDropout(0.0)
            .targetModules(new ModuleSelector.AllLinear()).initLoraWeights(new InitLoraWeights.Flag(false)).build();

    @Test
    void loraGradientsAreBitIdenticalAndTheAttentionRunsOncePerLayer() {
        for (String golden : new String[] {"llama-f32", "mistral-f32"}) { // mistral: sliding window 16 < 24 tokens
            try (Loaded l = Loaded.of(golden)) {
                if (golden.startsWith("mistral")) assertTrue(l.model().config().slidingWindow(0) != null, "the window case has a window");
                PeftModel peft = PeftModel.wrap(l.model(), golden, LORA, PeftModel.DEFAULT_ADAPTER, 7);
                peft.train(true);
                List<Param> params = peft.trainableParameters();
                assertNull(l.model().checkpointKeepAttention(), "auto by default");
                Map<Mode, Step> s = compareModes(l, params, peft::zeroGrad, () -> {}, () -> {}, golden + " LoRA");
                System.out.printf("%s LoRA: loss %.6f identical in 3 modes; attention forwards %d (none) %d (recompute) %d (kept); "
                                + "activation bytes %,d recompute, %,d kept%n", golden, s.get(Mode.KEEP).loss(),
                        s.get(Mode.NONE).attentionCalls(), s.get(Mode.RECOMPUTE).attentionCalls(), s.get(Mode.KEEP).attentionCalls(),
                        s.get(Mode.RECOMPUTE).activationBytes(), s.get(Mode.KEEP).activationBytes());
            }
        }
    }

    /**
     * Auto (the default) keeps the attention when every layer's result fits in AUTO_KEEP_ATTENTION_BYTES (the test
     * batch's few KiB do: one attention forward per layer, the kept bytes counted) and recomputes it otherwise (a
     * batch as large as a Llama-7B one at 8,192 tokens would take 2 GiB).
     */
    @Test
    void autoKeepsTheAttentionWhenItFitsTheBudget() {
        try (Loaded l = Loaded.of("llama-f32")) {
            TransformerLM m = l.model();
            PeftModel peft = trainingLora(m, "llama-f32", LORA);
            List<Param> params = peft.trainableParameters();
            Step recompute = step(l, Mode.RECOMPUTE, params, peft::zeroGrad, () -> {}, () -> {});
            Step auto = stepWith(l, null, params, peft::zeroGrad);
            assertNull(m.checkpointKeepResidual(), "stepWith leaves the residual setting auto");
            assertEquals(m.numLayers(), auto.attentionCalls(), "auto keeps the small batch's attention");
            assertEquals(m.numLayers(), auto.addRmsNorms(), "auto keeps the small batch's attention block outputs");
            assertEquals(recompute.activationBytes() + m.numLayers() * (attentionBytes(m) + residualBytes(m)), auto.activationBytes());
            assertBitIdentical(recompute, auto, params, "auto vs full recompute");
            assertEquals(m.numLayers() * attentionBytes(m), m.keptAttentionBytes(BATCH, T));
            assertEquals(m.numLayers() * residualBytes(m), m.keptResidualBytes(BATCH, T));
            // the budget in tokens: a 7B-shaped layer (32 heads x 128, bf16) keeps 16 MiB + 256 KiB per 2048 tokens
            long perToken7b = 32L * (32 * 128 * 2 + 4 * 32);
            assertTrue(perToken7b * 2048 <= TransformerLM.AUTO_KEEP_ATTENTION_BYTES, "7B at 2048 tokens: kept");
            assertTrue(perToken7b * 8192 > TransformerLM.AUTO_KEEP_ATTENTION_BYTES, "7B at 4 x 2048 tokens: recomputed");
        }
    }

    /**
     * The auto budget: 1 GiB on a backend without device memory, 1/32 of the device's memory when that is more; the
     * attention results take it first, the attention block outputs get what is left.
     */
    @Test
    void autoBudgetGrowsWithTheDevicesMemoryAndTheAttentionComesFirst() {
        try (Loaded l = Loaded.of("llama-f32")) {
            TransformerLM m = l.model();
            m.setCheckpointKeepAttention(null);
            m.setCheckpointKeepResidual(null);
            assertEquals(TransformerLM.AUTO_KEEP_ATTENTION_BYTES, m.autoKeepBudget(), "no device memory: 1 GiB");
            l.counting().deviceMemory = 16L << 30;
            assertEquals(TransformerLM.AUTO_KEEP_ATTENTION_BYTES, m.autoKeepBudget(), "16 GiB card: 1 GiB (more than 1/32)");
            l.counting().deviceMemory = 141_000_000_000L;   // an H200
            long budget = 141_000_000_000L / 32;
            assertEquals(budget, m.autoKeepBudget());
            // token counts (batch 1) where the attention alone, then attention + resid, just fit
            long att = m.keptAttentionBytes(1, 1), res = m.keptResidualBytes(1, 1);
            int both = (int) (budget / (att + res)), attentionOnly = (int) (budget / att);
            assertTrue(m.keepsAttention(1, both) && m.keepsResidual(1, both), "both fit");
            assertTrue(m.keepsAttention(1, both + 1) && !m.keepsResidual(1, both + 1), "past that the attention alone is kept");
            assertTrue(m.keepsAttention(1, attentionOnly) && !m.keepsAttention(1, attentionOnly + 1), "then neither");
            assertTrue(m.keepsResidual(1, attentionOnly + 1), "resid alone fits where the attention no longer does");
            // the Llama-7B shape (32 layers, 32 x 128 heads, hidden 4096, bf16) at 4 x 2048 tokens: 2 GiB + 2 GiB <= 4.4 GiB
            long perToken7b = 32L * (32 * 128 * 2 + 4 * 32) + 32L * 4096 * 2;
            assertTrue(perToken7b * 8192 <= budget, "7B at 4 x 2048 tokens keeps both on an H200");
            m.setCheckpointKeepResidual(false);
            assertFalse(m.keepsResidual(1, 1), "a forced setting wins");
            l.counting().deviceMemory = -1;
        }
    }

    /** The LoRA config cfg on m (seed 7), in training mode: the adapters the checkpointing tests train. */
    static PeftModel trainingLora(TransformerLM m, String name, LoraConfig cfg) {
        PeftModel peft = PeftModel.wrap(m, name, cfg, PeftModel.DEFAULT_ADAPTER, 7);
        peft.train(true);
        return peft;
    }

    /** One checkpointed step with the keep-attention setting keep (null: auto) and the keep-residual setting auto. */
    static Step stepWith(Loaded l, Boolean keep, List<Param> params, Runnable zeroGrad) {
        TransformerLM m = l.model();
        zeroGrad.run();
        m.setCheckpointKeepAttention(keep);
        m.setCheckpointKeepResidual(null);
        return run(l, params, () -> {}, () -> {}, true);
    }

    /** A 3-slot prefix (seed 7) made for and attached to m: the prefix-tuning case of the checkpointing tests. */
    static TrainablePrefixTuning attachedPrefix(TransformerLM m) {
        PrefixTuningConfig cfg = new PrefixTuningConfig(3, null, null, null, null, null, false, null,
                "CAUSAL_LM", null, null, false, Map.of());
        TrainablePrefixTuning t = TrainablePrefixTuning.create(cfg, m, 7);
        t.attach();
        return t;
    }

    @Test
    void prefixTuningKeepsTheMergedAttention() {
        try (Loaded l = Loaded.of("llama-f32")) {
            TransformerLM m = l.model();
            try (TrainablePrefixTuning t = attachedPrefix(m)) {
                List<Param> params = t.trainableParameters();
                Map<Mode, Step> s = compareModes(l, params, t::zeroGrad, () -> t.beginStep(true), t::endStep, "prefix tuning");
                int layers = m.numLayers();
                assertEquals(layers, s.get(Mode.KEEP).prefixCalls(), "the prefix merge runs once per layer when the merged result is kept");
                assertEquals(2 * layers, s.get(Mode.RECOMPUTE).prefixCalls(), "and twice with the full recompute");
            }
        }
    }

    @Test
    void activationOffloadRecomputesTheAttention() {
        try (Loaded l = Loaded.of("llama-f32")) {
            PeftModel peft = PeftModel.wrap(l.model(), "llama-f32", LORA, PeftModel.DEFAULT_ADAPTER, 7);
            peft.train(true);
            List<Param> params = peft.trainableParameters();
            Step kept = step(l, Mode.KEEP, params, peft::zeroGrad, () -> {}, () -> {});
            AtomicInteger saves = new AtomicInteger();
            l.model().setActivationStore(new ActivationStore() { // an offload store that keeps inputs where they are, counting
                @Override public Saved save(Tensor x) { saves.incrementAndGet(); return ActivationStore.ON_DEVICE.save(x); }
                @Override public void release(Saved s, Tensor x) {}
                @Override public Tensor restore(Saved s) { return ActivationStore.ON_DEVICE.restore(s); }
                @Override public void discard(Saved s) { ActivationStore.ON_DEVICE.discard(s); }
            });
            Step offloaded = step(l, Mode.KEEP, params, peft::zeroGrad, () -> {}, () -> {});
            l.model().setActivationStore(null);
            int layers = l.model().numLayers();
            assertEquals(layers, saves.get(), "every layer input went through the store");
            assertEquals(2 * layers, offloaded.attentionCalls(), "with activation offload the attention is recomputed");
            assertBitIdentical(kept, offloaded, params, "offloaded (recomputed) vs kept attention");
        }
    }
}
