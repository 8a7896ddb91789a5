package dev.qlora4j.peft;

import dev.qlora4j.CausalLM;
import dev.qlora4j.LoadOptions;
import dev.qlora4j.backend.Backend;
import dev.qlora4j.io.SafetensorsFile;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.nn.DenseLinear;
import dev.qlora4j.nn.QuantizedLinear;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.config.InitLoraWeights;
import dev.qlora4j.peft.config.LoraConfig;
import dev.qlora4j.peft.config.PeftConfigs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;

import static org.junit.jupiter.api.Assertions.*;

/** PeftModel on the golden tiny Llama: peft's names and files, adapter management, weighted adapters, merge_and_unload. */
class PeftModelTest {
    static final String Q0 = "model.layers.0.self_attn.q_proj";

    static LoraConfig random(int r, double alpha, String... targets) {
        return LoraConfig.builder().r(r).loraAlpha(alpha).targetModules(targets).initLoraWeights(InitLoraWeights.of(false)).build();
    }

    @Test
    void wrapNamesParametersAndCountsAsPeft(@TempDir Path tmp) throws Exception {
        try (CausalLM lm = CausalLM.fromPretrained(GoldenLlama.dir(), LoadOptions.cpu());
             PeftModel peft = PeftModel.wrap(lm, LoraConfig.of(8, 16, "q_proj", "v_proj"))) {
            assertEquals(List.of("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                    "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj",
                    "model.layers.2.self_attn.q_proj", "model.layers.2.self_attn.v_proj"), List.copyOf(peft.loraLayers().keySet()));
            List<String> names = peft.trainableParameters().stream().map(Param::name).toList();
            assertEquals(12, names.size());
            assertEquals("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", names.get(0));
            assertEquals("base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight", names.get(1));
            assertEquals("base_model.model.model.layers.2.self_attn.v_proj.lora_B.default.weight", names.get(11));
            // base: embed 512*64 (tied head counted once) + 3 * (q 64*64 + k 32*64 + v 32*64 + o 64*64 + 3 * 160*64 + 2 norms)
            // + final norm = 162,240; LoRA r=8: q 8*64 + 64*8, v 8*64 + 32*8 per layer = 5,376
            assertEquals("trainable params: 5,376 || all params: 167,616 || trainable%: 3.2073", peft.printTrainableParameters());

            peft.save(tmp);
            try (SafetensorsFile f = SafetensorsFile.open(tmp.resolve("adapter_model.safetensors"))) {
                TreeSet<String> expected = new TreeSet<>();
                for (int i = 0; i < 3; i++) {
                    for (String p : List.of("q_proj", "v_proj")) {
                        expected.add("base_model.model.model.layers." + i + ".self_attn." + p + ".lora_A.weight");
                        expected.add("base_model.model.model.layers." + i + ".self_attn." + p + ".lora_B.weight");
                    }
                }
                assertEquals(expected, new TreeSet<>(f.names()));
                assertArrayEquals(new int[] {8, 64}, f.info("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").shape());
                assertArrayEquals(new int[] {32, 8}, f.info("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight").shape());
                assertEquals(DType.F32, f.info("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight").dtype());
                assertEquals(Map.of("format", "pt"), f.metadata());
            }
            JsonNode cfg = new ObjectMapper().readTree(tmp.resolve("adapter_config.json").toFile());
            assertEquals("LORA", cfg.get("peft_type").asText());
            assertEquals(8, cfg.get("r").asInt());
            assertEquals(16, cfg.get("lora_alpha").asInt());
            assertTrue(cfg.get("inference_mode").asBoolean(), "save_pretrained writes inference_mode true");
            assertEquals(GoldenLlama.dir().toString(), cfg.get("base_model_name_or_path").asText());
            assertEquals(List.of("q_proj", "v_proj"), List.of(cfg.get("target_modules").get(0).asText(), cfg.get("target_modules").get(1).asText()));
        }
    }

    @Test
    void saveLoadRoundTripIsBitExactWithDoraAndLmHead(@TempDir Path tmp) {
        Backend b = new RefOpsBackend();
        LoraConfig cfg = random(4, 8, "q_proj", "down_proj").toBuilder().useDora(true).modulesToSave(List.of("lm_head")).build();
        Map<String, float[]> saved = new java.util.TreeMap<>();
        float[] logits;
        try (PeftModel peft = PeftModel.wrap(GoldenLlama.load(b, false), "tiny", cfg, "default", 5)) {
            peft.addAdapter("second", random(2, 2, "k_proj"));
            for (Param p : peft.trainableParameters()) saved.put(p.name(), b.toHost(p.value()).toFloatArray());
            assertTrue(saved.containsKey("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector.default.weight"));
            assertTrue(saved.containsKey("base_model.model.lm_head.modules_to_save.default.weight"));
            logits = GoldenLlama.logits(peft.model());
            peft.save(tmp);
        }
        assertTrue(Files.exists(tmp.resolve("second/adapter_model.safetensors")), "non-default adapters go to a subfolder");
        try (SafetensorsFile f = SafetensorsFile.open(tmp.resolve("adapter_model.safetensors"))) {
            assertTrue(f.has("base_model.model.model.layers.2.mlp.down_proj.lora_magnitude_vector"));
            assertArrayEquals(new int[] {64}, f.info("base_model.model.model.layers.2.mlp.down_proj.lora_magnitude_vector").shape());
            assertArrayEquals(new int[] {512, 64}, f.info("base_model.model.lm_head.weight").shape());
            assertEquals(3 * 2 * 3 + 1, f.names().size());
        }
        try (PeftModel back = PeftModel.wrap(GoldenLlama.load(b, false), "tiny", random(1, 1, "o_proj"), "scratch", 0)) {
            List<String> unexpected = back.loadAdapter(tmp, "default", true);
            assertEquals(List.of(), unexpected);
            back.setAdapter("default");
            for (Param p : back.trainableParameters()) {
                assertArrayEquals(saved.get(p.name()), b.toHost(p.value()).toFloatArray(), p.name());
            }
            assertEquals(saved.keySet().stream().filter(n -> n.contains(".default.")).count(), back.trainableParameters().size());
            assertArrayEquals(logits, GoldenLlama.logits(back.model()), "same adapter, same logits");
            assertTrue(back.config("default").useDora());
        }
    }

    @Test
    void loadingChecksShapesAndKeys(@TempDir Path tmp) {
        Backend b = new RefOpsBackend();
        try (PeftModel peft = PeftModel.wrap(GoldenLlama.load(b, false), "tiny", random(8, 8, "q_proj", "v_proj"), "default", 1)) {
            peft.save(tmp);
        }
        LoraConfig saved = (LoraConfig) PeftConfigs.load(tmp);
        PeftConfigs.save(tmp, saved.toBuilder().r(4).build());
        try (PeftModel m = PeftModel.wrap(GoldenLlama.load(b, false), "tiny", random(1, 1, "o_proj"), "x", 0)) {
            var e = assertThrows(IllegalArgumentException.class, () -> m.loadAdapter(tmp, "bad", false));
            assertTrue(e.getMessage().contains("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight has shape [8, 64] "
                    + "but this model expects [4, 64]"), e.getMessage());
            assertFalse(m.adapterNames().contains("bad"));
        }
        PeftConfigs.save(tmp, saved.toBuilder().targetModules("q_proj", "v_proj", "k_proj").build());
        try (PeftModel m = PeftModel.wrap(GoldenLlama.load(b, false), "tiny", random(1, 1, "o_proj"), "x", 0)) {
            var e = assertThrows(IllegalArgumentException.class, () -> m.loadAdapter(tmp, "bad", false));
            assertTrue(e.getMessage().contains("missing") && e.getMessage().contains("base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"),
                    e.getMessage());
        }
        PeftConfigs.save(tmp, saved.toBuilder().targetModules("q_proj").build());
        try (PeftModel m = PeftModel.wrap(GoldenLlama.load(b, false), "tiny", random(1, 1, "o_proj"), "x", 0)) {
            List<String> unexpected = m.loadAdapter(tmp, "q", false);
            assertEquals(6, unexpected.size());
            assertTrue(unexpected.contains("base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"));
            m.setAdapter("q");
            assertEquals(List.of(), m.trainableParameters(), "loaded with isTrainable=false");
        }
    }

    @Test
    void addSetDisableDeleteAdapters() {
        Backend b = new RefOpsBackend();
        TransformerLM model = GoldenLlama.load(b, false);
        float[] base = GoldenLlama.logits(model);
        try (PeftModel peft = PeftModel.wrap(model, "tiny", random(4, 8, "q_proj", "v_proj"), "x", 1)) {
            float[] x = GoldenLlama.logits(model);
            assertFalse(java.util.Arrays.equals(base, x));
            peft.addAdapter("y", random(2, 4, "o_proj", "up_proj"));
            assertEquals(List.of("x"), peft.activeAdapters(), "add_adapter does not activate");
            assertArrayEquals(x, GoldenLlama.logits(model));
            peft.setAdapter("y");
            float[] y = GoldenLlama.logits(model);
            assertFalse(java.util.Arrays.equals(x, y));
            assertTrue(peft.trainableParameters().stream().allMatch(p -> p.name().contains(".y.")));
            try (var off = peft.disabledAdapters()) {
                assertArrayEquals(base, GoldenLlama.logits(model), "disabled = base output exactly");
            }
            assertArrayEquals(y, GoldenLlama.logits(model));
            peft.setAdapters(List.of("x", "y"));
            float[] both = GoldenLlama.logits(model);
            assertFalse(java.util.Arrays.equals(both, y));
            peft.deleteAdapter("y");
            assertEquals(List.of("x"), peft.activeAdapters());
            assertArrayEquals(x, GoldenLlama.logits(model));
            peft.deleteAdapter("x");
            assertEquals(List.of(), peft.activeAdapters());
            assertArrayEquals(base, GoldenLlama.logits(model));
            assertThrows(IllegalArgumentException.class, () -> peft.setAdapter("x"));
        }
    }

    @Test
    void weightedAdaptersMatchFloat64Combinations() {
        Backend b = new RefOpsBackend();
        try (PeftModel peft = PeftModel.wrap(GoldenLlama.load(b, false), "tiny", random(4, 8, "q_proj", "v_proj"), "p", 1)) {
            peft.addAdapter("q", random(4, 2, "q_proj"));
            peft.addAdapter("u", random(2, 6, "q_proj", "v_proj").toBuilder().useRslora(true).build());
            LoraLinear l = peft.loraLayers().get(Q0);
            int out = l.outFeatures(), in = l.inFeatures();
            double wp = 0.7, wq = 0.4, wu = -0.5;
            double[] dp = l.deltaWeight(b, "p"), dq = l.deltaWeight(b, "q"), du = l.deltaWeight(b, "u");
            double sp = l.adapter("p").scaling(), sq = l.adapter("q").scaling(), su = l.adapter("u").scaling();

            peft.addWeightedAdapter(List.of("p", "q"), List.of(wp, wq), "lin", "linear");
            double[] expected = Ref.ba(add(Ref.d(l.adapter("p").a().hostValues(b)), Math.sqrt(wp * sp), Ref.d(l.adapter("q").a().hostValues(b)), Math.sqrt(wq * sq)),
                    add(Ref.d(l.adapter("p").b().hostValues(b)), Math.sqrt(wp * sp), Ref.d(l.adapter("q").b().hostValues(b)), Math.sqrt(wq * sq)), out, 4, in);
            assertDelta(expected, l.deltaWeight(b, "lin"));
            assertEquals(4, peft.config("lin").r());
            assertEquals(4.0, peft.config("lin").loraAlpha());
            assertFalse(peft.config("lin").useRslora());

            peft.addWeightedAdapter(List.of("p", "u"), List.of(wp, wu), "cat", "cat");
            double[] cat = new double[out * in];
            for (int i = 0; i < cat.length; i++) cat[i] = wp * dp[i] + wu * du[i];   // sum_i w_i s_i B_i A_i
            assertDelta(cat, l.deltaWeight(b, "cat"));
            assertEquals(6, peft.config("cat").r());
            assertEquals(6, l.adapter("cat").rank());

            peft.addWeightedAdapter(List.of("p", "u"), List.of(wp, wu), "svd", "svd", 3);
            double[] d = new double[out * in];
            for (int i = 0; i < d.length; i++) d[i] = wp * sp * dp[i] + wu * su * du[i];   // peft scales get_delta_weight again
            double[] best = Svd.of(d, out, in).reconstruct(3);
            assertDelta(best, l.deltaWeight(b, "svd"));
            assertEquals(3, l.adapter("svd").rank());

            assertThrows(IllegalArgumentException.class, () -> peft.addWeightedAdapter(List.of("p", "u"), List.of(1.0, 1.0), "bad", "linear"));
            assertFalse(peft.trainableParameters().stream().anyMatch(p -> p.name().contains(".lin.")), "combined adapters are frozen");
            // v_proj has "p" and "u" but not "q": modules are combined from the adapters they have
            assertTrue(peft.loraLayers().get("model.layers.0.self_attn.v_proj").hasAdapter("cat"));
        }
    }

    @Test
    void rsLoraAndRankAlphaPatternsSetPerModuleScaling() {
        Backend b = new RefOpsBackend();
        LoraConfig cfg = random(8, 16, "q_proj", "v_proj").toBuilder().useRslora(true)
                .rankPattern(Map.of("layers\\.1\\.self_attn\\.q_proj", 2)).alphaPattern(Map.of("v_proj", 4.0)).build();
        try (PeftModel peft = PeftModel.wrap(GoldenLlama.load(b, false), "tiny", cfg, "default", 1)) {
            LoraAdapter q0 = peft.loraLayers().get(Q0).adapter("default");
            LoraAdapter q1 = peft.loraLayers().get("model.layers.1.self_attn.q_proj").adapter("default");
            LoraAdapter v2 = peft.loraLayers().get("model.layers.2.self_attn.v_proj").adapter("default");
            assertEquals(8, q0.rank());
            assertEquals(16 / Math.sqrt(8), q0.scaling(), 1e-15, "rsLoRA: alpha / sqrt(r)");
            assertEquals(2, q1.rank());
            assertArrayEquals(new int[] {2, 64}, q1.a().shape());
            assertEquals(16 / Math.sqrt(2), q1.scaling(), 1e-15);
            assertEquals(4 / Math.sqrt(8), v2.scaling(), 1e-15);
        }
    }

    private static double[] add(double[] a, double fa, double[] b, double fb) {
        double[] out = new double[a.length];
        for (int i = 0; i < a.length; i++) out[i] = fa * a[i] + fb * b[i];
        return out;
    }

    private static void assertDelta(double[] expected, double[] got) {
        double scale = Ref.maxAbs(expected);
        assertTrue(scale > 0);
        for (int i = 0; i < expected.length; i++) assertEquals(expected[i], got[i], 1e-5 * scale, "entry " + i);
    }

    @Test
    void mergeAndUnloadOnA4bitBaseIsDequantizedWeightPlusDelta() {
        Backend b = new RefOpsBackend();
        TransformerLM model = GoldenLlama.load(b, true);
        assertInstanceOf(QuantizedLinear.class, model.linear(Q0));
        try (PeftModel peft = PeftModel.wrap(model, "tiny", random(4, 8, "q_proj", "v_proj"), "default", 3)) {
            float[] adapted = GoldenLlama.logits(model);
            LoraLinear l = peft.loraLayers().get(Q0);
            float[] w = l.hostBaseWeight(b);
            double[] delta = l.deltaWeight(b, "default");
            TransformerLM merged = peft.mergeAndUnload();
            DenseLinear d = assertInstanceOf(DenseLinear.class, merged.linear(Q0));
            assertEquals(DType.F32, d.weight().dtype());
            float[] mw = b.toHost(d.weight()).toFloatArray();
            for (int i = 0; i < mw.length; i++) assertEquals(w[i] + delta[i], mw[i], 1e-6 * (1 + Math.abs(w[i])));
            assertInstanceOf(QuantizedLinear.class, merged.linear("model.layers.0.self_attn.k_proj"), "untargeted layers stay 4-bit");
            float[] after = GoldenLlama.logits(merged);
            assertTrue(Ref.relErr(after, Ref.d(adapted)) < 1e-4, "merged logits " + Ref.relErr(after, Ref.d(adapted)));
            assertThrows(IllegalStateException.class, peft::trainableParameters);
            merged.close();
        }
    }

    @Test
    void mergeUnmergeOnDenseModelAndLmHeadCopy() {
        Backend b = new RefOpsBackend();
        TransformerLM model = GoldenLlama.load(b, false);
        float[] base = GoldenLlama.logits(model);
        LoraConfig cfg = random(4, 8, "q_proj", "gate_proj").toBuilder().modulesToSave(List.of("lm_head")).build();
        try (PeftModel peft = PeftModel.wrap(model, "tiny", cfg, "default", 3)) {
            float[] adapted = GoldenLlama.logits(model);
            peft.merge();
            assertTrue(Ref.relErr(GoldenLlama.logits(model), Ref.d(adapted)) < 1e-5);
            peft.unmerge();
            assertArrayEquals(adapted, GoldenLlama.logits(model));
            List<String> names = new ArrayList<>(peft.trainableParameters().stream().map(Param::name).toList());
            assertEquals("base_model.model.lm_head.modules_to_save.default.weight", names.getLast());
            // the lm_head copy starts equal to the (tied) embedding: disabling only removes the LoRA part
            try (var off = peft.disabledAdapters()) {
                assertArrayEquals(base, GoldenLlama.logits(model));
            }
            TrainableDense head = ((ModulesToSaveLinear) model.linear("lm_head")).copy("default");
            assertArrayEquals(b.toHost(model.embedTokens()).toFloatArray(), b.toHost(head.weight().value()).toFloatArray());
        }
    }
}
