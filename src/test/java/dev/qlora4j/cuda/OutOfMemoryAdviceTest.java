package dev.qlora4j.cuda;

import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

/** The out-of-GPU-memory text: the numbers a user needs and every setting that frees memory, by its name. */
class OutOfMemoryAdviceTest {
    @Test
    void namesTheNumbersAndTheSettingsThatFit() {
        long gib = 1L << 30;
        String m = OutOfMemoryAdvice.message(3 * gib, 3 * gib, 130 * gib, 136 * gib, 131 * gib, new MemoryInfo(gib / 2, 140 * gib));
        for (String part : new String[] {"requested 3221225472 bytes (3.00 GiB", "allocated 139586437120 bytes", "device free",
                "--per-device-train-batch-size", "--gradient-checkpointing", "--offload-activations",
                "--no-checkpoint-keep-attention", "--no-checkpoint-keep-residual", "--embedding-in-host-memory", "--device-map auto", "--max-seq-length", "--no-checkpoint-keep-dequantized"}) {
            assertTrue(m.contains(part), () -> "'" + part + "' missing from: " + m);
        }
    }
}
