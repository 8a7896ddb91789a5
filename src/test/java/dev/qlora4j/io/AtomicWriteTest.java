package dev.qlora4j.io;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Device;
import dev.qlora4j.tensor.Storage;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.*;

/** A failed write leaves the previous file byte-identical and no temp files behind. */
class AtomicWriteTest {
    @TempDir Path dir;

    private Path writeOriginal() {
        Path file = dir.resolve("model.safetensors");
        SafetensorsWriter.write(file, Map.of("old", Tensor.of(new float[]{1, 2, 3}, 3)), Map.of("v", "1"));
        return file;
    }

    private void assertOnlyOriginal(Path file, byte[] original) throws Exception {
        assertArrayEquals(original, Files.readAllBytes(file), "previous file untouched");
        try (var files = Files.list(dir)) {
            assertEquals(List.of(file), files.toList(), "no temp files left");
        }
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            assertArrayEquals(new float[]{1, 2, 3}, f.tensor("old").toFloatArray());
        }
    }

    @Test
    void failureMidWriteKeepsThePreviousFile() throws Exception {
        Path file = writeOriginal();
        byte[] original = Files.readAllBytes(file);

        // "b" lives in memory that is freed before the save: writing it fails after "a" (written
        // first: F32 sorts before U8) and the header are already in the temp file.
        Arena arena = Arena.ofShared();
        Tensor freed = Tensor.view(arena.allocate(4), DType.U8, 4);
        arena.close();
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        tensors.put("a", Tensor.of(new float[4096], 64, 64));
        tensors.put("b", freed);
        assertThrows(IllegalStateException.class, () -> SafetensorsWriter.write(file, tensors, null));
        assertOnlyOriginal(file, original);
    }

    @Test
    void abandonedStreamingWriteKeepsThePreviousFile() throws Exception {
        Path file = writeOriginal();
        byte[] original = Files.readAllBytes(file);
        try (SafetensorsWriter.Builder b = SafetensorsWriter.open(file)) {
            b.declare("x", DType.F32, 2).declare("y", DType.F32, 2);
            b.write("x", Tensor.of(new float[]{5, 6}, 2));
            // a quantizer crashing here: the builder is closed without commit
        }
        assertOnlyOriginal(file, original);
    }

    @Test
    void incompleteCommitKeepsThePreviousFile() throws Exception {
        Path file = writeOriginal();
        byte[] original = Files.readAllBytes(file);
        try (SafetensorsWriter.Builder b = SafetensorsWriter.open(file)) {
            b.declare("x", DType.F32, 2).declare("y", DType.F32, 2);
            b.write("y", Tensor.of(new float[]{5, 6}, 2));
            IllegalStateException e = assertThrows(IllegalStateException.class, b::commit);
            assertTrue(e.getMessage().contains(file.toString()) && e.getMessage().contains("never written: [x]"), e.getMessage());
        }
        assertOnlyOriginal(file, original);
    }

    @Test
    void deviceTensorIsRefusedBeforeAnythingIsWritten() throws Exception {
        Path file = writeOriginal();
        byte[] original = Files.readAllBytes(file);
        Storage onGpu = new Storage() {
            @Override public Device device() { return Device.cuda(0); }
            @Override public long byteSize() { return 16; }
            @Override public void release() {}
        };
        Tensor gpu = new Tensor(onGpu, DType.F32, false, 4);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> SafetensorsWriter.write(file, Map.of("g", gpu), null));
        assertTrue(e.getMessage().contains("'g' is on cuda:0") && e.getMessage().contains("copy it to the host"), e.getMessage());
        assertOnlyOriginal(file, original);
    }

    @Test
    void successfulWriteReplacesTheFile() throws Exception {
        Path file = writeOriginal();
        SafetensorsWriter.write(file, Map.of("new", Tensor.of(new float[]{9}, 1)), null);
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            assertEquals(java.util.Set.of("new"), f.names());
            assertEquals(9f, f.tensor("new").getFloat(0));
        }
        try (var files = Files.list(dir)) {
            assertEquals(List.of(file), files.toList());
        }
    }

    @Test
    void rewritingAFileFromItsOwnMappingWorks() throws Exception {
        // Copy-through: tensors that are views of the file being replaced (e.g. re-saving a model
        // with new metadata). The old inode stays mapped until the reader closes.
        Path file = writeOriginal();
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            SafetensorsWriter.write(file, Map.of("old", f.tensor("old")), Map.of("v", "2"));
            assertArrayEquals(new float[]{1, 2, 3}, f.tensor("old").toFloatArray());
        }
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            assertEquals(Map.of("v", "2"), f.metadata());
            assertArrayEquals(new float[]{1, 2, 3}, f.tensor("old").toFloatArray());
        }
    }

    @Test
    void unwritableDirectoryGivesAClearError() throws Exception {
        Path blocker = Files.writeString(dir.resolve("not-a-dir"), "x");
        Path file = blocker.resolve("model.safetensors");
        var e = assertThrows(java.io.UncheckedIOException.class,
                () -> SafetensorsWriter.write(file, Map.of("a", Tensor.of(new float[]{1}, 1)), null));
        assertTrue(e.getMessage().contains("model.safetensors") && e.getMessage().contains("cannot create"), e.getMessage());
    }
}
