package dev.qlora4j.model;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.model.CheckpointKeepAttentionTest.Loaded;
import dev.qlora4j.model.CheckpointKeepAttentionTest.Mode;
import dev.qlora4j.model.CheckpointKeepAttentionTest.Step;
import dev.qlora4j.nn.Linear;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.BottleneckModel;
import dev.qlora4j.peft.PeftModel;
import dev.qlora4j.peft.config.BottleneckConfig;
import dev.qlora4j.peft.config.InitLoraWeights;
import dev.qlora4j.peft.config.LoraConfig;
import dev.qlora4j.peft.config.ModuleSelector;
import dev.qlora4j.peft.prefix.TrainablePrefixTuning;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.util.EnumMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicInteger;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

/**
 * The backward's recompute under gradient checkpointing (DecoderLayer.recomputeForBackward) stops at the MLP
 * activation: the down projection, the MLP hook and the final residual add are not re-run, since backward never
 * reads the layer output. Checked on the golden models (CPU): loss and every trainable gradient are bit for bit those
 * without checkpointing, for the full recompute and with the kept attention, with LoRA on every linear layer,
 * bottleneck adapters (layer hooks, sequential with dropout and parallel with a learned scale) and prefix tuning; and
 * a counting wrapper on every layer's down projection sees its forward run once per layer per step with
 * checkpointing, as without (the full re-run made it twice). With hooks set, backward itself runs down's forward once
 * more per layer (the hook's backward needs the sublayer output), with or without checkpointing.
 */
class CheckpointRecomputeTest {
    /** Forwards of every layer's down projection, counted by wrappers around them. */
    static final class DownCounter {
        final AtomicInteger forwards = new AtomicInteger();

        /** Wraps each layer's down projection (after adapters replaced it, so the adapter runs inside). */
        DownCounter(TransformerLM m) {
            for (int i = 0; i < m.numLayers(); i++) {
                String path = "model.layers." + i + ".mlp.down_proj";
                m.setLinear(path, new Counting(m.linear(path), forwards));
            }
        }
    }

    /** A Linear that counts its forwards and otherwise is the one it wraps. */
    private record Counting(Linear inner, AtomicInteger forwards) implements Linear {
        @Override public Tensor forward(Backend b, Tensor x) { forwards.incrementAndGet(); return inner.forward(b, x); }
        @Override public int inFeatures() { return inner.inFeatures(); }
        @Override public int outFeatures() { return inner.outFeatures(); }
        @Override public Tensor backward(Backend b, Tensor x, Tensor gradOut) { return inner.backward(b, x, gradOut); }
        @Override public List<Param> trainableParameters() { return inner.trainableParameters(); }
        @Override public long weightBytes() { return inner.weightBytes(); }
        @Override public void close() { inner.close(); }
    }

    /** One step per mode with the down forwards it ran. */
    record Counted(Step step, int downForwards) {}

    /**
     * No checkpointing, full recompute, kept attention, kept resid, both (then no checkpointing again: nothing stale): all bit for bit the
     * same, and down's forward runs downPerLayer times per layer in each mode.
     */
    static void compare(Loaded l, DownCounter down, List<Param> params, Runnable zeroGrad, Runnable begin, Runnable end,
                        int downPerLayer, String what) {
        Map<Mode, Counted> s = new EnumMap<>(Mode.class);
        Counted first = null;
        for (Mode mode : new Mode[] {Mode.NONE, Mode.RECOMPUTE, Mode.KEEP, Mode.KEEP_RESIDUAL, Mode.KEEP_BOTH, Mode.NONE}) {
            down.forwards.set(0);
            Step st = CheckpointKeepAttentionTest.step(l, mode, params, zeroGrad, begin, end);
            Counted c = new Counted(st, down.forwards.get());
            if (first == null) first = c;
            s.put(mode, c);
        }
        int layers = l.model().numLayers();
        CheckpointKeepAttentionTest.assertBitIdentical(first.step(), s.get(Mode.NONE).step(), params, what + ", repeated step");
        for (Mode mode : new Mode[] {Mode.RECOMPUTE, Mode.KEEP, Mode.KEEP_RESIDUAL, Mode.KEEP_BOTH}) {
            CheckpointKeepAttentionTest.assertBitIdentical(s.get(Mode.NONE).step(), s.get(mode).step(), params,
                    what + ", checkpointing (" + mode + ") vs none");
        }
        for (Mode mode : Mode.values()) {
            assertEquals(downPerLayer * layers, s.get(mode).downForwards(), what + ": down projection forwards per step, " + mode);
        }
        assertEquals(2 * layers, s.get(Mode.RECOMPUTE).step().attentionCalls(), what + ": the full recompute still runs the attention");
        System.out.printf("%s: loss %.6f bit-identical in every mode; down forwards per step %d (layers %d)%n", what,
                s.get(Mode.NONE).step().loss(), s.get(Mode.RECOMPUTE).downForwards(), layers);
    }

    private static final LoraConfig LORA = LoraConfig.builder().r(4).loraAlpha(8).loraDropout(0.1)
            .targetModules(new ModuleSelector.AllLinear()).initLoraWeights(new InitLoraWeights.Flag(false)).build();

    @Test
    void loraRecomputeSkipsTheDownProjection() {
        for (String golden : new String[] {"llama-f32", "mistral-f32"}) {
            try (Loaded l = Loaded.of(golden)) {
                PeftModel peft = PeftModel.wrap(l.model(), golden, LORA, PeftModel.DEFAULT_ADAPTER, 7);
                peft.train(true);
                peft.setStep(123); // the dropout masks of forward, recompute and backward derive from it
                DownCounter down = new DownCounter(l.model());
                compare(l, down, peft.trainableParameters(), peft::zeroGrad, () -> {}, () -> {}, 1, golden + " LoRA (dropout 0.1)");
            }
        }
    }

    @Test
    void bottleneckHooksNeedNoMlpHookForwardBeforeTheirBackward() {
        record Variant(boolean parallel, BottleneckConfig.Scaling scaling, double dropout) {}
        for (Variant v : List.of(new Variant(false, BottleneckConfig.Scaling.fixed(0.7), 0.1),
                new Variant(true, BottleneckConfig.Scaling.learnedScalar(), 0))) {
            try (Loaded l = Loaded.of("llama-f32")) {
                TransformerLM m = l.model();
                BottleneckConfig cfg = new BottleneckConfig(4, 16, "gelu", true, true, v.parallel(), v.scaling(), false, true, true,
                        false, false, "bert", v.dropout(), null, "CAUSAL_LM", null, null, false, Map.of());
                try (BottleneckModel bm = BottleneckModel.create(cfg, m.backend(), m.numLayers(), m.config().hiddenSize(), 5)) {
                    bm.train(true);
                    bm.setStep(99);
                    m.setHooks(bm);
                    DownCounter down = new DownCounter(m);
                    List<Param> params = bm.trainableParameters();
                    Runnable zero = bm::zeroGrad;
                    // 2 per layer: the forward, and backwardTrain's recompute of the MLP output for the hook's backward
                    compare(l, down, params, zero, () -> {}, () -> {}, 2, "bottleneck " + v);
                    m.setHooks(null);
                }
            }
        }
    }

    @Test
    void prefixTuningRecomputeSkipsTheDownProjection() {
        try (Loaded l = Loaded.of("llama-f32")) {
            TransformerLM m = l.model();
            try (TrainablePrefixTuning t = CheckpointKeepAttentionTest.attachedPrefix(m)) {
                DownCounter down = new DownCounter(m);
                compare(l, down, t.trainableParameters(), t::zeroGrad, () -> t.beginStep(true), t::endStep, 1, "prefix tuning");
            }
        }
    }

    @Test
    void activationOffloadRecomputeSkipsTheDownProjection() {
        try (Loaded l = Loaded.of("llama-f32")) {
            TransformerLM m = l.model();
            PeftModel peft = CheckpointKeepAttentionTest.trainingLora(m, "llama-f32", LORA);
            List<Param> params = peft.trainableParameters();
            DownCounter down = new DownCounter(m);
            Step none = CheckpointKeepAttentionTest.step(l, Mode.NONE, params, peft::zeroGrad, () -> {}, () -> {});
            m.setActivationStore(new ActivationStore() { // an offload store that keeps the inputs where they are
                @Override public Saved save(Tensor x) { return ActivationStore.ON_DEVICE.save(x); }
                @Override public void release(Saved s, Tensor x) {}
                @Override public Tensor restore(Saved s) { return ActivationStore.ON_DEVICE.restore(s); }
                @Override public void discard(Saved s) { ActivationStore.ON_DEVICE.discard(s); }
            });
            down.forwards.set(0);
            Step offloaded = CheckpointKeepAttentionTest.step(l, Mode.RECOMPUTE, params, peft::zeroGrad, () -> {}, () -> {});
            m.setActivationStore(null);
            assertEquals(m.numLayers(), down.forwards.get(), "down projection forwards per step with activation offload");
            CheckpointKeepAttentionTest.assertBitIdentical(none, offloaded, params, "offloaded checkpointing vs none");
        }
    }

    @Test
    void recomputeNeedsRoomForEveryActivation() {
        try (Loaded l = Loaded.of("llama-f32")) {
            DecoderLayer layer = l.model().layers().getFirst();
            var e = assertThrows(IllegalArgumentException.class, () -> layer.recomputeForBackward(l.model().backend(),
                    l.model().config(), null, null, null, null, 1f, 1, LayerActivations.checkpointKept(true, false)));
            assertEquals("recomputeForBackward fills every activation: pass a full LayerActivations", e.getMessage());
        }
    }
}
