package dev.qlora4j.peft.prefix;

import com.fasterxml.jackson.databind.ObjectMapper;
import dev.qlora4j.CausalLM;
import dev.qlora4j.Golden;
import dev.qlora4j.LoadOptions;
import dev.qlora4j.io.SafetensorsWriter;
import dev.qlora4j.peft.config.PrefixTuningConfig;
import dev.qlora4j.peft.config.PromptTuningConfig;
import dev.qlora4j.tensor.Tensor;
import dev.qlora4j.train.Collator;
import dev.qlora4j.train.Example;
import dev.qlora4j.train.PrefixTuningTrainableModel;
import dev.qlora4j.train.PromptTuningTrainableModel;
import dev.qlora4j.train.TrainRow;
import dev.qlora4j.train.TrainableModel;
import dev.qlora4j.optim.AdamW;
import dev.qlora4j.optim.AdamWConfig;
import dev.qlora4j.optim.ParamGroup;
import dev.qlora4j.optim.StateStorage;
import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Prefix- and prompt-tuning adapters trained here for a few steps on llama-f32, saved with our
 * logits for tools/golden/check_our_adapters.py to load in peft: target/peft-ours/ours-prefix-llama,
 * ours-prefix-projection-llama, ours-prompt-llama (each: adapter_config.json,
 * adapter_model.safetensors, expected.json, expected_logits.safetensors).
 */
class PromptLearningForPeftTest {
    static final int[] TRAIN = {1, 292, 398, 286, 332, 305, 294, 386, 226, 301, 287, 299};

    @Test
    void writeOurTrainedAdaptersForPeft() throws IOException {
        Path root = Path.of("target", "peft-ours");
        int[] ids = Golden.ints(Golden.json("llama-f32").get("prompts").get(0).get("input_ids"));
        for (String kind : List.of("prefix", "prefix-projection", "prompt")) {
            try (CausalLM lm = CausalLM.fromPretrained(Golden.dir("llama-f32"), LoadOptions.cpu())) {
                var m = lm.model();
                Path dir = root.resolve("ours-" + kind + "-llama");
                float[][] logits;
                if (kind.startsWith("prefix")) {
                    boolean proj = kind.endsWith("projection");
                    var cfg = new PrefixTuningConfig(5, null, null, null, null, proj ? 24 : null, proj, null, "CAUSAL_LM", null, null,
                            false, Map.of());
                    try (TrainablePrefixTuning t = TrainablePrefixTuning.create(cfg, m, 21)) {
                        train(new PrefixTuningTrainableModel(m, t, "llama-f32"), t.trainableParameters());
                        t.save(dir, "llama-f32");
                        t.detach();
                        try (PrefixTuning live = t.toInference().attach()) {
                            logits = lm.logits(ids);
                        }
                    }
                } else {
                    var cfg = PromptTuningConfig.fromText(4, "In the beginning", "llama-f32");
                    try (TrainablePromptTuning t = TrainablePromptTuning.create(cfg, m, lm.tokenizer(), 21)) {
                        train(new PromptTuningTrainableModel(m, t, "llama-f32"), t.trainableParameters());
                        t.save(dir, "llama-f32");
                        t.detach();
                        try (PromptTuning live = t.toInference()) {
                            logits = live.logits(ids); // V + T rows, as peft returns them
                        }
                    }
                }
                SafetensorsWriter.write(dir.resolve("expected_logits.safetensors"),
                        Map.of("logits", Tensor.of(PrefixPromptGoldenTest.flat(logits, 0), logits.length, logits[0].length)), null);
                Files.writeString(dir.resolve("expected.json"), new ObjectMapper().writeValueAsString(Map.of(
                        "base", "llama-f32", "input_ids", ids, "logits_file", "expected_logits.safetensors")));
                assertTrue(Files.exists(dir.resolve("adapter_model.safetensors")));
            }
        }
    }

    /** Five AdamW steps (lr 0.05) on one sequence, so the saved weights are trained ones. */
    static void train(TrainableModel model, List<dev.qlora4j.optim.Param> params) {
        var batch = new Collator(2).collate(List.of(TrainRow.of(Example.allTrained(TRAIN, 0))));
        AdamW opt = new AdamW(List.of(new ParamGroup(params, 0.0)), new AdamWConfig(0.05, 0.9, 0.999, 1e-8, 0.0, StateStorage.DEVICE));
        double first = 0, last = 0;
        for (int s = 0; s < 5; s++) {
            double loss = model.trainStep(batch, false, 1f / batch.tokens()).meanLoss();
            if (s == 0) first = loss;
            last = loss;
            opt.step();
            model.zeroGrad();
        }
        assertTrue(last < first, "training lowers the loss: " + first + " -> " + last);
    }
}
