package dev.qlora4j.peft.config;

import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.regex.Pattern;
import java.util.regex.PatternSyntaxException;

/**
 * peft's target_modules / exclude_modules value: a list of names (each matches a module path
 * equal to it or ending in "." + name), a regular expression that must match the whole path
 * (re.fullmatch), or, for target_modules only, "all-linear" (every linear layer but the output
 * head).
 *
 * <p>Regexes are compiled with java.util.regex; the constructs peft configs use (alternation,
 * classes, groups, quantifiers, .*) mean the same there as in Python's re.
 */
public sealed interface ModuleSelector {
    /** peft's INCLUDE_LINEAR_LAYERS_SHORTHAND. */
    String ALL_LINEAR = "all-linear";

    /** Names matched by equality or as a dotted suffix; a set in peft, kept here in first-seen order. */
    record Names(List<String> names) implements ModuleSelector {
        public Names {
            List<String> unique = new ArrayList<>(new LinkedHashSet<>(names));
            for (String n : unique) {
                if (n == null || n.isEmpty()) throw new IllegalArgumentException("module names must be non-empty strings, got " + names);
            }
            names = List.copyOf(unique);
        }

        /** path == name or path ends with "." + name, for any name. */
        public boolean matches(String path) {
            if (names.contains(path)) return true;
            for (String n : names) if (path.endsWith("." + n)) return true;
            return false;
        }
    }

    /** A regex that must match the entire module path. */
    record Regex(String pattern) implements ModuleSelector {
        public Regex {
            try {
                Pattern.compile(pattern);
            } catch (PatternSyntaxException e) {
                throw new IllegalArgumentException("module regex '" + pattern + "' does not compile: " + e.getDescription(), e);
            }
        }

        public boolean matches(String path) { return Pattern.compile(pattern).matcher(path).matches(); }
    }

    /** "all-linear". */
    record AllLinear() implements ModuleSelector {}

    static ModuleSelector names(String... names) { return new Names(List.of(names)); }

    static ModuleSelector regex(String pattern) { return new Regex(pattern); }

    static ModuleSelector allLinear() { return new AllLinear(); }

    /** The value as peft writes it: a list, or a string for a regex and for "all-linear". */
    default Object toJsonValue() {
        return switch (this) {
            case Names n -> n.names();
            case Regex r -> r.pattern();
            case AllLinear a -> ALL_LINEAR;
        };
    }

    /** Python's str() of the value, as peft puts it in error messages: {'q_proj', 'v_proj'} or the pattern. */
    default String pythonRepr() {
        return switch (this) {
            case Names n -> "{" + String.join(", ", n.names().stream().map(s -> "'" + s + "'").toList()) + "}";
            case Regex r -> r.pattern();
            case AllLinear a -> ALL_LINEAR;
        };
    }

    /** Reads target_modules: a string is "all-linear" (case-insensitive, as peft) or a regex. */
    static ModuleSelector parseTarget(Object json, Fields f, String key) {
        if (json == null) return null;
        if (json instanceof String s) return s.equalsIgnoreCase(ALL_LINEAR) ? new AllLinear() : new Regex(s);
        return new Names(listOfStrings(json, f, key));
    }

    /** Reads exclude_modules: a string is always a regex. */
    static ModuleSelector parseExclude(Object json, Fields f, String key) {
        if (json == null) return null;
        if (json instanceof String s) return new Regex(s);
        return new Names(listOfStrings(json, f, key));
    }

    private static List<String> listOfStrings(Object json, Fields f, String key) {
        if (json instanceof List<?> l && l.stream().allMatch(o -> o instanceof String)) {
            return l.stream().map(o -> (String) o).toList();
        }
        throw f.bad(key, "a list of module names, a regex string or \"all-linear\"", json);
    }
}
