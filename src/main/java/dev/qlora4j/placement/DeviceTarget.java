package dev.qlora4j.placement;

import java.util.Locale;

/**
 * Where a module's weights live, as a device_map value names it: a GPU index (0, 1, ...), "cpu"
 * (pinned host memory, streamed to the GPU before use) or "disk" (a memory-mapped file in the offload
 * folder, staged through pinned buffers).
 */
public sealed interface DeviceTarget {
    record Gpu(int index) implements DeviceTarget {
        public Gpu {
            if (index < 0) throw new IllegalArgumentException("GPU index must be >= 0, got " + index);
        }

        @Override public String toString() { return Integer.toString(index); }
    }

    record Cpu() implements DeviceTarget {
        @Override public String toString() { return "cpu"; }
    }

    record Disk() implements DeviceTarget {
        @Override public String toString() { return "disk"; }
    }

    DeviceTarget CPU = new Cpu();
    DeviceTarget DISK = new Disk();

    static DeviceTarget gpu(int index) { return new Gpu(index); }

    /** True for cpu and disk: weights that are copied to a GPU ahead of each use. */
    default boolean offloaded() { return !(this instanceof Gpu); }

    /** Parses "0", "cuda:1", "cpu", "disk" (what a device_map value or a max_memory key says). */
    static DeviceTarget parse(String s, String where) {
        String t = s == null ? "" : s.trim().toLowerCase(Locale.ROOT);
        switch (t) {
            case "cpu": return CPU;
            case "disk": return DISK;
            default:
        }
        String digits = t.startsWith("cuda:") ? t.substring(5) : t;
        try {
            return gpu(Integer.parseInt(digits));
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException(where + ": '" + s + "' is not a device; use a GPU index (0, 1, ...), \"cpu\" or \"disk\"");
        }
    }
}
