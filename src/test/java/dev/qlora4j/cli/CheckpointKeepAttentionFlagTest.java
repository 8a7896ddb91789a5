package dev.qlora4j.cli;

import dev.qlora4j.train.TrainingArguments;
import org.junit.jupiter.api.Test;
import picocli.CommandLine;

import java.nio.file.Path;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * checkpoint_keep_attention: off by default, --no-checkpoint-keep-attention (or the JSON key) turns it off, and it
 * round-trips through training_args.json (toMap / with).
 */
class CheckpointKeepAttentionFlagTest {
    private static Map<String, Object> overrides(String... argv) {
        TrainCommand c = new TrainCommand();
        new CommandLine(c).parseArgs(argv);
        return c.overrides();
    }

    @Test
    void offByDefaultAndTurnedOffByTheNegatedFlagOrTheKey() {
        assertFalse(TrainingArguments.defaults(Path.of("out")).checkpointKeepAttention());
        Map<String, Object> none = overrides("--data", "d", "--output", "out", "--gradient-checkpointing");
        assertFalse(none.containsKey("checkpoint_keep_attention"), "an absent flag leaves the default");
        assertFalse(TrainingArguments.load(null, none, w -> { }).checkpointKeepAttention());

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
}
