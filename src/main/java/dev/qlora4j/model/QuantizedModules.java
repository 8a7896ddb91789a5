package dev.qlora4j.model;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.qlora4j.io.CheckpointReader;
import dev.qlora4j.io.ModelFormatException;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.Map;
import java.util.TreeMap;

/**
 * The linear layers a checkpoint stores pre-quantized, found by bitsandbytes' key names:
 * 4-bit ones by their "P.weight.quant_state.bitsandbytes__nf4|fp4" tensor (whose JSON holds the
 * original shape), LLM.int8 ones by "P.SCB". Used to count what the stored bytes stand for.
 */
record QuantizedModules(Map<String, int[]> shapes, Map<String, String> kinds) {
    private static final String STATE = ".weight.quant_state.bitsandbytes__";

    static QuantizedModules find(CheckpointReader reader) {
        Map<String, int[]> shapes = new TreeMap<>();
        Map<String, String> kinds = new TreeMap<>();
        for (String name : reader.names()) {
            int at = name.indexOf(STATE);
            if (at > 0) {
                String module = name.substring(0, at);
                shapes.put(module, shapeFromState(reader, name));
                kinds.put(module, name.substring(at + STATE.length()).toUpperCase(java.util.Locale.ROOT));
            } else if (name.endsWith(".SCB")) {
                String module = name.substring(0, name.length() - ".SCB".length());
                if (reader.has(module + ".weight")) {
                    shapes.put(module, reader.info(module + ".weight").shape());
                    kinds.put(module, "INT8");
                }
            }
        }
        return new QuantizedModules(shapes, kinds);
    }

    private static int[] shapeFromState(CheckpointReader reader, String name) {
        byte[] json = reader.tensor(name).segment().toArray(java.lang.foreign.ValueLayout.JAVA_BYTE);
        try {
            JsonNode shape = new ObjectMapper().readTree(new String(json, StandardCharsets.UTF_8)).get("shape");
            if (shape == null || !shape.isArray() || shape.size() != 2) throw new IOException("no 2-D \"shape\"");
            return new int[] {shape.get(0).asInt(), shape.get(1).asInt()};
        } catch (IOException e) {
            throw new ModelFormatException(reader.path() + ": tensor " + name
                    + " is not a valid bitsandbytes quant_state (" + e.getMessage() + "); re-save the checkpoint with bitsandbytes");
        }
    }

    /** The quantized module a tensor belongs to, or null. */
    String owner(String tensorName) {
        for (String m : shapes.keySet()) {
            if (tensorName.startsWith(m + ".weight") || tensorName.equals(m + ".SCB")) return m;
        }
        return null;
    }

    String kind(String module) { return kinds.get(module); }

    long parameters() {
        long n = 0;
        for (int[] s : shapes.values()) n += (long) s[0] * s[1];
        return n;
    }

    long bytes(CheckpointReader reader) {
        long n = 0;
        for (String name : reader.names()) if (owner(name) != null) n += reader.info(name).byteSize();
        return n;
    }
}
