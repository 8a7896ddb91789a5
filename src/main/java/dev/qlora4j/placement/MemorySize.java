package dev.qlora4j.placement;

import java.util.Locale;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Byte counts as accelerate's max_memory writes them: "20GiB", "500MB", "1.5GB", "4096" (bytes).
 * Binary suffixes (KiB, MiB, GiB, TiB) are powers of 1024, decimal ones (KB, MB, GB, TB) powers of 1000,
 * as in accelerate's convert_file_size_to_int.
 */
public final class MemorySize {
    private MemorySize() {}

    private static final Pattern SIZE = Pattern.compile("\\s*([0-9]+(?:\\.[0-9]+)?)\\s*([KMGT]i?B|B)?\\s*", Pattern.CASE_INSENSITIVE);

    /** Parses a size; what says where it came from (for the message). */
    public static long parse(String text, String what) {
        Matcher m = SIZE.matcher(text == null ? "" : text);
        if (!m.matches()) {
            throw new IllegalArgumentException(what + ": '" + text + "' is not a memory size; write bytes (4096) or a number with "
                    + "a unit: 500MB, 20GiB, 1.5GB (KiB/MiB/GiB/TiB = 1024-based, KB/MB/GB/TB = 1000-based)");
        }
        double number = Double.parseDouble(m.group(1));
        String unit = m.group(2) == null ? "B" : m.group(2).toUpperCase(Locale.ROOT);
        long factor = switch (unit) {
            case "B" -> 1L;
            case "KB" -> 1000L; case "MB" -> 1000_000L; case "GB" -> 1000_000_000L; case "TB" -> 1000_000_000_000L;
            case "KIB" -> 1L << 10; case "MIB" -> 1L << 20; case "GIB" -> 1L << 30; case "TIB" -> 1L << 40;
            default -> throw new IllegalStateException(unit);
        };
        if (unit.equals("B") && m.group(1).contains(".")) {
            throw new IllegalArgumentException(what + ": '" + text + "' has a fractional byte count; give whole bytes or a unit");
        }
        double bytes = number * factor;
        if (bytes > Long.MAX_VALUE) throw new IllegalArgumentException(what + ": '" + text + "' is too large");
        return Math.round(bytes);
    }

    /** A short human form: 1.50 GiB, 500.0 MiB, 12.0 KiB, 17 B. */
    public static String format(long bytes) {
        if (bytes < 1024) return bytes + " B";
        String[] units = {"KiB", "MiB", "GiB", "TiB"};
        double v = bytes;
        int u = -1;
        while (v >= 1024 && u < units.length - 1) {
            v /= 1024;
            u++;
        }
        return String.format(Locale.ROOT, v >= 100 ? "%.0f %s" : v >= 10 ? "%.1f %s" : "%.2f %s", v, units[u]);
    }
}
