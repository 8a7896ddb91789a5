package dev.qlora4j.peft.config;

import java.math.BigDecimal;
import java.math.MathContext;
import java.math.RoundingMode;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * Writes JSON byte-for-byte as Python's json.dumps(value, indent=2, sort_keys=True) does, which is
 * how peft writes adapter_config.json: two-space indent, "," + newline between items, ": " after
 * keys, keys sorted at every level, empty containers as {} and [], non-ASCII escaped as \\uXXXX,
 * floats in repr form (0.05, 1e-05, 32.0), no trailing newline.
 *
 * <p>Values: null, Boolean, String, Integer/Long (ints), Float/Double (floats), List, Map with
 * String keys.
 */
final class PythonJson {
    private PythonJson() {}

    static String dumps(Object value) {
        StringBuilder sb = new StringBuilder();
        write(sb, value, 0, true);
        return sb.toString();
    }

    /** json.dumps(value, sort_keys=True) without indent: one line, ", " and ": " separators (for messages). */
    static String dumpsCompact(Object value) {
        StringBuilder sb = new StringBuilder();
        write(sb, value, 0, false);
        return sb.toString();
    }

    private static void write(StringBuilder sb, Object v, int level, boolean pretty) {
        switch (v) {
            case null -> sb.append("null");
            case Boolean b -> sb.append(b ? "true" : "false");
            case String s -> quote(sb, s);
            case Integer i -> sb.append(i);
            case Long l -> sb.append(l);
            case Float f -> sb.append(floatRepr(f));
            case Double d -> sb.append(floatRepr(d));
            case Map<?, ?> m -> {
                if (m.isEmpty()) {
                    sb.append("{}");
                    return;
                }
                TreeMap<String, Object> sorted = new TreeMap<>();
                m.forEach((k, val) -> sorted.put((String) k, val));
                sb.append(pretty ? "{\n" : "{");
                boolean first = true;
                for (Map.Entry<String, Object> e : sorted.entrySet()) {
                    if (!first) sb.append(pretty ? ",\n" : ", ");
                    first = false;
                    if (pretty) indent(sb, level + 1);
                    quote(sb, e.getKey());
                    sb.append(": ");
                    write(sb, e.getValue(), level + 1, pretty);
                }
                if (pretty) {
                    sb.append('\n');
                    indent(sb, level);
                }
                sb.append('}');
            }
            case List<?> list -> {
                if (list.isEmpty()) {
                    sb.append("[]");
                    return;
                }
                sb.append(pretty ? "[\n" : "[");
                for (int i = 0; i < list.size(); i++) {
                    if (i > 0) sb.append(pretty ? ",\n" : ", ");
                    if (pretty) indent(sb, level + 1);
                    write(sb, list.get(i), level + 1, pretty);
                }
                if (pretty) {
                    sb.append('\n');
                    indent(sb, level);
                }
                sb.append(']');
            }
            default -> throw new IllegalArgumentException("cannot write " + v.getClass().getName() + " as JSON: " + v);
        }
    }

    private static void indent(StringBuilder sb, int level) {
        sb.append(" ".repeat(2 * level));
    }

    /** json.dumps string escaping with ensure_ascii=True. */
    private static void quote(StringBuilder sb, String s) {
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
                    if (c < 0x20 || c > 0x7e) sb.append(String.format("\\u%04x", (int) c));
                    else sb.append(c);
                }
            }
        }
        sb.append('"');
    }

    /**
     * Python's repr(float): the shortest digits that round-trip (Java's Double.toString gives the
     * same digits), positional when the decimal exponent lies in [-4, 16), else d.ddde[+-]XX.
     */
    static String floatRepr(double d) {
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

    /** A number as peft wrote it: integral values as ints (8), others as floats (0.05). */
    static Object number(double v) {
        if (v == Math.rint(v) && Math.abs(v) < 1e15) return (long) v;
        return v;
    }
}
