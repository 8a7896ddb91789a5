package dev.qlora4j.cli;

import dev.qlora4j.peft.config.BottleneckConfig;
import dev.qlora4j.peft.config.LoraConfig;
import dev.qlora4j.peft.config.ModuleSelector;
import dev.qlora4j.peft.config.PrefixTuningConfig;
import dev.qlora4j.train.TrainingArguments;
import org.junit.jupiter.api.Test;
import picocli.CommandLine;

import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class TrainCommandTest {
    private static TrainCommand parse(String... argv) {
        TrainCommand c = new TrainCommand();
        new CommandLine(c).parseArgs(argv);
        return c;
    }

    @Test
    void flagsBecomeTrainingArgumentsUnderTransformersNames() {
        TrainCommand c = parse("--data", "d.jsonl", "--output", "out", "--learning-rate", "2e-4", "--max-steps", "50",
                "--per-device-train-batch-size", "4", "--no-packing", "--gradient-checkpointing", "--save-total-limit", "2");
        Map<String, Object> m = c.overrides();
        assertEquals(Map.of("output_dir", "out", "learning_rate", 2e-4, "max_steps", 50, "per_device_train_batch_size", 4,
                "packing", false, "gradient_checkpointing", true, "save_total_limit", 2), m);
        TrainingArguments a = TrainingArguments.load(null, m, w -> { });
        assertEquals(4, a.perDeviceTrainBatchSize());
        assertFalse(a.packing());
        assertTrue(a.gradientCheckpointing());
        assertEquals(8, a.perDeviceEvalBatchSize(), "flags not given keep transformers' defaults");
    }

    @Test
    void adapterFlagsBuildPeftConfigs() {
        LoraConfig lora = (LoraConfig) parse("--data", "d", "--lora-r", "16", "--lora-alpha", "32", "--lora-dropout", "0.05")
                .adapterConfig("llama");
        assertEquals(16, lora.r());
        assertEquals(32.0, lora.loraAlpha());
        assertEquals(0.05, lora.loraDropout());
        assertEquals(new ModuleSelector.Names(List.of("q_proj", "v_proj")), lora.targetModules(), "peft's llama default");
        LoraConfig dora = (LoraConfig) parse("--data", "d", "--adapter-type", "dora", "--target-modules", "all-linear").adapterConfig("llama");
        assertTrue(dora.useDora());
        assertInstanceOf(ModuleSelector.AllLinear.class, dora.targetModules());
        LoraConfig some = (LoraConfig) parse("--data", "d", "--target-modules", "q_proj,k_proj,o_proj").adapterConfig("qwen2");
        assertEquals(new ModuleSelector.Names(List.of("q_proj", "k_proj", "o_proj")), some.targetModules());
        assertInstanceOf(BottleneckConfig.class, parse("--data", "d", "--adapter-type", "bottleneck").adapterConfig("llama"));
        PrefixTuningConfig p = (PrefixTuningConfig) parse("--data", "d", "--adapter-type", "prefix", "--num-virtual-tokens", "8").adapterConfig("llama");
        assertEquals(8, p.numVirtualTokens());
        var e = assertThrows(IllegalArgumentException.class, () -> parse("--data", "d", "--adapter-type", "ia3").adapterConfig("llama"));
        assertTrue(e.getMessage().contains("ia3"), e.getMessage());
    }

    @Test
    void memoryTextIsGiB() {
        assertEquals("mem 3.1/4.0 GiB", TrainCommand.memoryText((long) (3.1 * (1L << 30)), 4L << 30));
    }

    @Test
    void missingOutputIsReported() {
        var e = assertThrows(IllegalArgumentException.class, () -> parse("--data", "d").call());
        assertTrue(e.getMessage().contains("--output"), e.getMessage());
    }
}
