package dev.qlora4j.io;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.*;

/** Files assembled byte by byte from the format description, read and written. */
class SafetensorsHandBuiltTest {
    @TempDir Path dir;

    // a: F32[2] = {1.0, -2.0}; b: U8[3] = {1, 2, 3}; c: I64[] (scalar) = -1
    private static final byte[] DATA = {
            -1, -1, -1, -1, -1, -1, -1, -1,                                // c = -1L (all bits set)
            0x00, 0x00, (byte) 0x80, 0x3F, 0x00, 0x00, 0x00, (byte) 0xC0,  // a = 1.0f, -2.0f little-endian
            1, 2, 3                                                        // b
    };

    @Test
    void readsAFileBuiltByHand() throws Exception {
        String header = "{\"__metadata__\":{\"format\":\"pt\"},"
                + "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
                + "\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[16,19]},"
                + "\"c\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]}}   ";   // space padding is legal
        Path file = RawSafetensors.write(dir.resolve("hand.safetensors"), header, DATA);
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            assertEquals(java.util.List.of("a", "b", "c"), java.util.List.copyOf(f.names()));
            assertEquals(Map.of("format", "pt"), f.metadata());
            Tensor a = f.tensor("a");
            assertEquals(DType.F32, a.dtype());
            assertArrayEquals(new int[]{2}, a.shape());
            assertArrayEquals(new float[]{1.0f, -2.0f}, a.toFloatArray());
            Tensor b = f.tensor("b");
            assertEquals(DType.U8, b.dtype());
            assertArrayEquals(new int[]{1, 2, 3}, b.toIntArray());
            Tensor c = f.tensor("c");
            assertEquals(0, c.rank());
            assertEquals(1, c.numel());
            assertEquals(-1, c.getInt(0));
            assertEquals(new TensorInfo("b", DType.U8, new int[]{3}, 16, 19), f.info("b"));
        }
    }

    @Test
    void writerProducesTheReferenceBytesExactly() throws Exception {
        // The reference writer: metadata first, tensors by dtype size (largest first) then name,
        // compact JSON, padded with spaces to a multiple of 8 bytes.
        String json = "{\"__metadata__\":{\"format\":\"pt\"},"
                + "\"c\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]},"
                + "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
                + "\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[16,19]}}";
        int len = json.getBytes(StandardCharsets.UTF_8).length;
        String padded = json + " ".repeat((8 - len % 8) % 8);
        byte[] expected = RawSafetensors.bytes(padded, DATA);

        Map<String, Tensor> tensors = new LinkedHashMap<>();
        tensors.put("b", Tensor.fromFloats(new float[]{1, 2, 3}, DType.F32, 3).toDType(DType.U8));
        tensors.put("a", Tensor.of(new float[]{1.0f, -2.0f}, 2));
        Tensor c = Tensor.zeros(DType.I64);
        c.segment().set(Tensor.I64_LE, 0, -1L);
        tensors.put("c", c);
        Path file = dir.resolve("out.safetensors");
        SafetensorsWriter.write(file, tensors, Map.of("format", "pt"));

        assertArrayEquals(expected, Files.readAllBytes(file));
        assertEquals(0, (8 + padded.length()) % 8);
    }
}
