package dev.qlora4j.cli;

import dev.qlora4j.Golden;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** --device-map / --max-memory / --offload-folder on the command line (CPU backend: plans degenerate, disk streams). */
class DeviceMapCliTest {
    @TempDir Path folder;

    @Test
    void inspectPrintsThePlanForTheBudgetsGiven() {
        String dir = Golden.dir("llama-f32").toString();
        // GPU 0 named by --max-memory (no GPU here): room for the embedding/norm/head and the two slots, so every layer streams.
        CliTest.Result r = CliTest.run("inspect", dir, "--device-map", "sequential", "--max-memory", "{\"0\":\"600KiB\",\"cpu\":\"1GiB\"}");
        assertEquals(0, r.code(), r.err());
        assertTrue(r.out().contains("device map (sequential)") && r.out().contains("model.layers.0-2") && r.out().contains("streaming slots"), r.out());
        CliTest.Result bad = CliTest.run("inspect", dir, "--device-map", "{\"model.layers.9\":0}", "--max-memory", "{\"0\":\"1GiB\"}");
        assertNotEquals(0, bad.code());
        assertTrue(bad.err().contains("unknown module \"model.layers.9\""), bad.err());
    }

    @Test
    void generateWithLayersOnDiskGivesTheSameTokens() {
        String dir = Golden.dir("llama-f32").toString();
        String[] base = {"generate", "--model", dir, "--device", "cpu", "--prompt", "The old man", "--max-new-tokens", "5", "--greedy", "--json"};
        CliTest.Result plain = CliTest.run(base);
        assertEquals(0, plain.code(), plain.err());
        String[] placed = java.util.Arrays.copyOf(base, base.length + 4);
        placed[base.length] = "--device-map";
        placed[base.length + 1] = "{\"\":\"cpu\",\"model.layers\":\"disk\"}";
        placed[base.length + 2] = "--offload-folder";
        placed[base.length + 3] = folder.toString();
        CliTest.Result disk = CliTest.run(placed);
        assertEquals(0, disk.code(), disk.err());
        assertEquals(plain.out(), disk.out());
        assertTrue(disk.err().contains("device map (explicit)") && disk.err().contains("disk"), disk.err());
    }
}
