package dev.qlora4j.io;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Writes safetensors files atomically (temp file + fsync + rename; on failure the temp file is
 * deleted and any previous file is untouched).
 *
 * <p>Layout matches the reference writer: tensors ordered by dtype size (largest first) then
 * name, packed back to back, header padded with spaces so the data area starts 8-byte aligned;
 * every tensor is therefore aligned to its element size.
 *
 * <p>Two ways in: {@link #write} for tensors held in memory, or {@link #open} for a streaming
 * {@link Builder}: declare every entry first, then write each tensor's bytes in any order (a
 * quantizer can emit one layer at a time), then {@link Builder#commit()}.
 */
public final class SafetensorsWriter {
    /** Heap segments pass through a JDK temporary direct buffer on write: keep chunks small. */
    private static final long CHUNK = 16L << 20;

    private SafetensorsWriter() {}

    /** Writes host tensors and metadata (may be null or empty) to {@code file} atomically. */
    public static void write(Path file, Map<String, Tensor> tensors, Map<String, String> metadata) {
        for (Map.Entry<String, Tensor> e : tensors.entrySet()) {
            if (!e.getValue().device().isCpu()) {
                throw new IllegalArgumentException(file + ": tensor '" + e.getKey() + "' is on " + e.getValue().device()
                        + "; copy it to the host (Backend.toHost) before saving");
            }
        }
        try (Builder b = open(file)) {
            if (metadata != null) b.metadata(metadata);
            tensors.forEach((name, t) -> b.declare(name, t.dtype(), t.shape()));
            tensors.forEach(b::write);
            b.commit();
        }
    }

    /** Starts a streaming write of {@code file}; nothing is created on disk until the first write. */
    public static Builder open(Path file) {
        return new Builder(file);
    }

    /**
     * Streaming writer. Declare all entries ({@link #declare}) and metadata first; the first
     * {@link #write} fixes the layout and writes the header. Each declared tensor must be
     * written exactly once before {@link #commit()}. Closing without commit discards everything.
     * Not thread-safe.
     */
    public static final class Builder implements AutoCloseable {
        private final Path file;
        private final LinkedHashMap<String, int[]> shapes = new LinkedHashMap<>();
        private final LinkedHashMap<String, DType> dtypes = new LinkedHashMap<>();
        private final LinkedHashMap<String, String> metadata = new LinkedHashMap<>();
        private Map<String, TensorInfo> layout;   // fixed at the first write
        private long dataStart;                   // 8 + padded header length
        private final Set<String> written = new HashSet<>();
        private AtomicFile out;
        private ByteBuffer staging;               // lazily allocated, CHUNK bytes
        private MemorySegment stagingSegment;
        private boolean finished;

        private Builder(Path file) {
            this.file = file;
        }

        public Builder metadata(String key, String value) {
            checkDeclaring();
            metadata.put(key, value);
            return this;
        }

        public Builder metadata(Map<String, String> entries) {
            checkDeclaring();
            metadata.putAll(entries);
            return this;
        }

        /** Declares one tensor (shape: any rank, [] for a scalar; zero-size dims allowed). */
        public Builder declare(String name, DType dtype, int... shape) {
            checkDeclaring();
            if (name.equals(SafetensorsHeader.METADATA_KEY)) {
                throw new IllegalArgumentException(file + ": '" + name + "' is reserved for metadata; rename the tensor");
            }
            if (shapes.containsKey(name)) {
                throw new IllegalArgumentException(file + ": tensor '" + name + "' is declared twice");
            }
            Tensor.numel(shape);   // rejects negative dimensions
            shapes.put(name, shape.clone());
            dtypes.put(name, dtype);
            return this;
        }

        /** Writes a declared tensor from a host tensor with the declared dtype and shape. */
        public void write(String name, Tensor tensor) {
            TensorInfo info = layoutEntry(name);
            if (tensor.dtype() != info.dtype() || !Arrays.equals(tensor.shape(), info.shape())) {
                throw new IllegalArgumentException(file + ": tensor '" + name + "' was declared " + info.dtype()
                        + Arrays.toString(info.shape()) + " but is " + tensor.dtype() + Arrays.toString(tensor.shape()));
            }
            if (!tensor.device().isCpu()) {
                throw new IllegalArgumentException(file + ": tensor '" + name + "' is on " + tensor.device()
                        + "; copy it to the host (Backend.toHost) before saving");
            }
            writeBytes(info, tensor.segment().asSlice(0, info.byteSize()));
        }

        /** Writes a declared tensor's raw little-endian bytes (exactly numel x dtype size of them). */
        public void write(String name, MemorySegment bytes) {
            TensorInfo info = layoutEntry(name);
            if (bytes.byteSize() != info.byteSize()) {
                throw new IllegalArgumentException(file + ": tensor '" + name + "' " + info.dtype()
                        + Arrays.toString(info.shape()) + " needs " + info.byteSize() + " bytes, got " + bytes.byteSize());
            }
            writeBytes(info, bytes);
        }

        /** Checks every declared tensor was written, then fsyncs and renames into place. */
        public void commit() {
            if (finished) throw new IllegalStateException(file + ": writer already committed or closed");
            if (layout == null) startData();
            List<String> missing = new ArrayList<>();
            for (String n : layout.keySet()) if (!written.contains(n)) missing.add(n);
            if (!missing.isEmpty()) {
                throw new IllegalStateException(file + ": " + missing.size() + " declared tensor(s) never written: "
                        + (missing.size() > 10 ? missing.subList(0, 10) + " ..." : missing)
                        + "; write them or close the writer to discard the file");
            }
            finished = true;
            out.commit();
        }

        /** Discards the temp file unless {@link #commit()} succeeded. */
        @Override
        public void close() {
            finished = true;
            if (out != null) out.abort();
        }

        private void checkDeclaring() {
            if (finished) throw new IllegalStateException(file + ": writer already committed or closed");
            if (layout != null) {
                throw new IllegalStateException(file + ": declare all tensors and metadata before the first write");
            }
        }

        private TensorInfo layoutEntry(String name) {
            if (finished) throw new IllegalStateException(file + ": writer already committed or closed");
            if (layout == null) startData();
            TensorInfo info = layout.get(name);
            if (info == null) {
                throw new IllegalArgumentException(file + ": tensor '" + name + "' was not declared; "
                        + NameSuggestions.describe(name, layout.keySet()));
            }
            if (written.contains(name)) {
                throw new IllegalStateException(file + ": tensor '" + name + "' was already written");
            }
            return info;
        }

        /** Fixes offsets (reference order: larger dtype first, then name), writes length + header. */
        private void startData() {
            List<String> order = new ArrayList<>(shapes.keySet());
            order.sort(Comparator.comparingInt((String n) -> -dtypes.get(n).byteSize()).thenComparing(n -> n));
            List<TensorInfo> infos = new ArrayList<>(order.size());
            long offset = 0;
            for (String n : order) {
                long bytes = Math.multiplyExact(Tensor.numel(shapes.get(n)), dtypes.get(n).byteSize());
                infos.add(new TensorInfo(n, dtypes.get(n), shapes.get(n), offset, offset + bytes));
                offset += bytes;
            }
            byte[] header = SafetensorsHeader.serialize(infos, metadata);
            LinkedHashMap<String, TensorInfo> map = new LinkedHashMap<>();
            for (TensorInfo t : infos) map.put(t.name(), t);
            layout = map;
            dataStart = 8L + header.length;
            out = AtomicFile.create(file);
            ByteBuffer buf = ByteBuffer.allocate(8 + header.length).order(ByteOrder.LITTLE_ENDIAN);
            buf.putLong(header.length).put(header).flip();
            try {
                writeFully(out.channel(), buf, 0);
                // Sizing the file now means a commit with all tensors written has no gap to fill.
                if (offset > 0) writeFully(out.channel(), ByteBuffer.allocate(1), dataStart + offset - 1);
            } catch (IOException e) {
                throw failed(e);
            }
        }

        private void writeBytes(TensorInfo info, MemorySegment bytes) {
            try {
                FileChannel ch = out.channel();
                long n = bytes.byteSize();
                for (long pos = 0; pos < n; pos += CHUNK) {
                    long len = Math.min(CHUNK, n - pos);
                    writeFully(ch, chunk(bytes, pos, len), dataStart + info.begin() + pos);
                }
            } catch (IOException e) {
                throw failed(e);
            }
            written.add(info.name());
        }

        /**
         * Native memory (allocations, mapped files) is written in place; heap memory (float[],
         * short[] ... arrays cannot be viewed as a ByteBuffer) is copied through a staging buffer.
         */
        private ByteBuffer chunk(MemorySegment bytes, long pos, long len) {
            if (bytes.isNative()) return bytes.asSlice(pos, len).asByteBuffer();
            if (staging == null) {
                staging = ByteBuffer.allocateDirect((int) CHUNK);
                stagingSegment = MemorySegment.ofBuffer(staging);   // whole capacity, fixed once
            }
            MemorySegment.copy(bytes, pos, stagingSegment, 0, len);
            return staging.clear().limit((int) len);
        }

        private UncheckedIOException failed(IOException e) {
            close();
            return new UncheckedIOException(file + ": write failed (" + e
                    + "); nothing was written over the previous file", e);
        }
    }

    private static void writeFully(FileChannel ch, ByteBuffer buf, long position) throws IOException {
        while (buf.hasRemaining()) position += ch.write(buf, position);
    }
}
