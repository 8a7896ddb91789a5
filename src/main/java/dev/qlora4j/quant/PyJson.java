package dev.qlora4j.quant;

import java.math.BigDecimal;
import java.util.Map;

/**
 * Writes JSON the way Python's {@code json.dumps} does with default settings (", " and ": " separators,
 * floats as {@code repr}), so that the quant_state tensors we save are byte-identical to bitsandbytes'.
 */
final class PyJson {
    private PyJson() {}

    /** {@code json.dumps(dict)} for a flat dict of String, Integer/Long, Double/Float, int[] and null values. */
    static String dumps(Map<String, Object> dict) {
        StringBuilder sb = new StringBuilder("{");
        boolean first = true;
        for (Map.Entry<String, Object> e : dict.entrySet()) {
            if (!first) sb.append(", ");
            first = false;
            appendString(sb, e.getKey());
            sb.append(": ");
            Object v = e.getValue();
            switch (v) {
                case null -> sb.append("null");
                case String s -> appendString(sb, s);
                case Integer i -> sb.append(i);
                case Long l -> sb.append(l);
                case Float f -> sb.append(floatRepr(f.doubleValue()));
                case Double d -> sb.append(floatRepr(d));
                case Boolean b -> sb.append(b ? "true" : "false");
                case int[] arr -> {
                    sb.append('[');
                    for (int i = 0; i < arr.length; i++) {
                        if (i > 0) sb.append(", ");
                        sb.append(arr[i]);
                    }
                    sb.append(']');
                }
                default -> throw new IllegalArgumentException("cannot write " + v.getClass() + " as JSON");
            }
        }
        return sb.append('}').toString();
    }

    private static void appendString(StringBuilder sb, String s) {
        sb.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"' -> sb.append("\\\"");
                case '\\' -> sb.append("\\\\");
                case '\n' -> sb.append("\\n");
                case '\r' -> sb.append("\\r");
                case '\t' -> sb.append("\\t");
                default -> {
                    if (c < 0x20 || c > 0x7E) sb.append(String.format("\\u%04x", (int) c)); // ensure_ascii
                    else sb.append(c);
                }
            }
        }
        sb.append('"');
    }

    /**
     * Python's {@code repr(float)}: the shortest digits that round-trip (Java's Double.toString gives the
     * same digits since JDK 19), in fixed notation for 1e-4 &lt;= |x| &lt; 1e16 and as {@code 1.5e-05} /
     * {@code 1e+16} otherwise; json.dumps writes NaN and Infinity as bare words.
     */
    static String floatRepr(double d) {
        if (Double.isNaN(d)) return "NaN";
        if (Double.isInfinite(d)) return d > 0 ? "Infinity" : "-Infinity";
        if (d == 0) return (Double.doubleToRawLongBits(d) < 0) ? "-0.0" : "0.0";
        BigDecimal bd = new BigDecimal(Double.toString(Math.abs(d))).stripTrailingZeros();
        String digits = bd.unscaledValue().toString();
        int decpt = digits.length() - bd.scale(); // value = 0.DIGITS * 10^decpt
        StringBuilder sb = new StringBuilder(d < 0 ? "-" : "");
        if (decpt > -4 && decpt <= 16) {
            if (decpt <= 0) {
                sb.append("0.").append("0".repeat(-decpt)).append(digits);
            } else if (decpt >= digits.length()) {
                sb.append(digits).append("0".repeat(decpt - digits.length())).append(".0");
            } else {
                sb.append(digits, 0, decpt).append('.').append(digits.substring(decpt));
            }
        } else {
            sb.append(digits.charAt(0));
            if (digits.length() > 1) sb.append('.').append(digits.substring(1));
            int exp = decpt - 1;
            sb.append('e').append(exp < 0 ? '-' : '+');
            int ae = Math.abs(exp);
            if (ae < 10) sb.append('0');
            sb.append(ae);
        }
        return sb.toString();
    }
}
