package dev.qlora4j.io;

import com.fasterxml.jackson.core.JacksonException;
import com.fasterxml.jackson.databind.JsonNode;
import dev.qlora4j.tensor.Tensor;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;

/**
 * Reads a checkpoint the way transformers finds it: a directory with
 * {@code model.safetensors.index.json} (sharded), or {@code model.safetensors}, or exactly one
 * {@code *.safetensors}; or an explicit file (e.g. {@code adapter_model.safetensors}).
 * All shards are mapped and checked against the index at open; closing unmaps them all.
 */
public final class CheckpointReader implements AutoCloseable {
    public static final String INDEX_FILE = "model.safetensors.index.json";
    public static final String SINGLE_FILE = "model.safetensors";

    private final Path source;                        // the directory, index or file that was opened
    private final List<SafetensorsFile> files;        // in shard order
    private final Map<String, SafetensorsFile> owner; // tensor name -> its file, in index/header order
    private final Map<String, String> metadata;

    private CheckpointReader(Path source, List<SafetensorsFile> files, Map<String, SafetensorsFile> owner,
                             Map<String, String> metadata) {
        this.source = source;
        this.files = files;
        this.owner = owner;
        this.metadata = metadata;
    }

    /** Opens a checkpoint directory or a single .safetensors file (see the class comment). */
    public static CheckpointReader open(Path dirOrFile) {
        if (Files.isRegularFile(dirOrFile)) {
            return dirOrFile.getFileName().toString().endsWith(".json") ? openIndex(dirOrFile) : openSingle(dirOrFile);
        }
        if (!Files.isDirectory(dirOrFile)) {
            throw new UncheckedIOException(dirOrFile + ": no such file or directory; pass a model directory or a .safetensors file",
                    new java.nio.file.NoSuchFileException(dirOrFile.toString()));
        }
        Path index = dirOrFile.resolve(INDEX_FILE);
        if (Files.isRegularFile(index)) return openIndex(index);
        Path single = dirOrFile.resolve(SINGLE_FILE);
        if (Files.isRegularFile(single)) return openSingle(single);
        List<Path> candidates = new ArrayList<>();
        try (DirectoryStream<Path> ds = Files.newDirectoryStream(dirOrFile, "*.safetensors")) {
            for (Path p : ds) if (Files.isRegularFile(p)) candidates.add(p);
        } catch (IOException e) {
            throw new UncheckedIOException(dirOrFile + ": cannot list directory (" + e + ")", e);
        }
        if (candidates.size() == 1) return openSingle(candidates.getFirst());
        if (candidates.isEmpty()) {
            throw new ModelFormatException(dirOrFile + ": no " + INDEX_FILE + ", no " + SINGLE_FILE
                    + " and no other *.safetensors file; is this a model directory? (.bin checkpoints must be converted to safetensors)");
        }
        List<String> names = new ArrayList<>();
        for (Path p : candidates) names.add(p.getFileName().toString());
        Collections.sort(names);
        throw new ModelFormatException(dirOrFile + ": several .safetensors files " + names + " and no " + INDEX_FILE
                + "; pass the file to load explicitly");
    }

    private static CheckpointReader openSingle(Path file) {
        SafetensorsFile f = SafetensorsFile.open(file);
        LinkedHashMap<String, SafetensorsFile> owner = new LinkedHashMap<>();
        for (String n : f.names()) owner.put(n, f);
        return new CheckpointReader(file, List.of(f), Collections.unmodifiableMap(owner), f.metadata());
    }

    private static CheckpointReader openIndex(Path index) {
        JsonNode root;
        try {
            root = SafetensorsHeader.JSON.readTree(Files.readAllBytes(index));
        } catch (JacksonException e) {
            throw ModelFormatException.of(index, "not valid JSON (" + e.getOriginalMessage() + "); re-download or re-save the checkpoint", e);
        } catch (IOException e) {
            throw new UncheckedIOException(index + ": cannot read (" + e + ")", e);
        }
        JsonNode weightMap = root == null ? null : root.get("weight_map");
        if (weightMap == null || !weightMap.isObject()) {
            throw ModelFormatException.of(index, "has no \"weight_map\" object; the index is corrupt, re-download or re-save the checkpoint");
        }
        Map<String, String> metadata = new LinkedHashMap<>();
        JsonNode meta = root.get("metadata");
        if (meta != null && meta.isObject()) {
            for (Map.Entry<String, JsonNode> e : meta.properties()) {
                metadata.put(e.getKey(), e.getValue().isTextual() ? e.getValue().textValue() : e.getValue().toString());
            }
        }
        Path dir = index.toAbsolutePath().getParent();
        LinkedHashMap<String, String> shardOf = new LinkedHashMap<>();
        Set<String> missing = new TreeSet<>();
        LinkedHashMap<String, Path> shardPaths = new LinkedHashMap<>();
        for (Map.Entry<String, JsonNode> e : weightMap.properties()) {
            if (!e.getValue().isTextual()) {
                throw ModelFormatException.of(index, "weight_map entry '" + e.getKey() + "' is not a file name; the index is corrupt");
            }
            String shard = e.getValue().textValue();
            if (!shardPaths.containsKey(shard)) {
                Path p = dir.resolve(shard).normalize();
                if (!p.startsWith(dir)) {
                    throw ModelFormatException.of(index, "shard '" + shard + "' points outside the checkpoint directory; refusing to read it");
                }
                if (!Files.isRegularFile(p)) missing.add(shard);
                shardPaths.put(shard, p);
            }
            shardOf.put(e.getKey(), shard);
        }
        if (!missing.isEmpty()) {
            throw ModelFormatException.of(index, "shard file(s) " + missing + " listed in weight_map are missing from " + dir
                    + "; the download is incomplete, fetch the missing files");
        }
        List<SafetensorsFile> opened = new ArrayList<>();
        try {
            Map<String, SafetensorsFile> byShard = new LinkedHashMap<>();
            for (Map.Entry<String, Path> s : shardPaths.entrySet()) {
                SafetensorsFile f = SafetensorsFile.open(s.getValue());
                opened.add(f);
                byShard.put(s.getKey(), f);
            }
            LinkedHashMap<String, SafetensorsFile> owner = new LinkedHashMap<>();
            for (Map.Entry<String, String> e : shardOf.entrySet()) {
                SafetensorsFile f = byShard.get(e.getValue());
                if (!f.has(e.getKey())) {
                    throw ModelFormatException.of(index, "weight_map puts tensor '" + e.getKey() + "' in " + e.getValue()
                            + " but that shard has no such tensor (" + NameSuggestions.describe(e.getKey(), f.names())
                            + "); the index and shards do not match, re-download the checkpoint");
                }
                owner.put(e.getKey(), f);
            }
            return new CheckpointReader(index, List.copyOf(opened), Collections.unmodifiableMap(owner),
                    Collections.unmodifiableMap(metadata));
        } catch (RuntimeException | Error e) {
            for (SafetensorsFile f : opened) f.close();
            throw e;
        }
    }

    /** What was opened: the single file or the index file. */
    public Path path() { return source; }

    /** The mapped files (one, or every shard in index order). */
    public List<SafetensorsFile> files() { return files; }

    /** Tensor names in index (or header) order. */
    public Set<String> names() { return owner.keySet(); }

    public boolean has(String name) { return owner.containsKey(name); }

    /** The index's "metadata" (values as text, e.g. total_size) or the single file's __metadata__. */
    public Map<String, String> metadata() { return metadata; }

    public TensorInfo info(String name) { return fileOf(name).info(name); }

    /** A zero-copy view into the mapped shard (valid until {@link #close()}). */
    public Tensor tensor(String name) { return fileOf(name).tensor(name); }

    private SafetensorsFile fileOf(String name) {
        SafetensorsFile f = owner.get(name);
        if (f == null) {
            throw ModelFormatException.of(source, "no tensor '" + name + "' in the checkpoint; "
                    + NameSuggestions.describe(name, owner.keySet()));
        }
        return f;
    }

    /** Same as {@link CheckpointWriter#writeSharded}. */
    public static void writeSharded(Path dir, Map<String, Tensor> tensors, long maxShardBytes, Map<String, String> metadata) {
        CheckpointWriter.writeSharded(dir, tensors, maxShardBytes, metadata);
    }

    /** Unmaps every file. Idempotent. */
    @Override
    public void close() {
        for (SafetensorsFile f : files) f.close();
    }

    @Override
    public String toString() {
        return "CheckpointReader(" + source + ", " + files.size() + " file(s), " + owner.size() + " tensors)";
    }
}
