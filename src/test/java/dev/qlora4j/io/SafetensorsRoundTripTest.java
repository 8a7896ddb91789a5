package dev.qlora4j.io;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.*;

class SafetensorsRoundTripTest {
    @TempDir Path dir;

    /** Random bytes of the tensor's size: covers NaN payloads, subnormals, negative zero... bit for bit. */
    private static Tensor randomTensor(DType dtype, Random rnd, int... shape) {
        Tensor t = Tensor.zeros(dtype, shape);
        byte[] b = new byte[(int) t.byteSize()];
        rnd.nextBytes(b);
        if (dtype == DType.BOOL) for (int i = 0; i < b.length; i++) b[i] &= 1;
        MemorySegment.copy(MemorySegment.ofArray(b), 0, t.segment(), 0, b.length);
        return t;
    }

    private static byte[] bytesOf(Tensor t) {
        return t.segment().asSlice(0, t.byteSize()).toArray(ValueLayout.JAVA_BYTE);
    }

    @Test
    void everyDtypeAndShapeSurvivesBitExactly() {
        Random rnd = new Random(42);
        int[][] shapes = {{}, {0}, {3, 0, 2}, {7}, {3, 5}, {2, 3, 4}};
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        for (DType dt : DType.values()) {
            for (int s = 0; s < shapes.length; s++) {
                tensors.put(dt.name().toLowerCase() + ".s" + s, randomTensor(dt, rnd, shapes[s]));
            }
        }
        Path file = dir.resolve("all.safetensors");
        SafetensorsWriter.write(file, tensors, Map.of("format", "pt"));

        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            assertEquals(tensors.keySet(), f.names());
            for (Map.Entry<String, Tensor> e : tensors.entrySet()) {
                Tensor back = f.tensor(e.getKey());
                assertEquals(e.getValue().dtype(), back.dtype(), e.getKey());
                assertArrayEquals(e.getValue().shape(), back.shape(), e.getKey());
                assertArrayEquals(bytesOf(e.getValue()), bytesOf(back), e.getKey());
                TensorInfo info = f.info(e.getKey());
                assertEquals(e.getValue().byteSize(), info.end() - info.begin());
                // The reference writer's order keeps every tensor aligned to its element size.
                assertEquals(0, info.begin() % e.getValue().dtype().byteSize(), e.getKey());
            }
            assertEquals(Map.of("format", "pt"), f.metadata());
            assertEquals(file, f.path());
        }
    }

    @Test
    void valuesReadBackAsNumbers() {
        Map<String, Tensor> m = new LinkedHashMap<>();
        m.put("w", Tensor.of(new float[]{1.5f, -2f, 0f, 3.25f, Float.MIN_VALUE, -0f}, 2, 3));
        m.put("h", Tensor.fromFloats(new float[]{1f, -0.5f, 65504f}, DType.F16, 3));
        m.put("b", Tensor.fromFloats(new float[]{1f, -0.5f, 3.0e38f}, DType.BF16, 3));
        m.put("ids", Tensor.ofInts(new int[]{-7, 0, Integer.MAX_VALUE}, 3));
        Path file = dir.resolve("v.safetensors");
        SafetensorsWriter.write(file, m, null);
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            assertArrayEquals(new float[]{1.5f, -2f, 0f, 3.25f, Float.MIN_VALUE, -0f}, f.tensor("w").toFloatArray());
            assertEquals(Float.floatToRawIntBits(-0f), Float.floatToRawIntBits(f.tensor("w").getFloat(5)));
            assertArrayEquals(new float[]{1f, -0.5f, 65504f}, f.tensor("h").toFloatArray());
            assertArrayEquals(m.get("b").toFloatArray(), f.tensor("b").toFloatArray());
            assertArrayEquals(new int[]{-7, 0, Integer.MAX_VALUE}, f.tensor("ids").toIntArray());
            assertTrue(f.metadata().isEmpty());
        }
    }

    @Test
    void tensorsAreZeroCopySlicesOfTheMapping() throws Exception {
        Map<String, Tensor> m = new LinkedHashMap<>();
        m.put("a", Tensor.of(new float[]{1, 2, 3, 4}, 4));
        m.put("b", Tensor.of(new float[]{5, 6}, 2));
        m.put("c", Tensor.fromFloats(new float[]{7, 8, 9}, DType.BF16, 3));
        Path file = dir.resolve("z.safetensors");
        SafetensorsWriter.write(file, m, null);
        long headerLen = ByteBuffer.wrap(Files.readAllBytes(file), 0, 8).order(ByteOrder.LITTLE_ENDIAN).getLong();

        Tensor a, c;
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            a = f.tensor("a");
            Tensor b = f.tensor("b");
            c = f.tensor("c");
            for (Tensor t : List.of(a, b, c)) {
                MemorySegment s = t.segment();
                assertTrue(s.isNative(), "native, not a heap copy");
                assertTrue(s.isReadOnly(), "read-only view of a read-only mapping");
                assertDoesNotThrow(s::isLoaded, "isLoaded() works only on mapped segments");
                assertFalse(t.isOwner(), "views never free the mapping");
                assertEquals(t.byteSize(), s.byteSize());
            }
            // Addresses differ exactly by the header's offsets: all three are slices of one mapping.
            TensorInfo ia = f.info("a"), ib = f.info("b"), ic = f.info("c");
            assertEquals(ib.begin() - ia.begin(), b.segment().address() - a.segment().address());
            assertEquals(ic.begin() - ia.begin(), c.segment().address() - a.segment().address());
            // a is the first tensor: the mapping starts 8 + header bytes before it (data area 8-aligned).
            assertEquals(0, ia.begin());
            assertEquals(0, (8 + headerLen) % 8);
            assertEquals(4f, a.getFloat(3));
        }
        // Closing the file unmaps it: the views fail cleanly instead of reading freed memory.
        assertThrows(IllegalStateException.class, () -> a.getFloat(0));
        assertThrows(IllegalStateException.class, () -> c.getFloat(0));
    }

    @Test
    void streamingBuilderAcceptsWritesInAnyOrder() throws Exception {
        Path file = dir.resolve("stream.safetensors");
        Random rnd = new Random(7);
        Tensor big = randomTensor(DType.F32, rnd, 64, 33);
        Tensor small = randomTensor(DType.U8, rnd, 5);
        Tensor mid = randomTensor(DType.BF16, rnd, 3, 3);
        try (SafetensorsWriter.Builder b = SafetensorsWriter.open(file)) {
            b.metadata("format", "pt").metadata(Map.of("quant", "nf4"));
            b.declare("layers.0.w", DType.F32, 64, 33).declare("layers.0.q", DType.U8, 5).declare("norm", DType.BF16, 3, 3);
            assertFalse(Files.exists(file));
            b.write("norm", mid);
            b.write("layers.0.q", small.segment());           // raw bytes path
            assertThrows(IllegalStateException.class, () -> b.declare("late", DType.F32, 1));
            b.write("layers.0.w", big);
            b.commit();
        }
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            assertArrayEquals(bytesOf(big), bytesOf(f.tensor("layers.0.w")));
            assertArrayEquals(bytesOf(small), bytesOf(f.tensor("layers.0.q")));
            assertArrayEquals(bytesOf(mid), bytesOf(f.tensor("norm")));
            assertEquals(Map.of("format", "pt", "quant", "nf4"), f.metadata());
        }
        try (var files = Files.list(dir)) {
            assertEquals(List.of(file), files.toList());
        }
    }

    @Test
    void builderRejectsMisuseWithClearMessages() {
        Path file = dir.resolve("bad.safetensors");
        try (SafetensorsWriter.Builder b = SafetensorsWriter.open(file)) {
            b.declare("a", DType.F32, 2);
            var dup = assertThrows(IllegalArgumentException.class, () -> b.declare("a", DType.F32, 2));
            assertTrue(dup.getMessage().contains("declared twice"), dup.getMessage());
            assertThrows(IllegalArgumentException.class, () -> b.declare("__metadata__", DType.F32, 2));
            var wrongShape = assertThrows(IllegalArgumentException.class, () -> b.write("a", Tensor.of(new float[3], 3)));
            assertTrue(wrongShape.getMessage().contains("declared F32[2]"), wrongShape.getMessage());
            var wrongSize = assertThrows(IllegalArgumentException.class, () -> b.write("a", MemorySegment.ofArray(new byte[7])));
            assertTrue(wrongSize.getMessage().contains("needs 8 bytes, got 7"), wrongSize.getMessage());
            var undeclared = assertThrows(IllegalArgumentException.class, () -> b.write("aa", Tensor.of(new float[2], 2)));
            assertTrue(undeclared.getMessage().contains("not declared") && undeclared.getMessage().contains("close names: a"),
                    undeclared.getMessage());
            var missing = assertThrows(IllegalStateException.class, b::commit);
            assertTrue(missing.getMessage().contains("never written: [a]"), missing.getMessage());
            b.write("a", Tensor.of(new float[]{1, 2}, 2));
            var twice = assertThrows(IllegalStateException.class, () -> b.write("a", Tensor.of(new float[]{1, 2}, 2)));
            assertTrue(twice.getMessage().contains("already written"), twice.getMessage());
        }
        assertFalse(Files.exists(file), "closing without commit writes nothing");
    }

    @Test
    void emptyFileRoundTrips() {
        Path file = dir.resolve("empty.safetensors");
        SafetensorsWriter.write(file, Map.of(), Map.of("k", "v"));
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            assertTrue(f.names().isEmpty());
            assertEquals(Map.of("k", "v"), f.metadata());
        }
    }

    @Test
    void headerOrderIsKeptAsFileOrder() throws Exception {
        // Hand-made header with names out of alphabetical and offset order: names() follows the header.
        byte[] data = new byte[12];
        String header = "{\"z\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[8,12]},"
                + "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
        Path file = RawSafetensors.write(dir.resolve("order.safetensors"), header, data);
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            assertEquals(List.of("z", "a"), new ArrayList<>(f.names()));
        }
    }
}
