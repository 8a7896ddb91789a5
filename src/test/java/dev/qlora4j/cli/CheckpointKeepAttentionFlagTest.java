package dev.qlora4j.cli;

import dev.qlora4j.train.TrainingArguments;
import org.junit.jupiter.api.Test;
import picocli.CommandLine;

import java.nio.file.Path;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * checkpoint_keep_attention: auto (null) by default, --no-checkpoint-keep-attention (or the JSON key) turns it off,
 * --checkpoint-keep-attention on, and it round-trips through training_args.json (toMap / with).
 */
class CheckpointKeepAttentionFlagTest {
    private static Map<String, Object> overrides(String... argv) {
        TrainCommand c = new TrainCommand();
        new CommandLine(c).parseArgs(argv);
        return c.overrides();
    }

    @Test
    void autoByDefaultAndTurnedOffByTheNegatedFlagOrTheKey() {
        assertNull(TrainingArguments.defaults(Path.of("out")).checkpointKeepAttention(), "auto");
        Map<String, Object> none = overrides("--data", "d", "--output", "out", "--gradient-checkpointing");
        assertFalse(none.containsKey("checkpoint_keep_attention"), "an absent flag leaves the default");
        TrainingArguments auto = TrainingArguments.load(null, none, w -> { });
        assertNull(auto.checkpointKeepAttention(), "auto");
        assertTrue(auto.toMap().containsKey("checkpoint_keep_attention"), "auto is written (as null) to training_args.json");
        assertNull(auto.toMap().get("checkpoint_keep_attention"));
        assertNull(TrainingArguments.load(null, auto.toMap(), w -> { }).checkpointKeepAttention(), "null reads back as auto");

        Map<String, Object> off = overrides("--data", "d", "--output", "out", "--gradient-checkpointing", "--no-checkpoint-keep-attention");
        assertEquals(false, off.get("checkpoint_keep_attention"));
        TrainingArguments a = TrainingArguments.load(null, off, w -> { });
        assertFalse(a.checkpointKeepAttention());
        assertTrue(a.gradientCheckpointing());
        assertEquals(false, a.toMap().get("checkpoint_keep_attention"), "written to training_args.json");
        assertTrue(a.with(Map.of("checkpoint_keep_attention", true)).checkpointKeepAttention());

        Map<String, Object> on = overrides("--data", "d", "--output", "out", "--checkpoint-keep-attention");
        assertEquals(true, on.get("checkpoint_keep_attention"));
        assertFalse(TrainingArguments.of(Map.of("output_dir", "out", "checkpoint_keep_attention", false)).checkpointKeepAttention());
    }

    /** checkpoint_keep_residual: auto (null) by default, the flag and its negation set it, round trip through the map. */
    @Test
    void keepResidualIsAutoByDefaultAndSetByTheFlagOrTheKey() {
        assertNull(TrainingArguments.defaults(Path.of("out")).checkpointKeepResidual(), "auto");
        Map<String, Object> none = overrides("--data", "d", "--output", "out", "--gradient-checkpointing");
        assertFalse(none.containsKey("checkpoint_keep_residual"), "an absent flag leaves the default");
        TrainingArguments auto = TrainingArguments.load(null, none, w -> { });
        assertNull(auto.checkpointKeepResidual());
        assertTrue(auto.toMap().containsKey("checkpoint_keep_residual"), "auto is written (as null) to training_args.json");
        assertNull(TrainingArguments.load(null, auto.toMap(), w -> { }).checkpointKeepResidual(), "null reads back as auto");
        Map<String, Object> off = overrides("--data", "d", "--output", "out", "--gradient-checkpointing", "--no-checkpoint-keep-residual");
        assertEquals(false, off.get("checkpoint_keep_residual"));
        TrainingArguments a = TrainingArguments.load(null, off, w -> { });
        assertFalse(a.checkpointKeepResidual());
        assertEquals(false, a.toMap().get("checkpoint_keep_residual"), "written to training_args.json");
        assertTrue(a.with(Map.of("checkpoint_keep_residual", true)).checkpointKeepResidual());
        assertEquals(true, overrides("--data", "d", "--output", "out", "--checkpoint-keep-residual").get("checkpoint_keep_residual"));
    }

    /** embedding_in_host_memory: off by default, --embedding-in-host-memory (or the key) turns it on, round trip. */
    @Test
    void embeddingInHostMemoryIsOffByDefaultAndTurnedOnByTheFlagOrTheKey() {
        assertFalse(TrainingArguments.defaults(Path.of("out")).embeddingInHostMemory());
        Map<String, Object> none = overrides("--data", "d", "--output", "out");
        assertFalse(none.containsKey("embedding_in_host_memory"), "an absent flag leaves the default");
        Map<String, Object> on = overrides("--data", "d", "--output", "out", "--embedding-in-host-memory");
        assertEquals(true, on.get("embedding_in_host_memory"));
        TrainingArguments a = TrainingArguments.load(null, on, w -> { });
        assertTrue(a.embeddingInHostMemory());
        assertEquals(true, a.toMap().get("embedding_in_host_memory"), "written to training_args.json");
        assertFalse(a.with(Map.of("embedding_in_host_memory", false)).embeddingInHostMemory());
    }

    /** checkpoint_keep_dequantized: on by default, --no-checkpoint-keep-dequantized (or the key) turns it off, round trip. */
    @Test
    void keepDequantizedIsOnByDefaultAndTurnedOffByTheNegatedFlagOrTheKey() {
        assertTrue(TrainingArguments.defaults(Path.of("out")).checkpointKeepDequantized());
        Map<String, Object> none = overrides("--data", "d", "--output", "out", "--gradient-checkpointing");
        assertFalse(none.containsKey("checkpoint_keep_dequantized"), "an absent flag leaves the default");
        assertTrue(TrainingArguments.load(null, none, w -> { }).checkpointKeepDequantized());
        Map<String, Object> off = overrides("--data", "d", "--output", "out", "--gradient-checkpointing", "--no-checkpoint-keep-dequantized");
        assertEquals(false, off.get("checkpoint_keep_dequantized"));
        TrainingArguments a = TrainingArguments.load(null, off, w -> { });
        assertFalse(a.checkpointKeepDequantized());
        assertEquals(false, a.toMap().get("checkpoint_keep_dequantized"), "written to training_args.json");
        assertFalse(TrainingArguments.load(null, a.toMap(), w -> { }).checkpointKeepDequantized(), "reads back");
        assertTrue(a.with(Map.of("checkpoint_keep_dequantized", true)).checkpointKeepDequantized());
        assertFalse(TrainingArguments.of(Map.of("output_dir", "out", "checkpoint_keep_dequantized", false)).checkpointKeepDequantized());
    }
}
