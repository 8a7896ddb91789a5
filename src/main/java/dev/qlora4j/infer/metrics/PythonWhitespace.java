package dev.qlora4j.infer.metrics;

import java.util.ArrayList;
import java.util.List;

/**
 * Python's idea of whitespace ({@code str.isspace()}), which sacreBLEU relies on through
 * {@code str.split()} and {@code str.rstrip()}. Java's {@link Character#isWhitespace} differs: it
 * leaves out the no-break spaces U+00A0, U+2007, U+202F and U+0085, which Python splits on.
 */
final class PythonWhitespace {
    private PythonWhitespace() {}

    /** The characters Python's str.isspace() accepts (all in the BMP). */
    static boolean isSpace(char c) {
        return (c >= '\t' && c <= '\r') || (c >= '\u001c' && c <= ' ') || c == '\u0085' || c == '\u00a0'
                || c == '\u1680' || (c >= '\u2000' && c <= '\u200a') || c == '\u2028' || c == '\u2029'
                || c == '\u202f' || c == '\u205f' || c == '\u3000';
    }

    /** str.split() with no argument: runs of whitespace separate, leading/trailing ones give no empty token. */
    static List<String> split(String s) {
        List<String> out = new ArrayList<>();
        int n = s.length(), i = 0;
        while (i < n) {
            while (i < n && isSpace(s.charAt(i))) i++;
            int start = i;
            while (i < n && !isSpace(s.charAt(i))) i++;
            if (i > start) out.add(s.substring(start, i));
        }
        return out;
    }

    /** str.rstrip(). */
    static String rstrip(String s) {
        int end = s.length();
        while (end > 0 && isSpace(s.charAt(end - 1))) end--;
        return s.substring(0, end);
    }

    /** str.strip(). */
    static String strip(String s) {
        String r = rstrip(s);
        int start = 0;
        while (start < r.length() && isSpace(r.charAt(start))) start++;
        return r.substring(start);
    }
}
