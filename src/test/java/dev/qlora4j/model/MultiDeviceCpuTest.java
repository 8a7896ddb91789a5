package dev.qlora4j.model;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.DeviceTransfer;
import dev.qlora4j.backend.KvCache;
import dev.qlora4j.backend.cpu.CpuBackend;
import dev.qlora4j.optim.AdamW;
import dev.qlora4j.optim.AdamWConfig;
import dev.qlora4j.optim.GradClip;
import dev.qlora4j.optim.Optimizer;
import dev.qlora4j.optim.Param;
import dev.qlora4j.optim.ParamGroups;
import dev.qlora4j.optim.PerDeviceOptimizer;
import dev.qlora4j.optim.StateStorage;
import dev.qlora4j.placement.DeviceMapPlanner;
import dev.qlora4j.placement.MaxMemory;
import dev.qlora4j.placement.ModuleSizes;
import dev.qlora4j.placement.Offloading;
import dev.qlora4j.placement.PlacementPlan;
import dev.qlora4j.tensor.Tensor;
import dev.qlora4j.train.MultiDeviceGradClip;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A model split over two CPU backends (layers 0..k-1 and the embedding on one, the rest and the head on the other,
 * standing in for two GPUs: every cross-device path runs, through {@link DeviceTransfer}'s host copies) against the
 * same model on one backend: logits, greedy tokens, losses, LoRA gradients with checkpointing off and on, one
 * clipped AdamW step (per-device optimizers, global-norm clipping), eval loss and the saved adapter.
 *
 * <p>Tolerance 1e-6 of each array's largest magnitude rather than bit equality: the two runs do the same float
 * operations in the same order, but a computation can run in another JIT tier the second time, and the Vector API's
 * exp differs by an ulp between the interpreter and compiled code (see CheckpointingTest). Tokens and the saved
 * adapter (before training) must be identical.
 */
class MultiDeviceCpuTest {
    private static final double REL = 1e-6;

    @ParameterizedTest(name = "{0}, split after layer {1}, {2}")
    @CsvSource({"llama-f32, 1, dense", "qwen2-f32, 2, dense", "llama-f32, 2, nf4"})
    void splitOverTwoBackendsEqualsOneBackend(String golden, int split, String weights, @TempDir Path tmp) throws Exception {
        LinearFactory linears = weights.equals("nf4") ? MultiDeviceHarness.nf4() : LinearFactory.DENSE;
        int layers = ModelConfig.load(dev.qlora4j.Golden.dir(golden)).numHiddenLayers();
        MultiDeviceHarness.Run one = MultiDeviceHarness.run(golden, ModelDevices.single(new CpuBackend(), layers), linears,
                tmp.resolve("one"), true);
        MultiDeviceHarness.Run two = MultiDeviceHarness.run(golden, ModelDevices.split(new CpuBackend(), new CpuBackend(), layers, split),
                linears, tmp.resolve("two"), true);
        MultiDeviceHarness.assertSameRun(one, two, REL);
    }

    @Test
    void everyLayerOnItsOwnBackendWithTheHeadBackOnTheFirst(@TempDir Path tmp) throws Exception {
        // embedding on A, layers A B C, head on A: three boundaries forward, the last one back to the first backend
        Backend a = new CpuBackend(), b = new CpuBackend(), c = new CpuBackend();
        ModelDevices d = ModelDevices.of(a, List.of(a, b, c), a, List.of());
        assertEquals("cpu [embedding, layer 0, head], cpu [layer 1], cpu [layer 2]", d.describe());
        MultiDeviceHarness.Run one = MultiDeviceHarness.run("llama-f32", ModelDevices.single(new CpuBackend(), 3), LinearFactory.DENSE,
                tmp.resolve("one"), false);
        MultiDeviceHarness.Run many = MultiDeviceHarness.run("llama-f32", d, LinearFactory.DENSE, tmp.resolve("many"), false);
        MultiDeviceHarness.assertSameRun(one, many, REL);
    }

    @Test
    void kvCacheOfEachLayerLivesOnItsDevice() throws Exception {
        Backend a = new CpuBackend(), b = new CpuBackend();
        ModelDevices d = ModelDevices.split(a, b, 3, 1);
        try (SplitKvCache cache = new SplitKvCache(d, 2, 2, 8, 16)) {
            assertEquals(3, cache.layers());
            assertEquals(0, cache.localLayer(0));
            assertEquals(0, cache.localLayer(1));
            assertEquals(1, cache.localLayer(2));
            assertNotSame(cache.part(0), cache.part(1));
            assertTrue(cache.part(1) == cache.part(2));
            assertEquals(2, cache.part(1).layers());
            assertEquals(1, cache.part(0).layers());
            assertArrayEquals(cache.part(2).keys(1).shape(), cache.keys(2).shape());
        }
    }

    @Test
    void transfersCopyBetweenCpuBackends() {
        Backend a = new CpuBackend(), b = new CpuBackend();
        Tensor t = Tensor.of(new float[] {1, -2, 3.5f, 4}, 2, 2);
        assertTrue(DeviceTransfer.to(t, a, a) == t, "same backend: no copy");
        Tensor c = DeviceTransfer.copy(t, a, b);
        assertNotSame(t, c);
        assertArrayEquals(new int[] {2, 2}, c.shape());
        assertArrayEquals(t.toFloatArray(), c.toFloatArray());
        t.setFloat(0, 9);
        assertEquals(1f, c.getFloat(0), "a copy, not a view");
    }

    @Test
    void perDeviceOptimizerAndGlobalClipEqualOneOptimizerAndGradClip() {
        Backend a = new CpuBackend(), b = new CpuBackend();
        ModelDevices d = ModelDevices.split(a, b, 4, 2);
        java.util.Random r = new java.util.Random(3);
        String[] names = {"base_model.model.model.layers.0.q.lora_A.default.weight", "base_model.model.model.layers.1.q.bias",
                "base_model.model.model.layers.2.q.lora_A.default.weight", "base_model.model.lm_head.modules_to_save.default.weight"};
        List<Param> one = new ArrayList<>(), split = new ArrayList<>();
        for (String n : names) {
            float[] v = new float[37], g = new float[37];
            for (int i = 0; i < v.length; i++) { v[i] = (float) r.nextGaussian(); g[i] = (float) r.nextGaussian(); }
            one.add(Param.of(n, v.clone(), g.clone()));
            split.add(Param.of(n, v.clone(), g.clone()));
        }
        AdamWConfig cfg = new AdamWConfig(1e-2, 0.9, 0.999, 1e-8, 0.1, StateStorage.DEVICE);
        Optimizer o1 = new AdamW(ParamGroups.split(one, 0.1), cfg);
        PerDeviceOptimizer o2 = new PerDeviceOptimizer(ParamGroups.split(split, 0.1), p -> d.forName(p.name()),
                (dev, ps) -> new AdamW(ParamGroups.split(ps, 0.1), cfg));
        assertEquals(2, o2.parts().size(), "one optimizer per device");
        float n1 = GradClip.clipByGlobalNorm(one, 0.5);
        float n2 = new MultiDeviceGradClip(d).clip(split, 0.5);
        assertEquals(Float.floatToIntBits(n1), Float.floatToIntBits(n2), "global norm over both devices");
        for (int s = 0; s < 3; s++) {
            o1.step();
            o2.step();
        }
        for (int i = 0; i < one.size(); i++) assertArrayEquals(one.get(i).value().toFloatArray(), split.get(i).value().toFloatArray(), names[i]);
        Map<String, Tensor> st1 = o1.stateDict(), st2 = o2.stateDict();
        assertEquals(st1.keySet(), st2.keySet());
        o2.loadStateDict(st1); // split back by parameter name
        for (var e : st1.entrySet()) assertArrayEquals(e.getValue().toFloatArray(), o2.stateDict().get(e.getKey()).toFloatArray(), e.getKey());
        Map<String, Tensor> bad = new java.util.HashMap<>(st1);
        bad.put("state.no.such.param.exp_avg", Tensor.of(new float[1], 1));
        var e = assertThrows(IllegalArgumentException.class, () -> o2.loadStateDict(bad));
        assertTrue(e.getMessage().contains("state.no.such.param.exp_avg"), e.getMessage());
    }

    @Test
    void parametersAndModulesMapToTheirDevice() {
        Backend a = new CpuBackend(), b = new CpuBackend();
        ModelDevices d = ModelDevices.split(a, b, 12, 10);
        assertTrue(d.forName("base_model.model.model.layers.9.mlp.up_proj.lora_B.default.weight") == a);
        assertTrue(d.forName("base_model.model.model.layers.10.mlp.up_proj.lora_B.default.weight") == b);
        assertTrue(d.forName("model.layers.1.self_attn.q_proj") == a);
        assertTrue(d.forName("base_model.model.model.embed_tokens.modules_to_save.default.weight") == a);
        assertTrue(d.forName("lm_head") == b);
        assertTrue(d.forName("model.norm") == b);
        assertEquals(-1, ModelDevices.layerOf("model.layersX.3"));
        assertEquals(11, ModelDevices.layerOf("a.layers.11"));
    }

    @Test
    void badDeviceMapsAndMisuseSayWhatToDo() throws Exception {
        Map<String, Long> sizes = ModuleSizes.of(ModelConfig.load(dev.qlora4j.Golden.dir("llama-f32")), dev.qlora4j.tensor.DType.F32, null);
        long gib = 1L << 30;
        var twoGpus = new DeviceMapPlanner.Resources(new long[] {gib, gib}, 0, MaxMemory.parse(null), false);
        PlacementPlan plan = DeviceMapPlanner.plan("{\"model.embed_tokens\":0,\"model.layers.0\":0,\"model.layers.1\":1,"
                + "\"model.layers.2\":1,\"model.norm\":1,\"lm_head\":1}", sizes, twoGpus);
        var e = assertThrows(IllegalArgumentException.class, () -> Offloading.checkGpus(plan, 1));
        assertTrue(e.getMessage().contains("GPU 1") && e.getMessage().contains("has 1 CUDA device(s)") && e.getMessage().contains("auto"),
                e.getMessage());
        Offloading.checkGpus(plan, 2); // fits two GPUs
        PlacementPlan apart = DeviceMapPlanner.plan("{\"\":0,\"lm_head\":1}", sizes, twoGpus);
        e = assertThrows(IllegalArgumentException.class, () -> Offloading.checkGpus(apart, 2));
        assertTrue(e.getMessage().contains("model.norm") && e.getMessage().contains("lm_head"), e.getMessage());
        // the planner itself names the GPU count for maps beyond it
        e = assertThrows(IllegalArgumentException.class, () -> DeviceMapPlanner.plan("{\"\":3}", sizes, twoGpus));
        assertTrue(e.getMessage().contains("GPU 3") && e.getMessage().contains("2 GPU(s)"), e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> ModelDevices.split(new CpuBackend(), new CpuBackend(), 3, 4));

        Path dir = dev.qlora4j.Golden.dir("llama-f32");
        try (var reader = dev.qlora4j.io.CheckpointReader.open(dir)) {
            ModelConfig c = ModelConfig.load(dir);
            e = assertThrows(IllegalArgumentException.class, () -> TransformerLM.load(c, new CheckpointWeights(reader, "x"),
                    ModelDevices.split(new CpuBackend(), new CpuBackend(), 2, 1), LinearFactory.DENSE, LayerResidency.NONE));
            assertTrue(e.getMessage().contains("num_hidden_layers"), e.getMessage());
            Backend a = new CpuBackend();
            TransformerLM m = TransformerLM.load(c, new CheckpointWeights(reader, "x"), ModelDevices.split(a, new CpuBackend(), 3, 1),
                    LinearFactory.DENSE, LayerResidency.NONE);
            try (m; KvCache foreign = a.newKvCache(3, 1, c.numKeyValueHeads(), 4, c.headDim());
                 Tensor ids = Tensor.ofInts(new int[] {1}, 1); Tensor pos = Tensor.ofInts(new int[] {0}, 1);
                 Tensor pads = Tensor.ofInts(new int[] {0}, 1)) {
                e = assertThrows(IllegalArgumentException.class, () -> m.forward(ids, pos, foreign, 0, pads));
                assertTrue(e.getMessage().contains("newCache"), e.getMessage());
                var u = assertThrows(UnsupportedOperationException.class, () -> m.setHooks(new dev.qlora4j.peft.LayerHooks() {
                    @Override public Tensor afterAttention(int layer, Tensor in, Tensor out) { return out; }
                    @Override public Tensor afterMlp(int layer, Tensor in, Tensor out) { return out; }
                    @Override public HookGrads afterAttentionBackward(int layer, Tensor in, Tensor out, Tensor g) { return new HookGrads(g, null); }
                    @Override public HookGrads afterMlpBackward(int layer, Tensor in, Tensor out, Tensor g) { return new HookGrads(g, null); }
                }));
                assertTrue(u.getMessage().contains("several devices"), u.getMessage());
            }
        }
    }
}
