package dev.qlora4j.placement;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * accelerate's max_memory: the most bytes of weights each device may hold, e.g.
 * {"0": "20GiB", "1": "20GiB", "cpu": "64GiB"}. Devices not named fall back to what the planner measures
 * (a GPU's free memory less its headroom; the host: unlimited).
 */
public record MaxMemory(Map<DeviceTarget, Long> limits) {
    public static final MaxMemory NONE = new MaxMemory(Map.of());

    public MaxMemory {
        limits = Collections.unmodifiableMap(new LinkedHashMap<>(limits));
    }

    /** Parses the JSON object form; null or blank is {@link #NONE}. Values are sizes ("20GiB") or byte counts. */
    public static MaxMemory parse(String json) {
        if (json == null || json.isBlank()) return NONE;
        JsonNode root;
        try {
            root = new ObjectMapper().readTree(json);
        } catch (com.fasterxml.jackson.core.JsonProcessingException e) {
            throw new IllegalArgumentException("--max-memory: not valid JSON (" + e.getOriginalMessage()
                    + "); write it like {\"0\":\"20GiB\",\"cpu\":\"64GiB\"}");
        }
        if (root == null || !root.isObject()) {
            throw new IllegalArgumentException("--max-memory must be a JSON object like {\"0\":\"20GiB\",\"cpu\":\"64GiB\"}, got " + json);
        }
        Map<DeviceTarget, Long> m = new LinkedHashMap<>();
        for (var it = root.fields(); it.hasNext(); ) {
            var e = it.next();
            DeviceTarget t = DeviceTarget.parse(e.getKey(), "--max-memory key");
            if (t instanceof DeviceTarget.Disk) {
                throw new IllegalArgumentException("--max-memory: \"disk\" has no limit to set (it is bounded by the offload folder's file system)");
            }
            JsonNode v = e.getValue();
            long bytes = v.isIntegralNumber() ? v.longValue() : MemorySize.parse(v.asText(), "--max-memory \"" + e.getKey() + "\"");
            if (bytes < 0) throw new IllegalArgumentException("--max-memory \"" + e.getKey() + "\" is negative: " + v);
            m.put(t, bytes);
        }
        return new MaxMemory(m);
    }

    /** The limit for a device, or null when none was given. */
    public Long limit(DeviceTarget t) { return limits.get(t); }
}
