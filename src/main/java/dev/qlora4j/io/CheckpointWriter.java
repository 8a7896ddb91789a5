package dev.qlora4j.io;

import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.qlora4j.tensor.Tensor;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.regex.Pattern;

/**
 * Saves a checkpoint directory as transformers does: one {@code model.safetensors} when it fits
 * in a shard, else {@code model-00001-of-0000N.safetensors} ... plus
 * {@code model.safetensors.index.json} ({"metadata": {"total_size": bytes}, "weight_map": {name: file}}).
 * Every file is written atomically; shard files and the index left over from an earlier save
 * with a different layout are removed only after the new files are in place.
 */
public final class CheckpointWriter {
    static final Pattern SHARD_NAME = Pattern.compile("model-\\d{5}-of-\\d{5}\\.safetensors");

    private CheckpointWriter() {}

    /**
     * Splits {@code tensors} (in their map order) into shards of at most {@code maxShardBytes}
     * tensor bytes (a single larger tensor gets a shard of its own, as huggingface_hub does) and
     * writes them into {@code dir}. {@code metadata} (nullable) goes into every file's __metadata__.
     */
    public static void writeSharded(Path dir, Map<String, Tensor> tensors, long maxShardBytes, Map<String, String> metadata) {
        if (maxShardBytes <= 0) {
            throw new IllegalArgumentException(dir + ": maxShardBytes must be positive, got " + maxShardBytes);
        }
        List<Map<String, Tensor>> shards = plan(tensors, maxShardBytes);
        try {
            Files.createDirectories(dir);
        } catch (IOException e) {
            throw new UncheckedIOException(dir + ": cannot create the checkpoint directory (" + e + ")", e);
        }
        Set<String> keep = new HashSet<>();
        if (shards.size() <= 1) {
            SafetensorsWriter.write(dir.resolve(CheckpointReader.SINGLE_FILE), shards.isEmpty() ? Map.of() : shards.getFirst(), metadata);
            keep.add(CheckpointReader.SINGLE_FILE);
            // The index would win over model.safetensors on the next load: drop it first.
            deleteIfExists(dir.resolve(CheckpointReader.INDEX_FILE));
        } else {
            TreeMap<String, String> weightMap = new TreeMap<>();   // transformers writes it sorted
            long totalSize = 0;
            for (int i = 0; i < shards.size(); i++) {
                String name = String.format("model-%05d-of-%05d.safetensors", i + 1, shards.size());
                SafetensorsWriter.write(dir.resolve(name), shards.get(i), metadata);
                keep.add(name);
                for (Map.Entry<String, Tensor> e : shards.get(i).entrySet()) {
                    weightMap.put(e.getKey(), name);
                    totalSize += e.getValue().byteSize();
                }
            }
            writeIndex(dir.resolve(CheckpointReader.INDEX_FILE), totalSize, weightMap);
            keep.add(CheckpointReader.INDEX_FILE);
        }
        removeStaleShards(dir, keep);
    }

    /**
     * Greedy split in map order (huggingface_hub's rule: a new shard when the next tensor would
     * overflow; a tensor larger than a shard gets one of its own). Unlike huggingface_hub, shards
     * keep the map order, so layer order survives.
     */
    static List<Map<String, Tensor>> plan(Map<String, Tensor> tensors, long maxShardBytes) {
        List<Map<String, Tensor>> shards = new ArrayList<>();
        Map<String, Tensor> current = new LinkedHashMap<>();
        long currentBytes = 0;
        for (Map.Entry<String, Tensor> e : tensors.entrySet()) {
            long bytes = e.getValue().byteSize();
            if (!current.isEmpty() && (bytes > maxShardBytes || currentBytes + bytes > maxShardBytes)) {
                shards.add(current);
                current = new LinkedHashMap<>();
                currentBytes = 0;
            }
            current.put(e.getKey(), e.getValue());
            currentBytes += bytes;
        }
        if (!current.isEmpty()) shards.add(current);
        return shards;
    }

    private static void writeIndex(Path index, long totalSize, Map<String, String> weightMap) {
        ObjectNode root = SafetensorsHeader.JSON.createObjectNode();
        root.putObject("metadata").put("total_size", totalSize);
        ObjectNode wm = root.putObject("weight_map");
        weightMap.forEach(wm::put);
        byte[] json;
        try {
            json = (SafetensorsHeader.JSON.writerWithDefaultPrettyPrinter().writeValueAsString(root) + "\n")
                    .getBytes(StandardCharsets.UTF_8);
        } catch (IOException e) {
            throw new IllegalStateException("cannot serialize " + index, e);
        }
        try (AtomicFile out = AtomicFile.create(index)) {
            ByteBuffer buf = ByteBuffer.wrap(json);
            long pos = 0;
            while (buf.hasRemaining()) pos += out.channel().write(buf, pos);
            out.commit();
        } catch (IOException e) {
            throw new UncheckedIOException(index + ": write failed (" + e + ")", e);
        }
    }

    private static void removeStaleShards(Path dir, Set<String> keep) {
        try (DirectoryStream<Path> ds = Files.newDirectoryStream(dir)) {
            for (Path p : ds) {
                String n = p.getFileName().toString();
                if (!keep.contains(n) && SHARD_NAME.matcher(n).matches()) deleteIfExists(p);
            }
        } catch (IOException e) {
            throw new UncheckedIOException(dir + ": saved, but cannot list it to remove old shards (" + e + ")", e);
        }
        if (!keep.contains(CheckpointReader.SINGLE_FILE)) deleteIfExists(dir.resolve(CheckpointReader.SINGLE_FILE));
    }

    private static void deleteIfExists(Path p) {
        try {
            Files.deleteIfExists(p);
        } catch (IOException e) {
            throw new UncheckedIOException(p + ": cannot remove this file left from an earlier save (" + e
                    + "); delete it by hand so loaders do not pick it up", e);
        }
    }
}
