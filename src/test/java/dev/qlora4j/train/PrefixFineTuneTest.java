package dev.qlora4j.train;

import dev.qlora4j.CausalLM;
import dev.qlora4j.LoadOptions;
import dev.qlora4j.peft.config.PrefixTuningConfig;
import dev.qlora4j.peft.prefix.PrefixTuning;
import dev.qlora4j.peft.prefix.TrainablePrefixTuning;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Prefix tuning on the CPU, end to end through the Trainer: the embedded KJV model (float32),
 * 10 virtual tokens per layer, 25 steps on the demo's format-teaching set. The held-out eval loss
 * must drop clearly below the base model's (no prefix) and far below the randomly initialized
 * prefix's; the saved adapter, loaded as peft's files, gives the same eval loss through the cache.
 */
class PrefixFineTuneTest {
    @Test
    void prefixTuningLowersTheEvalLoss(@TempDir Path out) throws Exception {
        Path train = FineTuneTest.copy("demo/train.jsonl", out), eval = FineTuneTest.copy("demo/eval.jsonl", out);
        try (CausalLM lm = CausalLM.fromPretrained(Path.of("models", "default"), LoadOptions.cpu())) {
            JsonlDataset trainSet = JsonlDataset.load(train, lm.tokenizer(), 128, true, true, m -> {});
            JsonlDataset evalSet = JsonlDataset.load(eval, lm.tokenizer(), 128, true, true, m -> {});
            double base = evalLoss(lm, evalSet, null);
            TrainablePrefixTuning prefix = TrainablePrefixTuning.create(PrefixTuningConfig.of(10, false), lm.model(), 42);
            PrefixTuningTrainableModel model = new PrefixTuningTrainableModel(lm.model(), prefix, "models/default");
            double before = evalLoss(lm, evalSet, model);
            TrainingArguments args = TrainingArguments.defaults(out.resolve("run")).with(Map.ofEntries(
                    Map.entry("max_steps", 25), Map.entry("learning_rate", 8e-2), Map.entry("per_device_train_batch_size", 8),
                    Map.entry("warmup_steps", 2), Map.entry("lr_scheduler_type", "cosine"), Map.entry("logging_steps", 10),
                    Map.entry("eval_strategy", "no"), Map.entry("save_steps", 1000), Map.entry("seed", 42),
                    Map.entry("max_seq_length", 128)));
            long t0 = System.nanoTime();
            Trainer.builder(model, args).trainData(trainSet.examples()).padTokenId(lm.tokenizer().padTokenId())
                    .progress(ProgressReporter.auto(System.out, null)).build().train();
            double seconds = (System.nanoTime() - t0) / 1e9;
            double after = evalLoss(lm, evalSet, model);
            System.out.printf("prefix tuning (10 virtual tokens, 25 steps, %.1f s): eval loss base model %.4f, random prefix %.4f -> trained %.4f%n",
                    seconds, base, before, after);
            assertTrue(after < before - 1.0, "training fixes the random prefix: " + before + " -> " + after);
            assertTrue(after < base - 0.3, "the trained prefix beats the base model on the format: " + base + " -> " + after);
            prefix.detach();
            try (PrefixTuning loaded = PrefixTuning.load(out.resolve("run"), lm.model()).attach()) {
                double sum = 0;
                long tokens = 0;
                for (Example e : evalSet.examples()) {
                    float[][] logits = lm.logits(e.ids()); // the cache path, with the loaded prefix in every cache
                    for (int t = 0; t + 1 < e.length(); t++) {
                        int y = e.labels()[t + 1];
                        if (y == Example.IGNORE) continue;
                        double max = Double.NEGATIVE_INFINITY, z = 0;
                        for (float x : logits[t]) max = Math.max(max, x);
                        for (float x : logits[t]) z += Math.exp(x - max);
                        sum += Math.log(z) + max - logits[t][y];
                        tokens++;
                    }
                }
                assertEquals(after, sum / tokens, after * 1e-4, "the saved adapter through the cache gives the trained eval loss");
            }
            prefix.close();
        }
    }

    static double evalLoss(CausalLM lm, JsonlDataset data, TrainableModel m) {
        var total = new dev.qlora4j.infer.LossEvaluator.LossSum(0, 0);
        Collator c = new Collator(lm.tokenizer().padTokenId());
        for (TrainRow r : Packer.unpacked(data.examples())) {
            Batch b = c.collate(java.util.List.of(r));
            total = total.plus(m != null ? m.eval(b) : lm.model().evalStep(b.ids(), b.positions(), b.segments(), b.targets(), 1));
        }
        return total.mean();
    }
}
