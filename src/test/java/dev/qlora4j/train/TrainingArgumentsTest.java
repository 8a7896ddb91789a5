package dev.qlora4j.train;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class TrainingArgumentsTest {
    @TempDir Path tmp;

    @Test
    void defaultsAreTransformers() {
        TrainingArguments a = TrainingArguments.defaults(Path.of("out"));
        assertEquals(8, a.perDeviceTrainBatchSize());
        assertEquals(8, a.perDeviceEvalBatchSize());
        assertEquals(1, a.gradientAccumulationSteps());
        assertEquals(3.0, a.numTrainEpochs());
        assertEquals(-1, a.maxSteps());
        assertEquals(5e-5, a.learningRate());
        assertEquals(0, a.warmupSteps());
        assertEquals(0.0, a.warmupRatio());
        assertEquals("linear", a.lrSchedulerType());
        assertEquals(0.0, a.weightDecay());
        assertEquals(0.9, a.adamBeta1());
        assertEquals(0.999, a.adamBeta2());
        assertEquals(1e-8, a.adamEpsilon());
        assertEquals(1.0, a.maxGradNorm());
        assertEquals("adamw_torch", a.optim());
        assertEquals("no", a.evalStrategy());
        assertEquals(500.0, a.loggingSteps());
        assertEquals("steps", a.saveStrategy());
        assertEquals(500.0, a.saveSteps());
        assertNull(a.saveTotalLimit());
        assertEquals(42, a.seed());
        assertEquals(500.0, a.evalStepsOrLogging(), "eval_steps defaults to logging_steps");
        assertEquals(1024, a.maxSeqLength());
    }

    @Test
    void configFileWithUnknownKeysWarnsAndFlagsOverride() throws Exception {
        Path cfg = tmp.resolve("train.json");
        Files.writeString(cfg, """
                {"output_dir": "runs/a", "learning_rate": "2e-4", "per_device_train_batch_size": 4,
                 "evaluation_strategy": "steps", "eval_steps": 10, "lerning_rate": 1, "report_to": "none",
                 "num_train_epochs": 1, "save_total_limit": 2, "resume_from_checkpoint": true, "max_length": 256}
                """);
        List<String> warnings = new ArrayList<>();
        TrainingArguments a = TrainingArguments.load(cfg, Map.of("per_device_train_batch_size", 2, "max_steps", 30), warnings::add);
        assertEquals(2e-4, a.learningRate());
        assertEquals(2, a.perDeviceTrainBatchSize(), "flags override the file");
        assertEquals(30, a.maxSteps());
        assertEquals("steps", a.evalStrategy());
        assertEquals(10.0, a.evalSteps());
        assertEquals(2, a.saveTotalLimit());
        assertEquals("latest", a.resumeFromCheckpoint());
        assertEquals(256, a.maxSeqLength());
        assertEquals(Path.of("runs/a"), a.outputDir());
        assertTrue(warnings.stream().anyMatch(w -> w.contains("unknown key \"lerning_rate\"") && w.contains("did you mean \"learning_rate\"")), warnings.toString());
        assertTrue(warnings.stream().anyMatch(w -> w.contains("\"report_to\"") && w.contains("does not use")), warnings.toString());
        assertTrue(warnings.stream().anyMatch(w -> w.contains("\"evaluation_strategy\" is read as \"eval_strategy\"")), warnings.toString());
        assertTrue(warnings.stream().allMatch(w -> w.startsWith(cfg.toString())), "warnings name the file");
    }

    @Test
    void badValuesNameTheKey() {
        record Case(Map<String, Object> entries, String expected) { }
        List<Case> cases = List.of(
                new Case(Map.of("warmup_ratio", 1.5), "warmup_ratio"),
                new Case(Map.of("optim", "adam"), "optim \"adam\" is not supported"),
                new Case(Map.of("lr_scheduler_type", "polynomial"), "lr_scheduler_type"),
                new Case(Map.of("logging_steps", 2.5), "logging_steps must be an integer if bigger than 1"),
                new Case(Map.of("eval_strategy", "steps", "logging_steps", 0, "logging_strategy", "no"), "eval_strategy \"steps\" requires eval_steps"),
                new Case(Map.of("save_strategy", "best"), "metric_for_best_model"),
                new Case(Map.of("per_device_train_batch_size", 0), "per_device_train_batch_size must be >= 1"),
                new Case(Map.of("num_train_epochs", 0), "num_train_epochs must be > 0"),
                new Case(Map.of("learning_rate", "fast"), "\"learning_rate\" must be a number"),
                new Case(Map.of("packing", "yes"), "\"packing\" must be true or false"),
                new Case(Map.of("save_total_limit", 0), "save_total_limit must be >= 1"),
                new Case(Map.of("max_seq_length", 1), "max_seq_length must be >= 2"),
                new Case(Map.of("max_steps", 1.5), "\"max_steps\" must be an integer"));
        for (Case c : cases) {
            java.util.Map<String, Object> m = new java.util.HashMap<>(c.entries());
            m.put("output_dir", "o");
            var e = assertThrows(IllegalArgumentException.class, () -> TrainingArguments.of(m), c.toString());
            assertTrue(e.getMessage().contains(c.expected()), c.expected() + " in: " + e.getMessage());
        }
        var e = assertThrows(IllegalArgumentException.class, () -> TrainingArguments.of(Map.of("learning_rate", 1e-4)));
        assertTrue(e.getMessage().contains("\"output_dir\" is required"), e.getMessage());
        var u = assertThrows(IllegalArgumentException.class, () -> TrainingArguments.of(Map.of("output_dir", "o", "lr", 1)));
        assertTrue(u.getMessage().contains("unknown key \"lr\""), "code-built arguments are strict: " + u.getMessage());
    }

    @Test
    void badConfigFilesSayWhatToDo() throws Exception {
        Path bad = tmp.resolve("bad.json");
        Files.writeString(bad, "{\"learning_rate\": 1e-4,}");
        var e = assertThrows(IllegalArgumentException.class, () -> TrainingArguments.load(bad, Map.of(), w -> { }));
        assertTrue(e.getMessage().contains("bad.json") && e.getMessage().contains("not valid JSON"), e.getMessage());
        Path arr = tmp.resolve("arr.json");
        Files.writeString(arr, "[1]");
        e = assertThrows(IllegalArgumentException.class, () -> TrainingArguments.load(arr, Map.of(), w -> { }));
        assertTrue(e.getMessage().contains("one JSON object"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> TrainingArguments.load(tmp.resolve("none.json"), Map.of(), w -> { }));
        assertTrue(e.getMessage().contains("does not exist"), e.getMessage());
    }

    @Test
    void fractionalStepsAreAShareOfMaxSteps() {
        assertEquals(25, TrainingArguments.resolveSteps(0.1, 250));
        assertEquals(1, TrainingArguments.resolveSteps(0.001, 250));
        assertEquals(7, TrainingArguments.resolveSteps(7, 250));
    }

    @Test
    void toMapRoundTrips() {
        TrainingArguments a = TrainingArguments.of(Map.of("output_dir", "o", "learning_rate", 3e-4, "packing", true, "save_total_limit", 3));
        Map<String, Object> m = new java.util.HashMap<>(a.toMap());
        m.values().removeIf(java.util.Objects::isNull);
        assertEquals(a, TrainingArguments.of(m));
        assertEquals(a.with(Map.of("seed", 7)).seed(), 7);
    }
}
