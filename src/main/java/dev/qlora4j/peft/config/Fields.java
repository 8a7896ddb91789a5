package dev.qlora4j.peft.config;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.core.json.JsonReadFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.json.JsonMapper;

import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * The fields of one JSON object read as Python reads them, with typed accessors that say which
 * file and key are wrong. Each accessor consumes its key; {@link #rest()} is what no accessor
 * asked for (kept by the configs as "extra" so that unknown keys survive a round trip).
 */
final class Fields {
    private static final ObjectMapper MAPPER = JsonMapper.builder()
            .enable(JsonReadFeature.ALLOW_NON_NUMERIC_NUMBERS) // Python writes NaN / Infinity
            .build();

    private final Map<String, Object> remaining;
    private final String source;

    Fields(Map<String, Object> map, String source) {
        this.remaining = new LinkedHashMap<>(map);
        this.source = source;
    }

    /** Parses a JSON object; its values become null, Boolean, String, Long, Double, List, LinkedHashMap. */
    static Map<String, Object> parseObject(String json, String source) {
        JsonNode root;
        try {
            root = MAPPER.readTree(json);
        } catch (JsonProcessingException e) {
            String where = e.getLocation() == null ? "" : " at line " + e.getLocation().getLineNr();
            throw new IllegalArgumentException(source + ": not valid JSON (" + e.getOriginalMessage() + where
                    + "); fix or regenerate the file", e);
        }
        if (root == null || !root.isObject()) {
            throw new IllegalArgumentException(source + ": expected a JSON object with the adapter settings, found "
                    + (root == null ? "nothing" : root.getNodeType().toString().toLowerCase()));
        }
        @SuppressWarnings("unchecked")
        Map<String, Object> m = (Map<String, Object>) toJava(root);
        return m;
    }

    private static Object toJava(JsonNode n) {
        if (n.isObject()) {
            Map<String, Object> m = new LinkedHashMap<>();
            n.properties().forEach(e -> m.put(e.getKey(), toJava(e.getValue())));
            return m;
        }
        if (n.isArray()) {
            List<Object> l = new ArrayList<>();
            n.forEach(x -> l.add(toJava(x)));
            return l;
        }
        if (n.isNull()) return null;
        if (n.isBoolean()) return n.booleanValue();
        if (n.isIntegralNumber()) return n.longValue();
        if (n.isNumber()) return n.doubleValue();
        return n.asText();
    }

    String source() { return source; }

    boolean has(String key) { return remaining.containsKey(key); }

    Object take(String key) { return remaining.remove(key); }

    /** The keys no accessor consumed, sorted (as they will be written). */
    Map<String, Object> rest() { return Collections.unmodifiableMap(new TreeMap<>(remaining)); }

    IllegalArgumentException bad(String key, String expected, Object got) {
        return new IllegalArgumentException(source + ": \"" + key + "\" must be " + expected + ", got "
                + PeftJson.dumpsCompact(got));
    }

    String string(String key, String dflt) {
        if (!has(key)) return dflt;
        Object v = take(key);
        if (v == null) return null;
        if (v instanceof String s) return s;
        throw bad(key, "a string or null", v);
    }

    boolean bool(String key, boolean dflt) {
        if (!has(key)) return dflt;
        Object v = take(key);
        if (v instanceof Boolean b) return b;
        throw bad(key, "true or false", v);
    }

    Integer integer(String key, Integer dflt) {
        if (!has(key)) return dflt;
        Object v = take(key);
        if (v == null) return null;
        if (v instanceof Long l && l == l.intValue()) return l.intValue();
        if (v instanceof Double d && d == Math.rint(d) && Math.abs(d) < Integer.MAX_VALUE) return d.intValue();
        throw bad(key, "an integer", v);
    }

    Double number(String key, Double dflt) {
        if (!has(key)) return dflt;
        Object v = take(key);
        if (v == null) return null;
        if (v instanceof Number n) return n.doubleValue();
        throw bad(key, "a number", v);
    }

    /** A list of strings; a single string is accepted as a one-element list when {@code allowSingle}. */
    List<String> strings(String key, boolean allowSingle) {
        if (!has(key)) return null;
        Object v = take(key);
        if (v == null) return null;
        if (v instanceof String s && allowSingle) return s.isEmpty() ? List.of() : List.of(s);
        if (v instanceof List<?> l) {
            List<String> out = new ArrayList<>();
            for (Object o : l) {
                if (!(o instanceof String s)) throw bad(key, "a list of strings", v);
                out.add(s);
            }
            return out;
        }
        throw bad(key, allowSingle ? "a string or a list of strings" : "a list of strings", v);
    }

    /** A list of ints; a single int is accepted as a one-element list. */
    List<Integer> ints(String key) {
        if (!has(key)) return null;
        Object v = take(key);
        if (v == null) return null;
        if (v instanceof Long l) return List.of(Math.toIntExact(l));
        if (v instanceof List<?> l) {
            List<Integer> out = new ArrayList<>();
            for (Object o : l) {
                if (!(o instanceof Long x)) throw bad(key, "an integer or a list of integers", v);
                out.add(Math.toIntExact(x));
            }
            return out;
        }
        throw bad(key, "an integer or a list of integers", v);
    }

    /** A JSON object as an insertion-ordered map (null and absent give an empty map). */
    Map<String, Object> object(String key) {
        if (!has(key)) return Map.of();
        Object v = take(key);
        if (v == null) return Map.of();
        if (v instanceof Map<?, ?> m) {
            Map<String, Object> out = new LinkedHashMap<>();
            m.forEach((k, x) -> out.put((String) k, x));
            return out;
        }
        throw bad(key, "an object", v);
    }
}
