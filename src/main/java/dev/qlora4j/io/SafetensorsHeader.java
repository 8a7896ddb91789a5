package dev.qlora4j.io;

import com.fasterxml.jackson.core.JacksonException;
import com.fasterxml.jackson.core.StreamReadFeature;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.json.JsonMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.qlora4j.tensor.DType;

import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.Collections;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The JSON header of a safetensors file: parsing with full validation against the data area,
 * and serialization (padded with spaces so the data area starts 8-byte aligned, as the
 * reference implementation does).
 *
 * <p>Layout: u64 little-endian N, then N bytes of UTF-8 JSON
 * {@code {"__metadata__": {str: str}, NAME: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...}},
 * then the data area; offsets are relative to the data area.
 */
final class SafetensorsHeader {
    /** The reference implementation refuses headers above 100 MB: no real model needs more. */
    static final long MAX_HEADER_BYTES = 100_000_000L;
    static final String METADATA_KEY = "__metadata__";
    /** Data area alignment the reference writer produces (and we keep). */
    static final int ALIGNMENT = 8;

    static final JsonMapper JSON = JsonMapper.builder()
            .enable(StreamReadFeature.STRICT_DUPLICATE_DETECTION)
            .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS)
            .build();

    private static final String SUPPORTED = Arrays.toString(DType.values());

    /** Parsed header: entries in file (header) order, and the free-form metadata. */
    record Parsed(LinkedHashMap<String, TensorInfo> entries, Map<String, String> metadata) {}

    private SafetensorsHeader() {}

    /**
     * Parses and validates a header against a data area of {@code dataSize} bytes: every entry
     * well-formed, known dtype, non-negative shape, byte count = numel x dtype size, offsets
     * inside the data area, and no two tensors sharing bytes.
     */
    static Parsed parse(Path file, byte[] json, long dataSize) {
        JsonNode root;
        try {
            root = JSON.readTree(json);
        } catch (JacksonException e) {
            throw ModelFormatException.of(file, "the safetensors header is not valid JSON ("
                    + e.getOriginalMessage() + "): the file is corrupt or not a safetensors file; re-download or re-save it", e);
        } catch (java.io.IOException e) {
            throw ModelFormatException.of(file, "cannot parse the safetensors header: " + e.getMessage(), e);
        }
        if (root == null || !root.isObject()) {
            throw ModelFormatException.of(file, "the safetensors header must be a JSON object but is "
                    + (root == null || root.isMissingNode() ? "empty" : root.getNodeType().toString().toLowerCase())
                    + ": the file is corrupt or not a safetensors file");
        }
        LinkedHashMap<String, TensorInfo> entries = new LinkedHashMap<>();
        Map<String, String> metadata = Map.of();
        for (Map.Entry<String, JsonNode> field : root.properties()) {
            String name = field.getKey();
            if (name.equals(METADATA_KEY)) {
                metadata = parseMetadata(file, field.getValue());
            } else {
                entries.put(name, parseEntry(file, name, field.getValue(), dataSize));
            }
        }
        checkNoOverlap(file, entries.values());
        return new Parsed(entries, metadata);
    }

    private static Map<String, String> parseMetadata(Path file, JsonNode node) {
        if (!node.isObject()) {
            throw ModelFormatException.of(file, "\"" + METADATA_KEY + "\" must be an object of strings but is "
                    + node.getNodeType().toString().toLowerCase() + ": the header is corrupt");
        }
        LinkedHashMap<String, String> out = new LinkedHashMap<>();
        for (Map.Entry<String, JsonNode> e : node.properties()) {
            if (!e.getValue().isTextual()) {
                throw ModelFormatException.of(file, "\"" + METADATA_KEY + "\" value for key '" + e.getKey()
                        + "' must be a string but is " + e.getValue().getNodeType().toString().toLowerCase()
                        + ": the header is corrupt");
            }
            out.put(e.getKey(), e.getValue().textValue());
        }
        return Collections.unmodifiableMap(out);
    }

    private static TensorInfo parseEntry(Path file, String name, JsonNode node, long dataSize) {
        String where = "tensor '" + name + "'";
        if (!node.isObject()) {
            throw ModelFormatException.of(file, where + " must be an object {dtype, shape, data_offsets}: the header is corrupt");
        }
        JsonNode dtypeNode = node.get("dtype");
        if (dtypeNode == null || !dtypeNode.isTextual()) {
            throw ModelFormatException.of(file, where + " has no string \"dtype\": the header is corrupt");
        }
        DType dtype;
        try {
            dtype = DType.fromSafetensors(dtypeNode.textValue());
        } catch (IllegalArgumentException e) {
            throw ModelFormatException.of(file, where + " has dtype '" + dtypeNode.textValue()
                    + "', which qlora4j does not support (supported: " + SUPPORTED
                    + "); convert the checkpoint to one of these dtypes", e);
        }
        JsonNode shapeNode = node.get("shape");
        if (shapeNode == null || !shapeNode.isArray()) {
            throw ModelFormatException.of(file, where + " has no array \"shape\": the header is corrupt");
        }
        int[] shape = new int[shapeNode.size()];
        for (int i = 0; i < shape.length; i++) {
            JsonNode d = shapeNode.get(i);
            if (!d.isIntegralNumber() || !d.canConvertToLong() || d.longValue() < 0 || d.longValue() > Integer.MAX_VALUE) {
                throw ModelFormatException.of(file, where + " has shape " + shapeNode
                        + ": dimensions must be integers in [0, 2^31-1]; the header is corrupt");
            }
            shape[i] = d.intValue();
        }
        JsonNode off = node.get("data_offsets");
        if (off == null || !off.isArray() || off.size() != 2 || !isU64(off.get(0)) || !isU64(off.get(1))) {
            throw ModelFormatException.of(file, where + " has data_offsets " + off
                    + ": expected [begin, end] with non-negative integers; the header is corrupt");
        }
        long begin = off.get(0).longValue();
        long end = off.get(1).longValue();
        if (end < begin) {
            throw ModelFormatException.of(file, where + " has data_offsets [" + begin + ", " + end
                    + "] with end before begin: the header is corrupt");
        }
        if (end > dataSize) {
            throw ModelFormatException.of(file, where + " has data_offsets [" + begin + ", " + end
                    + "] past the end of the data area (" + dataSize
                    + " bytes): the file is truncated or corrupt; re-download or re-save it");
        }
        long expected;
        try {
            long numel = 1;
            for (int d : shape) numel = Math.multiplyExact(numel, d);
            expected = Math.multiplyExact(numel, dtype.byteSize());
        } catch (ArithmeticException e) {
            throw ModelFormatException.of(file, where + " has shape " + Arrays.toString(shape)
                    + " whose byte count overflows: the header is corrupt");
        }
        if (end - begin != expected) {
            throw ModelFormatException.of(file, where + " is " + dtype + Arrays.toString(shape) + " = " + expected
                    + " bytes but data_offsets [" + begin + ", " + end + "] hold " + (end - begin)
                    + " bytes: the header is inconsistent; re-save the file");
        }
        return new TensorInfo(name, dtype, shape, begin, end);
    }

    private static boolean isU64(JsonNode n) {
        return n != null && n.isIntegralNumber() && n.canConvertToLong() && n.longValue() >= 0;
    }

    /** Two tensors must never share bytes (empty tensors own no bytes and cannot overlap). */
    private static void checkNoOverlap(Path file, Collection<TensorInfo> infos) {
        List<TensorInfo> sorted = new ArrayList<>();
        for (TensorInfo t : infos) if (t.end() > t.begin()) sorted.add(t);
        sorted.sort(Comparator.comparingLong(TensorInfo::begin));
        for (int i = 1; i < sorted.size(); i++) {
            TensorInfo prev = sorted.get(i - 1), cur = sorted.get(i);
            if (cur.begin() < prev.end()) {
                throw ModelFormatException.of(file, "tensors '" + prev.name() + "' [" + prev.begin() + ", " + prev.end()
                        + ") and '" + cur.name() + "' [" + cur.begin() + ", " + cur.end()
                        + ") overlap in the data area: the header is corrupt; re-save the file");
            }
        }
    }

    /**
     * The header bytes (without the 8-byte length) for entries in the given order, padded with
     * spaces to a multiple of 8 so the data area starts aligned. Metadata is omitted when empty.
     */
    static byte[] serialize(List<TensorInfo> entries, Map<String, String> metadata) {
        ObjectNode root = JSON.createObjectNode();
        if (metadata != null && !metadata.isEmpty()) {
            ObjectNode m = root.putObject(METADATA_KEY);
            metadata.forEach(m::put);
        }
        for (TensorInfo t : entries) {
            ObjectNode e = root.putObject(t.name());
            e.put("dtype", t.dtype().safetensorsName());
            ArrayNode shape = e.putArray("shape");
            for (int d : t.shape()) shape.add(d);
            e.putArray("data_offsets").add(t.begin()).add(t.end());
        }
        byte[] json = root.toString().getBytes(StandardCharsets.UTF_8);
        int padded = (json.length + ALIGNMENT - 1) / ALIGNMENT * ALIGNMENT;
        byte[] out = Arrays.copyOf(json, padded);
        Arrays.fill(out, json.length, padded, (byte) ' ');
        return out;
    }
}
