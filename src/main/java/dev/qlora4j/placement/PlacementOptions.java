package dev.qlora4j.placement;

import java.nio.file.Path;

/**
 * The user's placement settings, as transformers' from_pretrained takes them.
 *
 * @param deviceMap     "auto", "sequential", "balanced", a device ("cpu", "0") or a JSON map (module prefix ->
 *                      GPU index | "cpu" | "disk"); null: everything on the backend's device (no planning)
 * @param maxMemory     max_memory JSON ({"0":"20GiB","cpu":"64GiB"}) or null
 * @param offloadFolder where "disk" layers are written (memory-mapped from there), or null
 * @param headroomBytes GPU bytes kept free for activations and the KV cache when a GPU's budget is its free
 *                      memory (no max_memory for it); negative: the default (10% of the GPU's memory, at least 1 GiB)
 */
public record PlacementOptions(String deviceMap, String maxMemory, Path offloadFolder, long headroomBytes) {
    public static final PlacementOptions NONE = new PlacementOptions(null, null, null, -1);

    public static PlacementOptions of(String deviceMap, String maxMemory, Path offloadFolder) {
        return new PlacementOptions(deviceMap, maxMemory, offloadFolder, -1);
    }

    /** Whether a device map was asked for at all. */
    public boolean active() { return deviceMap != null && !deviceMap.isBlank(); }

    public PlacementOptions {
        if (!active0(deviceMap) && (maxMemory != null || offloadFolder != null)) {
            throw new IllegalArgumentException("--max-memory and --offload-folder need a --device-map (auto, sequential, balanced or a JSON map)");
        }
    }

    private static boolean active0(String m) { return m != null && !m.isBlank(); }

    /** A device map read from a file when written as @path. */
    public String deviceMapText() {
        if (deviceMap != null && deviceMap.startsWith("@")) {
            try {
                return java.nio.file.Files.readString(Path.of(deviceMap.substring(1)));
            } catch (java.io.IOException e) {
                throw new java.io.UncheckedIOException("--device-map " + deviceMap + ": cannot read the file: " + e.getMessage(), e);
            }
        }
        return deviceMap;
    }
}
