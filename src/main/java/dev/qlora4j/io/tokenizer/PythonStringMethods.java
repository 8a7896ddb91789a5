package dev.qlora4j.io.tokenizer;

import jinjava.javax.el.ELContext;
import jinjava.javax.el.ELResolver;

import java.beans.FeatureDescriptor;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Iterator;
import java.util.List;
import java.util.Locale;
import java.util.Set;

/**
 * Python str methods on strings inside templates ({@code message['content'].strip()},
 * {@code .startswith('<')}, {@code .split('</think>')} ...), which Jinja2 provides and Jinjava,
 * calling Java methods, does not. Only method calls on strings are handled; everything else
 * falls through to Jinjava's own resolver.
 */
final class PythonStringMethods extends ELResolver {
    private static final Set<String> METHODS = Set.of("strip", "lstrip", "rstrip", "startswith", "endswith",
            "upper", "lower", "title", "capitalize", "split", "rsplit", "splitlines", "join", "find", "rfind",
            "count", "replace", "isdigit", "isalpha", "isalnum", "isspace", "islower", "isupper");

    @Override
    public Object invoke(ELContext context, Object base, Object method, Class<?>[] paramTypes, Object[] params) {
        if (!(base instanceof String s) || !(method instanceof String name) || !METHODS.contains(name)) return null;
        Object[] a = params == null ? new Object[0] : params;
        Object result = switch (name) {
            case "strip" -> rstrip(lstrip(s, chars(a)), chars(a));
            case "lstrip" -> lstrip(s, chars(a));
            case "rstrip" -> rstrip(s, chars(a));
            case "startswith" -> anyMatch(a[0], s::startsWith);
            case "endswith" -> anyMatch(a[0], s::endsWith);
            case "upper" -> s.toUpperCase(Locale.ROOT);
            case "lower" -> s.toLowerCase(Locale.ROOT);
            case "title" -> title(s);
            case "capitalize" -> s.isEmpty() ? s : s.substring(0, 1).toUpperCase(Locale.ROOT)
                    + s.substring(1).toLowerCase(Locale.ROOT);
            case "split" -> split(s, a.length > 0 ? a[0] : null, a.length > 1 ? ((Number) a[1]).intValue() : -1);
            case "rsplit" -> rsplit(s, a.length > 0 ? a[0] : null, a.length > 1 ? ((Number) a[1]).intValue() : -1);
            case "splitlines" -> new ArrayList<>(s.lines().toList());
            case "join" -> join(s, a[0]);
            case "find" -> (long) s.indexOf(String.valueOf(a[0]));
            case "rfind" -> (long) s.lastIndexOf(String.valueOf(a[0]));
            case "count" -> count(s, String.valueOf(a[0]));
            case "replace" -> replace(s, String.valueOf(a[0]), String.valueOf(a[1]),
                    a.length > 2 ? ((Number) a[2]).intValue() : -1);
            case "isdigit" -> !s.isEmpty() && s.chars().allMatch(Character::isDigit);
            case "isalpha" -> !s.isEmpty() && s.chars().allMatch(Character::isLetter);
            case "isalnum" -> !s.isEmpty() && s.chars().allMatch(Character::isLetterOrDigit);
            case "isspace" -> !s.isEmpty() && s.chars().allMatch(Character::isWhitespace);
            case "islower" -> s.chars().anyMatch(Character::isLetter) && s.equals(s.toLowerCase(Locale.ROOT));
            case "isupper" -> s.chars().anyMatch(Character::isLetter) && s.equals(s.toUpperCase(Locale.ROOT));
            default -> throw new IllegalStateException("unreachable: " + name);
        };
        context.setPropertyResolved(true);
        return result;
    }

    private static String chars(Object[] a) {
        return a.length > 0 && a[0] != null ? String.valueOf(a[0]) : null;
    }

    private static boolean strippable(char c, String chars) {
        return chars == null ? Character.isWhitespace(c) || Character.isSpaceChar(c) : chars.indexOf(c) >= 0;
    }

    private static String lstrip(String s, String chars) {
        int i = 0;
        while (i < s.length() && strippable(s.charAt(i), chars)) i++;
        return s.substring(i);
    }

    private static String rstrip(String s, String chars) {
        int j = s.length();
        while (j > 0 && strippable(s.charAt(j - 1), chars)) j--;
        return s.substring(0, j);
    }

    private static boolean anyMatch(Object arg, java.util.function.Predicate<String> test) {
        if (arg instanceof Collection<?> c) return c.stream().anyMatch(o -> test.test(String.valueOf(o)));
        return test.test(String.valueOf(arg));
    }

    private static String title(String s) {
        StringBuilder sb = new StringBuilder(s.length());
        boolean prevLetter = false;
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            sb.append(prevLetter ? Character.toLowerCase(c) : Character.toUpperCase(c));
            prevLetter = Character.isLetter(c);
        }
        return sb.toString();
    }

    /** Python str.split: no separator splits on whitespace runs and drops empty parts. */
    private static List<String> split(String s, Object sep, int maxSplit) {
        List<String> out = new ArrayList<>();
        if (sep == null) {
            String rest = s.stripLeading();
            while (!rest.isEmpty()) {
                if (maxSplit >= 0 && out.size() == maxSplit) {
                    out.add(rest);
                    return out;
                }
                int end = 0;
                while (end < rest.length() && !Character.isWhitespace(rest.charAt(end))) end++;
                out.add(rest.substring(0, end));
                rest = rest.substring(end).stripLeading();
            }
            return out;
        }
        String d = String.valueOf(sep);
        if (d.isEmpty()) throw new IllegalArgumentException("split(): empty separator");
        int from = 0;
        while (maxSplit < 0 || out.size() < maxSplit) {
            int at = s.indexOf(d, from);
            if (at < 0) break;
            out.add(s.substring(from, at));
            from = at + d.length();
        }
        out.add(s.substring(from));
        return out;
    }

    private static List<String> rsplit(String s, Object sep, int maxSplit) {
        if (sep == null || maxSplit < 0) return split(s, sep, maxSplit);
        String d = String.valueOf(sep);
        List<String> out = new ArrayList<>();
        int end = s.length();
        while (out.size() < maxSplit) {
            int at = s.lastIndexOf(d, end - d.length());
            if (at < 0) break;
            out.addFirst(s.substring(at + d.length(), end));
            end = at;
        }
        out.addFirst(s.substring(0, end));
        return out;
    }

    private static String join(String sep, Object items) {
        List<String> parts = new ArrayList<>();
        if (items instanceof Iterable<?> it) it.forEach(o -> parts.add(String.valueOf(o)));
        else parts.add(String.valueOf(items));
        return String.join(sep, parts);
    }

    private static long count(String s, String sub) {
        if (sub.isEmpty()) return s.length() + 1;
        long n = 0;
        for (int i = s.indexOf(sub); i >= 0; i = s.indexOf(sub, i + sub.length())) n++;
        return n;
    }

    private static String replace(String s, String from, String to, int max) {
        if (max < 0) return s.replace(from, to);
        StringBuilder sb = new StringBuilder();
        int pos = 0;
        for (int n = 0; n < max; n++) {
            int at = s.indexOf(from, pos);
            if (at < 0) break;
            sb.append(s, pos, at).append(to);
            pos = at + from.length();
        }
        return sb.append(s.substring(pos)).toString();
    }

    // Property access is not ours: leave it unresolved for the next resolver.
    @Override public Object getValue(ELContext context, Object base, Object property) { return null; }

    @Override public Class<?> getType(ELContext context, Object base, Object property) { return null; }

    @Override public void setValue(ELContext context, Object base, Object property, Object value) { }

    @Override public boolean isReadOnly(ELContext context, Object base, Object property) { return true; }

    @Override public Iterator<FeatureDescriptor> getFeatureDescriptors(ELContext context, Object base) { return null; }

    @Override public Class<?> getCommonPropertyType(ELContext context, Object base) { return null; }
}
