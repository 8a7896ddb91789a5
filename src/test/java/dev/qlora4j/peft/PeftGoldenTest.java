package dev.qlora4j.peft;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.qlora4j.CausalLM;
import dev.qlora4j.Golden;
import dev.qlora4j.LoadOptions;
import dev.qlora4j.io.SafetensorsFile;
import dev.qlora4j.io.SafetensorsWriter;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.optim.AdamW;
import dev.qlora4j.optim.AdamWConfig;
import dev.qlora4j.optim.Param;
import dev.qlora4j.optim.StateStorage;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Adapters made by peft 0.21 (tools/golden/make_peft_goldens.py) on the tiny golden models:
 * they load here and give peft's logits, merged logits, one batch's gradients and a 10-step
 * AdamW loss curve. {@link #writeOurAdaptersForPeft} saves adapters made here for the reverse
 * check (tools/golden/check_our_adapters.py, run on the GPU machine).
 */
class PeftGoldenTest {
    /** f32 logits through the same float32 ops in another order (the bar). */
    static final double LOGITS_TOL = 1e-4;

    static Path caseDir(String name) { return Golden.dir("llama-f32").getParent().resolve("peft").resolve(name); }

    static JsonNode json(String name) throws IOException {
        return new ObjectMapper().readTree(caseDir(name).resolve("golden.json").toFile());
    }

    static float[] flat(float[][] rows) {
        float[] out = new float[rows.length * rows[0].length];
        for (int i = 0; i < rows.length; i++) System.arraycopy(rows[i], 0, out, i * rows[0].length, rows[0].length);
        return out;
    }

    @ParameterizedTest
    @ValueSource(strings = {"lora-llama", "lora-rslora-qwen2", "dora-llama", "lora-modules-to-save-qwen2"})
    void peftAdaptersLoadAndGivePeftsLogits(String name) throws IOException {
        JsonNode g = json(name);
        try (CausalLM lm = CausalLM.fromPretrained(Golden.dir(g.get("base").asText()), LoadOptions.cpu());
             SafetensorsFile gt = SafetensorsFile.open(caseDir(name).resolve("golden.safetensors"))) {
            PeftModel peft = PeftModel.fromPretrained(lm, caseDir(name).resolve("adapter"), PeftModel.DEFAULT_ADAPTER, false);
            for (JsonNode p : g.get("prompts")) {
                float[] ours = flat(lm.logits(Golden.ints(p.get("input_ids"))));
                float[] ref = gt.tensor(p.get("logits_key").asText()).toFloatArray();
                double err = Golden.maxRelError(ours, ref);
                System.out.printf("peft %s %s: max rel logit error %.3g%n", name, p.get("logits_key").asText(), err);
                assertTrue(err <= LOGITS_TOL, name + " " + p.get("logits_key").asText() + " rel error " + err);
            }
            if (gt.has("logits_merged_0")) {
                peft.mergeAndUnload();
                float[] merged = flat(lm.logits(Golden.ints(g.get("prompts").get(0).get("input_ids"))));
                double err = Golden.maxRelError(merged, gt.tensor("logits_merged_0").toFloatArray());
                System.out.printf("peft %s merged: max rel logit error %.3g%n", name, err);
                assertTrue(err <= LOGITS_TOL, name + " merged rel error " + err);
            }
        }
    }

    /** The loss and targets transformers uses for labels = input_ids on one sequence. */
    static TransformerLM.StepResult step(TransformerLM model, int[] ids) {
        int n = ids.length;
        int[] pos = new int[n], targets = new int[n];
        for (int i = 0; i < n; i++) {
            pos[i] = i;
            targets[i] = i + 1 < n ? ids[i + 1] : -100;
        }
        return model.trainStep(ids, pos, null, targets, 1, false, 1f / (n - 1));
    }

    /**
     * Gradients of one batch: float32 backward here vs torch's float32 autograd; they differ by
     * summation order only, so 1e-3 of each tensor's largest gradient bounds the difference.
     */
    @ParameterizedTest
    @ValueSource(strings = {"lora-llama", "dora-llama"})
    void gradientsOfOneBatchMatchPeft(String name) throws IOException {
        JsonNode g = json(name);
        try (CausalLM lm = CausalLM.fromPretrained(Golden.dir(g.get("base").asText()), LoadOptions.cpu());
             SafetensorsFile gt = SafetensorsFile.open(caseDir(name).resolve("golden.safetensors"))) {
            PeftModel peft = PeftModel.fromPretrained(lm, caseDir(name).resolve("adapter"), PeftModel.DEFAULT_ADAPTER, true);
            peft.train(true);
            peft.zeroGrad();
            TransformerLM.StepResult r = step(lm.model(), Golden.ints(g.get("grad").get("input_ids")));
            assertEquals(g.get("grad").get("loss").asDouble(), r.meanLoss(), 1e-5 * r.meanLoss(), "loss");
            int checked = 0;
            double worst = 0;
            for (Param p : peft.trainableParameters()) {
                String key = "grad." + p.name().replace(".default.", ".").replace("lora_magnitude_vector.weight", "lora_magnitude_vector");
                if (!gt.has(key)) continue;
                float[] ours = p.grad().toFloatArray(), ref = gt.tensor(key).toFloatArray();
                double err = Golden.maxRelError(ours, ref);
                worst = Math.max(worst, err);
                assertTrue(err <= 1e-3, key + " gradient rel error " + err);
                checked++;
            }
            System.out.printf("peft %s: %d gradient tensors, worst rel error %.3g%n", name, checked, worst);
            assertEquals(g.get("grad").get("keys").size(), checked, "every peft gradient compared");
        }
    }

    /** 10 AdamW steps on a fixed sequence: the loss curve within 1e-3 relative of torch's. */
    @Test
    void tenAdamWStepsFollowPeftsLossCurve() throws IOException {
        JsonNode g = json("lora-llama"), t = g.get("train");
        try (CausalLM lm = CausalLM.fromPretrained(Golden.dir("llama-f32"), LoadOptions.cpu())) {
            PeftModel peft = PeftModel.fromPretrained(lm, caseDir("lora-llama").resolve("adapter"), PeftModel.DEFAULT_ADAPTER, true);
            peft.train(true);
            AdamW opt = AdamW.of(peft.trainableParameters(), new AdamWConfig(t.get("lr").asDouble(), t.get("betas").get(0).asDouble(),
                    t.get("betas").get(1).asDouble(), t.get("eps").asDouble(), t.get("weight_decay").asDouble(), StateStorage.DEVICE));
            int[] ids = Golden.ints(t.get("input_ids"));
            JsonNode ref = t.get("losses");
            for (int s = 0; s < ref.size(); s++) {
                peft.zeroGrad();
                double loss = step(lm.model(), ids).meanLoss();
                System.out.printf("step %d: loss %.6f (peft %.6f)%n", s, loss, ref.get(s).asDouble());
                assertEquals(ref.get(s).asDouble(), loss, 1e-3 * ref.get(s).asDouble(), "loss before step " + s);
                opt.step();
            }
        }
    }

    /**
     * Saves adapters made here (random LoRA and DoRA on llama-f32) with our logits, for
     * tools/golden/check_our_adapters.py to load in peft: target/peft-ours/<case>/.
     */
    @Test
    void writeOurAdaptersForPeft() throws IOException {
        Path root = Path.of("target", "peft-ours");
        for (String kind : List.of("lora", "dora")) {
            try (CausalLM lm = CausalLM.fromPretrained(Golden.dir("llama-f32"), LoadOptions.cpu())) {
                var cfg = dev.qlora4j.peft.config.LoraConfig.builder().r(4).loraAlpha(8).useDora(kind.equals("dora"))
                        .targetModules(new dev.qlora4j.peft.config.ModuleSelector.Names(List.of("q_proj", "v_proj", "down_proj")))
                        .initLoraWeights(new dev.qlora4j.peft.config.InitLoraWeights.Flag(false)).build();
                PeftModel peft = PeftModel.wrap(lm, cfg, PeftModel.DEFAULT_ADAPTER, 1234);
                Path dir = root.resolve("ours-" + kind + "-llama");
                peft.save(dir);
                int[] ids = Golden.ints(Golden.json("llama-f32").get("prompts").get(0).get("input_ids"));
                float[][] logits = lm.logits(ids);
                SafetensorsWriter.write(dir.resolve("expected_logits.safetensors"),
                        Map.of("logits", Tensor.of(flat(logits), logits.length, logits[0].length)), null);
                Files.writeString(dir.resolve("expected.json"), new ObjectMapper().writeValueAsString(Map.of(
                        "base", "llama-f32", "input_ids", ids, "logits_file", "expected_logits.safetensors")));
                assertTrue(Files.exists(dir.resolve("adapter_model.safetensors")));
            }
        }
    }
}
