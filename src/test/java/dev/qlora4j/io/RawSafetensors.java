package dev.qlora4j.io;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;

/** Builds safetensors bytes by hand, straight from the format description, for tests. */
final class RawSafetensors {
    private RawSafetensors() {}

    /** u64 little-endian header length, the header bytes as given, then the data bytes. */
    static byte[] bytes(long declaredHeaderLength, String header, byte[] data) {
        byte[] h = header.getBytes(StandardCharsets.UTF_8);
        return ByteBuffer.allocate(8 + h.length + data.length).order(ByteOrder.LITTLE_ENDIAN)
                .putLong(declaredHeaderLength).put(h).put(data).array();
    }

    static byte[] bytes(String header, byte[] data) {
        return bytes(header.getBytes(StandardCharsets.UTF_8).length, header, data);
    }

    static Path write(Path file, String header, byte[] data) throws IOException {
        return Files.write(file, bytes(header, data));
    }
}
