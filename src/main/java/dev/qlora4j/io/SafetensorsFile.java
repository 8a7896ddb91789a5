package dev.qlora4j.io;

import dev.qlora4j.tensor.Tensor;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.Collections;
import java.util.Map;
import java.util.Set;

/**
 * A memory-mapped, validated safetensors file. Tensors are zero-copy views: slices of the
 * mapping, valid until {@link #close()} unmaps the file (closes the shared arena that owns it;
 * touching a view afterwards throws IllegalStateException instead of crashing).
 *
 * <p>Thread-safe for reads: the mapping lives in a shared arena.
 */
public final class SafetensorsFile implements AutoCloseable {
    private static final ValueLayout.OfLong U64_LE = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    private final Path path;
    private final Arena arena;
    private final MemorySegment data;          // the data area: the mapping after 8 + header bytes
    private final Map<String, TensorInfo> entries;
    private final Map<String, String> metadata;

    private SafetensorsFile(Path path, Arena arena, MemorySegment data,
                            Map<String, TensorInfo> entries, Map<String, String> metadata) {
        this.path = path;
        this.arena = arena;
        this.data = data;
        this.entries = entries;
        this.metadata = metadata;
    }

    /**
     * Maps and validates {@code file}. Throws {@link ModelFormatException} when the file is not a
     * well-formed safetensors file and UncheckedIOException when it cannot be read.
     */
    public static SafetensorsFile open(Path file) {
        Arena arena = Arena.ofShared();
        try {
            MemorySegment all;
            try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ)) {
                // The mapping outlives the channel: it is owned by the arena.
                all = ch.map(FileChannel.MapMode.READ_ONLY, 0, ch.size(), arena);
            } catch (NoSuchFileException e) {
                throw new UncheckedIOException(file + ": no such file; check the path", e);
            } catch (IOException e) {
                throw new UncheckedIOException(file + ": cannot open (" + e + ")", e);
            }
            long size = all.byteSize();
            if (size < 8) {
                throw ModelFormatException.of(file, "file is " + size
                        + " bytes, too short for the 8-byte header length: truncated or not a safetensors file; re-download or re-save it");
            }
            long headerLen = all.get(U64_LE, 0);   // u64: negative here means >= 2^63
            if (headerLen < 0 || headerLen > SafetensorsHeader.MAX_HEADER_BYTES) {
                throw ModelFormatException.of(file, "header length " + Long.toUnsignedString(headerLen)
                        + " exceeds the " + SafetensorsHeader.MAX_HEADER_BYTES
                        + "-byte limit: the file is corrupt or not a safetensors file");
            }
            if (headerLen > size - 8) {
                throw ModelFormatException.of(file, "header length " + headerLen + " is larger than the "
                        + (size - 8) + " bytes after the length field: the file is truncated; re-download or re-save it");
            }
            byte[] json = all.asSlice(8, headerLen).toArray(ValueLayout.JAVA_BYTE);
            MemorySegment data = all.asSlice(8 + headerLen);
            SafetensorsHeader.Parsed parsed = SafetensorsHeader.parse(file, json, data.byteSize());
            return new SafetensorsFile(file, arena, data,
                    Collections.unmodifiableMap(parsed.entries()), parsed.metadata());
        } catch (RuntimeException | Error e) {
            arena.close();
            throw e;
        }
    }

    public Path path() { return path; }

    /** Tensor names in header order. */
    public Set<String> names() { return entries.keySet(); }

    public boolean has(String name) { return entries.containsKey(name); }

    /** The header's "__metadata__" (empty when absent). */
    public Map<String, String> metadata() { return metadata; }

    /** All header entries in header order. */
    public Map<String, TensorInfo> infos() { return entries; }

    public TensorInfo info(String name) {
        TensorInfo t = entries.get(name);
        if (t == null) {
            throw ModelFormatException.of(path, "no tensor '" + name + "'; "
                    + NameSuggestions.describe(name, entries.keySet()));
        }
        return t;
    }

    /** A zero-copy view of the tensor's bytes in the mapping (valid until this file is closed). */
    public Tensor tensor(String name) {
        TensorInfo t = info(name);
        if (!arena.scope().isAlive()) {
            throw new IllegalStateException(path + ": file is closed; reopen it to read tensor '" + name + "'");
        }
        return Tensor.view(data.asSlice(t.begin(), t.byteSize()), t.dtype(), t.shape());
    }

    /** Unmaps the file; tensors returned earlier become invalid. Idempotent. */
    @Override
    public synchronized void close() {
        if (arena.scope().isAlive()) arena.close();
    }

    @Override
    public String toString() {
        return "SafetensorsFile(" + path + ", " + entries.size() + " tensors)";
    }
}
