package dev.qlora4j.train;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.core.type.TypeReference;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.ThreadLocalRandom;

/** JSON in and out for the trainer's files, each written to a temp file and renamed into place. */
final class TrainJson {
    static final ObjectMapper MAPPER = new ObjectMapper();
    private static final ObjectMapper PRETTY = new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT);
    /** transformers writes trainer_state.json with json.dumps(indent=2, sort_keys=True). */
    private static final ObjectMapper SORTED = new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT)
            .enable(SerializationFeature.ORDER_MAP_ENTRIES_BY_KEYS);

    private TrainJson() {}

    static String line(Object o) {
        try {
            return MAPPER.writeValueAsString(o);
        } catch (JsonProcessingException e) {
            throw new IllegalStateException("cannot write JSON: " + e.getMessage(), e);
        }
    }

    static void write(Path file, Object o) {
        writeWith(PRETTY, file, o);
    }

    static void writeSorted(Path file, Object o) {
        writeWith(SORTED, file, o);
    }

    private static void writeWith(ObjectMapper m, Path file, Object o) {
        try {
            writeAtomically(file, (m.writeValueAsString(o) + "\n").getBytes(StandardCharsets.UTF_8));
        } catch (JsonProcessingException e) {
            throw new IllegalStateException("cannot write JSON to " + file + ": " + e.getMessage(), e);
        }
    }

    static Map<String, Object> read(Path file) {
        try {
            return MAPPER.readValue(file.toFile(), new TypeReference<LinkedHashMap<String, Object>>() { });
        } catch (IOException e) {
            throw new UncheckedIOException(file + " cannot be read as JSON (" + e.getMessage().lines().findFirst().orElse("")
                    + "); the checkpoint is damaged: resume from another checkpoint-N folder", e);
        }
    }

    /** Temp file in the same folder, fsync, rename over the target. */
    static void writeAtomically(Path file, byte[] bytes) {
        Path abs = file.toAbsolutePath();
        Path tmp = abs.resolveSibling("." + abs.getFileName() + "." + Long.toHexString(ThreadLocalRandom.current().nextLong()) + ".tmp");
        try {
            Files.createDirectories(abs.getParent());
            try (var ch = java.nio.channels.FileChannel.open(tmp, java.nio.file.StandardOpenOption.CREATE_NEW,
                    java.nio.file.StandardOpenOption.WRITE)) {
                ch.write(java.nio.ByteBuffer.wrap(bytes));
                ch.force(true);
            }
            try {
                Files.move(tmp, abs, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
            } catch (AtomicMoveNotSupportedException e) {
                Files.move(tmp, abs, StandardCopyOption.REPLACE_EXISTING);
            }
        } catch (IOException e) {
            try {
                Files.deleteIfExists(tmp);
            } catch (IOException ignored) {
                // the temp file is hidden and harmless; the target is unchanged
            }
            throw new UncheckedIOException("cannot write " + file + " (" + e + "); check that the folder is writable and the disk not full", e);
        }
    }

    static long asLong(Map<String, Object> m, String key, Path file) {
        Object v = m.get(key);
        if (!(v instanceof Number n)) throw new IllegalArgumentException(file + ": \"" + key + "\" is missing or not a number; the checkpoint is damaged");
        return n.longValue();
    }

    static double asDouble(Map<String, Object> m, String key, Path file) {
        Object v = m.get(key);
        if (!(v instanceof Number n)) throw new IllegalArgumentException(file + ": \"" + key + "\" is missing or not a number; the checkpoint is damaged");
        return n.doubleValue();
    }
}
