package dev.qlora4j.json;

import java.math.BigDecimal;
import java.math.MathContext;
import java.math.RoundingMode;
import java.util.Arrays;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.TreeMap;
import java.util.function.Function;

/**
 * Writes JSON byte for byte as CPython's {@code json.dumps} does, for the files and strings the Python
 * tools compare exactly: bitsandbytes' quant_state tensor, peft's adapter_config.json and the
 * {@code tojson} filter of transformers' chat templates.
 *
 * <p>Layout: ", " and ": " separators on one line; with an indent, "," at line ends and each item on its
 * own line, indented by indent * depth spaces; empty containers as {} and []. Floats in repr form (0.05,
 * 1e-05, 32.0, NaN, Infinity). Strings with json's short escapes and \\uXXXX (lower-case hex) for other
 * control characters, and for everything outside printable ASCII when ensure_ascii is on.
 *
 * <p>Values: null, Boolean, CharSequence, Float/Double (Python floats), other Numbers (written as Java
 * prints them: ints), Map (keys via String.valueOf), Iterable and int[] (lists). Anything else goes
 * through {@link Options#fallback()}, json.dumps' {@code default=}; without one it is an error.
 */
public final class PythonJson {
    private PythonJson() {}

    /**
     * The json.dumps arguments that change its output.
     *
     * @param indent     spaces per level; negative means None (one line)
     * @param sortKeys   sort_keys: keys of every map in String order (else the map's iteration order)
     * @param ensureAscii ensure_ascii: escape every char outside 0x20..0x7e
     * @param fallback   default: turns an unsupported value into a supported one; null to reject it
     */
    public record Options(int indent, boolean sortKeys, boolean ensureAscii, Function<Object, Object> fallback) {
        /** json.dumps(value) with every argument at its default. */
        public static final Options DEFAULTS = new Options(-1, false, true, null);

        public Options withIndent(int spaces) { return new Options(spaces, sortKeys, ensureAscii, fallback); }

        public Options withSortKeys(boolean sort) { return new Options(indent, sort, ensureAscii, fallback); }

        public Options withEnsureAscii(boolean ascii) { return new Options(indent, sortKeys, ascii, fallback); }

        public Options withFallback(Function<Object, Object> f) { return new Options(indent, sortKeys, ensureAscii, f); }
    }

    /** {@code json.dumps(value)}. */
    public static String dumps(Object value) {
        return dumps(value, Options.DEFAULTS);
    }

    /** {@code json.dumps(value, indent=..., sort_keys=..., ensure_ascii=..., default=...)}. */
    public static String dumps(Object value, Options options) {
        StringBuilder sb = new StringBuilder();
        write(sb, value, options, 0);
        return sb.toString();
    }

    private static void write(StringBuilder sb, Object v, Options o, int level) {
        switch (v) {
            case null -> sb.append("null");
            case Boolean b -> sb.append(b ? "true" : "false");
            case CharSequence s -> quote(sb, s.toString(), o.ensureAscii());
            case Float f -> sb.append(floatRepr(f));
            case Double d -> sb.append(floatRepr(d));
            case Number n -> sb.append(n);
            case Map<?, ?> m -> writeMap(sb, m, o, level);
            case Iterable<?> it -> writeList(sb, it.iterator(), o, level);
            case int[] arr -> writeList(sb, Arrays.stream(arr).boxed().iterator(), o, level);
            default -> {
                if (o.fallback() == null) {
                    throw new IllegalArgumentException("cannot write " + v.getClass().getName() + " as JSON: " + v);
                }
                write(sb, o.fallback().apply(v), o, level);
            }
        }
    }

    private static void writeMap(StringBuilder sb, Map<?, ?> m, Options o, int level) {
        if (m.isEmpty()) {
            sb.append("{}");
            return;
        }
        Map<String, Object> entries = o.sortKeys() ? new TreeMap<>() : new LinkedHashMap<>();
        m.forEach((k, val) -> entries.put(String.valueOf(k), val));
        sb.append('{');
        boolean first = true;
        for (Map.Entry<String, Object> e : entries.entrySet()) {
            if (!first) sb.append(o.indent() >= 0 ? "," : ", ");
            first = false;
            newline(sb, o, level + 1);
            quote(sb, e.getKey(), o.ensureAscii());
            sb.append(": ");
            write(sb, e.getValue(), o, level + 1);
        }
        newline(sb, o, level);
        sb.append('}');
    }

    private static void writeList(StringBuilder sb, Iterator<?> items, Options o, int level) {
        if (!items.hasNext()) {
            sb.append("[]");
            return;
        }
        sb.append('[');
        boolean first = true;
        while (items.hasNext()) {
            if (!first) sb.append(o.indent() >= 0 ? "," : ", ");
            first = false;
            newline(sb, o, level + 1);
            write(sb, items.next(), o, level + 1);
        }
        newline(sb, o, level);
        sb.append(']');
    }

    private static void newline(StringBuilder sb, Options o, int level) {
        if (o.indent() < 0) return;
        sb.append('\n').append(" ".repeat(o.indent() * level));
    }

    /** json's string escaping: short escapes, else \\uXXXX for controls (and non-ASCII with ensure_ascii). */
    private static void quote(StringBuilder sb, String s, boolean ensureAscii) {
        sb.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"' -> sb.append("\\\"");
                case '\\' -> sb.append("\\\\");
                case '\n' -> sb.append("\\n");
                case '\r' -> sb.append("\\r");
                case '\t' -> sb.append("\\t");
                case '\b' -> sb.append("\\b");
                case '\f' -> sb.append("\\f");
                default -> {
                    // UTF-16 chars, so a supplementary character comes out as its surrogate pair, as in Python
                    if (c < 0x20 || (ensureAscii && c > 0x7e)) sb.append(String.format("\\u%04x", (int) c));
                    else sb.append(c);
                }
            }
        }
        sb.append('"');
    }

    /**
     * Python's repr(float): the shortest digits that round-trip (Java's Double.toString gives the same
     * digits since JDK 19, bar the case below), positional when the decimal exponent lies in [-4, 16),
     * else d.ddde[+-]XX; json.dumps writes NaN and the infinities as bare words.
     */
    public static String floatRepr(double d) {
        if (Double.isNaN(d)) return "NaN";
        if (Double.isInfinite(d)) return d > 0 ? "Infinity" : "-Infinity";
        if (d == 0) return (1 / d < 0) ? "-0.0" : "0.0";
        BigDecimal bd = new BigDecimal(Double.toString(Math.abs(d))).stripTrailingZeros();
        if (bd.precision() == 2) {
            // Java prints at least two digits (4.9E-324) where one digit already round-trips (Python: 5e-324)
            BigDecimal one = bd.round(new MathContext(1, RoundingMode.HALF_EVEN));
            if (Double.parseDouble(one.toString()) == Math.abs(d)) bd = one.stripTrailingZeros();
        }
        String digits = bd.unscaledValue().toString();
        int decpt = digits.length() - bd.scale(); // value = 0.DIGITS * 10^decpt
        StringBuilder sb = new StringBuilder(d < 0 ? "-" : "");
        if (decpt > -4 && decpt <= 16) {
            if (decpt <= 0) {
                sb.append("0.").append("0".repeat(-decpt)).append(digits);
            } else if (decpt < digits.length()) {
                sb.append(digits, 0, decpt).append('.').append(digits.substring(decpt));
            } else {
                sb.append(digits).append("0".repeat(decpt - digits.length())).append(".0");
            }
        } else {
            sb.append(digits.charAt(0));
            if (digits.length() > 1) sb.append('.').append(digits.substring(1));
            int exp = decpt - 1;
            sb.append('e').append(exp < 0 ? '-' : '+');
            if (Math.abs(exp) < 10) sb.append('0');
            sb.append(Math.abs(exp));
        }
        return sb.toString();
    }
}
