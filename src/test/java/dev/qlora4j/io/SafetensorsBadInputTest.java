package dev.qlora4j.io;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;

import static org.junit.jupiter.api.Assertions.*;

/** Every malformed file is refused with a message that names the file and the problem. */
class SafetensorsBadInputTest {
    @TempDir Path dir;

    private static final String GOOD_HEADER = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
            + "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[16,20]}}";

    private ModelFormatException refused(byte[] bytes, String... expectedFragments) throws Exception {
        Path file = Files.write(dir.resolve("bad.safetensors"), bytes);
        ModelFormatException e = assertThrows(ModelFormatException.class, () -> SafetensorsFile.open(file).close());
        assertTrue(e.getMessage().startsWith(file.toString()), "message names the file: " + e.getMessage());
        for (String f : expectedFragments) {
            assertTrue(e.getMessage().contains(f), "expected '" + f + "' in: " + e.getMessage());
        }
        return e;
    }

    private ModelFormatException refused(String header, int dataBytes, String... expectedFragments) throws Exception {
        return refused(RawSafetensors.bytes(header, new byte[dataBytes]), expectedFragments);
    }

    private static String one(String dtype, String shape, String offsets) {
        return "{\"t\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":" + offsets + "}}";
    }

    @Test
    void goodBaselineOpens() throws Exception {
        Path file = Files.write(dir.resolve("good.safetensors"), RawSafetensors.bytes(GOOD_HEADER, new byte[20]));
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            assertEquals(2, f.names().size());
        }
    }

    @Test
    void truncatedInTheData() throws Exception {
        byte[] full = RawSafetensors.bytes(GOOD_HEADER, new byte[20]);
        refused(Arrays.copyOf(full, full.length - 3), "tensor 'b'", "past the end of the data area", "truncated");
    }

    @Test
    void truncatedInTheHeader() throws Exception {
        byte[] full = RawSafetensors.bytes(GOOD_HEADER, new byte[20]);
        refused(Arrays.copyOf(full, 8 + GOOD_HEADER.length() / 2), "header length", "truncated");
    }

    @Test
    void truncatedInTheLengthField() throws Exception {
        refused(new byte[]{1, 2, 3}, "3 bytes", "too short");
        refused(new byte[0], "0 bytes", "too short");
    }

    @Test
    void headerLengthLargerThanTheFile() throws Exception {
        refused(RawSafetensors.bytes(1000, "{}", new byte[0]), "header length 1000", "truncated");
    }

    @Test
    void absurdHeaderLength() throws Exception {
        refused(RawSafetensors.bytes(-1L, "{}", new byte[0]), "header length 18446744073709551615", "limit");
        refused(RawSafetensors.bytes(200_000_000L, "{}", new byte[0]), "header length 200000000", "limit");
    }

    @Test
    void malformedJson() throws Exception {
        refused(GOOD_HEADER.substring(0, GOOD_HEADER.length() - 1) + ",", 20, "not valid JSON");
        refused("{\"a\": }", 0, "not valid JSON");
        refused(GOOD_HEADER + " trailing", 20, "not valid JSON");
        refused("[1,2]", 0, "must be a JSON object");
        refused("", 0, "must be a JSON object but is empty");
        byte[] badUtf8 = RawSafetensors.bytes("{\"\u00e9\":1}", new byte[0]);
        badUtf8[10] = (byte) 0xFF;   // inside the key: invalid UTF-8
        refused(badUtf8, "not valid JSON");
    }

    @Test
    void duplicateTensorName() throws Exception {
        refused("{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                + "\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2, "not valid JSON", "Duplicate");
    }

    @Test
    void offsetsOutOfBounds() throws Exception {
        refused(one("F32", "[2]", "[4,12]"), 8, "tensor 't'", "[4, 12]", "past the end of the data area (8 bytes)");
    }

    @Test
    void offsetsBackwards() throws Exception {
        refused(one("F32", "[2]", "[8,0]"), 8, "tensor 't'", "end before begin");
    }

    @Test
    void negativeOrMalformedOffsets() throws Exception {
        refused(one("F32", "[2]", "[-8,0]"), 8, "tensor 't'", "data_offsets", "non-negative");
        refused(one("F32", "[2]", "[0]"), 8, "tensor 't'", "expected [begin, end]");
        refused(one("F32", "[2]", "[0,\"8\"]"), 8, "tensor 't'", "expected [begin, end]");
    }

    @Test
    void overlappingTensors() throws Exception {
        refused("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                + "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "'x'", "'y'", "overlap");
    }

    @Test
    void byteCountDoesNotMatchShape() throws Exception {
        refused(one("F32", "[3]", "[0,8]"), 12, "tensor 't'", "F32[3] = 12 bytes", "hold 8 bytes");
        refused(one("BF16", "[2,2]", "[0,16]"), 16, "tensor 't'", "BF16[2, 2] = 8 bytes", "hold 16 bytes");
    }

    @Test
    void badShapes() throws Exception {
        refused(one("F32", "[-1]", "[0,0]"), 0, "tensor 't'", "shape [-1]", "dimensions must be integers");
        refused(one("F32", "[1.5]", "[0,4]"), 4, "tensor 't'", "dimensions must be integers");
        refused(one("F32", "[4294967296]", "[0,4]"), 4, "tensor 't'", "dimensions must be integers");
        refused(one("U8", "[65536,65536,65536,65536]", "[0,4]"), 4, "tensor 't'", "overflows");
        refused("{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "tensor 't'", "no array \"shape\"");
    }

    @Test
    void unknownDtypeListsTheSupportedOnes() throws Exception {
        ModelFormatException e = refused(one("F8_E4M3", "[2]", "[0,2]"), 2, "tensor 't'", "'F8_E4M3'", "supported");
        for (String dt : new String[]{"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"}) {
            assertTrue(e.getMessage().contains(dt), dt + " listed in: " + e.getMessage());
        }
        refused("{\"t\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "tensor 't'", "no string \"dtype\"");
    }

    @Test
    void badMetadata() throws Exception {
        refused("{\"__metadata__\":{\"n\":3}}", 0, "__metadata__", "'n'", "must be a string");
        refused("{\"__metadata__\":[]}", 0, "__metadata__", "must be an object");
    }

    @Test
    void entryThatIsNotAnObject() throws Exception {
        refused("{\"t\":5}", 0, "tensor 't'", "must be an object");
    }

    @Test
    void missingTensorNameSuggestsCloseNames() throws Exception {
        String header = "{\"model.layers.0.mlp.up_proj.weight\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                + "\"model.layers.0.mlp.down_proj.weight\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]},"
                + "\"lm_head.weight\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]}}";
        Path file = Files.write(dir.resolve("m.safetensors"), RawSafetensors.bytes(header, new byte[3]));
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            ModelFormatException e = assertThrows(ModelFormatException.class, () -> f.tensor("model.layers.0.mlp.up_proj.wieght"));
            String m = e.getMessage();
            assertTrue(m.startsWith(file.toString()) && m.contains("no tensor 'model.layers.0.mlp.up_proj.wieght'"), m);
            assertTrue(m.contains("close names: model.layers.0.mlp.up_proj.weight, "), m);
            assertTrue(m.contains("(3 tensors in all)"), m);
            assertThrows(ModelFormatException.class, () -> f.info("nope"));
        }
    }

    @Test
    void missingFile() {
        Path file = dir.resolve("absent.safetensors");
        UncheckedIOException e = assertThrows(UncheckedIOException.class, () -> SafetensorsFile.open(file));
        assertTrue(e.getMessage().contains(file.toString()) && e.getMessage().contains("no such file"), e.getMessage());
    }

    @Test
    void readAfterCloseIsRefused() throws Exception {
        Path file = Files.write(dir.resolve("c.safetensors"), RawSafetensors.bytes(GOOD_HEADER, new byte[20]));
        SafetensorsFile f = SafetensorsFile.open(file);
        f.close();
        f.close();   // idempotent
        IllegalStateException e = assertThrows(IllegalStateException.class, () -> f.tensor("a"));
        assertTrue(e.getMessage().contains("closed"), e.getMessage());
    }

    @Test
    void headerIsUtf8() throws Exception {
        String header = "{\"w\u00e9ight\u4e2d\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
        Path file = Files.write(dir.resolve("u.safetensors"), RawSafetensors.bytes(header, new byte[]{9}));
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            assertEquals(9, f.tensor("w\u00e9ight\u4e2d").getInt(0));
        }
        assertEquals(header.getBytes(StandardCharsets.UTF_8).length, RawSafetensors.bytes(header, new byte[0]).length - 8);
    }
}
