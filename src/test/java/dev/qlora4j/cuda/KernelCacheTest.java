package dev.qlora4j.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.TemporaryProperty;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class KernelCacheTest {

    @Test
    void keysNameThePtxTheDeviceAndTheDriver() {
        byte[] ptx = "ptx text".getBytes();
        String k = KernelCache.key(ptx, 9, 0, 13000);
        assertTrue(k.matches("[0-9a-f]{32}-sm90-cuda13000\\.cubin"), k);
        assertNotEquals(k, KernelCache.key("ptx texT".getBytes(), 9, 0, 13000));
        assertNotEquals(k, KernelCache.key(ptx, 8, 0, 13000));
        assertNotEquals(k, KernelCache.key(ptx, 9, 0, 12080));
    }

    @Test
    void entriesRoundTripAndBadFilesAreRejectedAndDeleted(@TempDir Path dir) throws Exception {
        KernelCache c = KernelCache.in(dir.resolve("new/sub"));   // created on first write
        byte[] cubin = new byte[5000];
        new Random(7).nextBytes(cubin);
        assertNull(c.read("a.cubin"));
        c.write("a.cubin", cubin);
        assertArrayEquals(cubin, c.read("a.cubin"));
        try (var files = Files.list(dir.resolve("new/sub"))) {
            assertEquals(1, files.count(), "no temporary file is left behind");
        }
        Path f = dir.resolve("new/sub/a.cubin");
        byte[] whole = Files.readAllBytes(f);
        Files.write(f, Arrays.copyOf(whole, whole.length - 10));         // truncated
        assertNull(c.read("a.cubin"));
        assertFalse(Files.exists(f), "a bad entry is deleted so that it is compiled again");
        c.write("a.cubin", cubin);
        whole[KernelCache.HEADER_BYTES + 100] ^= 0x40;                    // one flipped bit in the cubin
        Files.write(f, whole);
        assertNull(c.read("a.cubin"));
        Files.write(f, "not a cache entry at all".getBytes());
        assertNull(c.read("a.cubin"));
    }

    @Test
    void offMeansNoFilesAndUnwritableFoldersOnlyWarn(@TempDir Path dir) throws Exception {
        KernelCache off = KernelCache.off();
        assertFalse(off.enabled());
        off.write("x.cubin", new byte[] {1});
        assertNull(off.read("x.cubin"));
        Path file = dir.resolve("a-file");
        Files.write(file, new byte[] {0});
        KernelCache broken = KernelCache.in(file.resolve("under-a-file"));   // cannot create a folder under a file
        broken.write("x.cubin", new byte[] {1, 2, 3});                        // a warning, no exception
        assertNull(broken.read("x.cubin"));
    }

    @Test
    void theSystemPropertyChoosesTheFolderOrTurnsTheCacheOff(@TempDir Path dir) {
        try (var before = TemporaryProperty.set(KernelCache.PROPERTY, dir.toString())) {
            assertEquals(dir, KernelCache.fromEnvironment().directory());
            System.setProperty(KernelCache.PROPERTY, "off");
            assertFalse(KernelCache.fromEnvironment().enabled());
        }
    }
}
