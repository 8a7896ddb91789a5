package dev.qlora4j.peft.config;

import dev.qlora4j.json.PythonJson;

/**
 * peft's way of writing JSON: adapter_config.json is json.dumps(value, indent=2, sort_keys=True), so two-space
 * indent, keys sorted at every level, non-ASCII escaped, floats in repr form, no trailing newline.
 */
final class PeftJson {
    private static final PythonJson.Options FILE = PythonJson.Options.DEFAULTS.withIndent(2).withSortKeys(true);
    private static final PythonJson.Options ONE_LINE = PythonJson.Options.DEFAULTS.withSortKeys(true);

    private PeftJson() {}

    /** json.dumps(value, indent=2, sort_keys=True): the adapter_config.json text. */
    static String dumps(Object value) {
        return PythonJson.dumps(value, FILE);
    }

    /** json.dumps(value, sort_keys=True) without indent: one line, ", " and ": " separators (for messages). */
    static String dumpsCompact(Object value) {
        return PythonJson.dumps(value, ONE_LINE);
    }

    /** A number as peft wrote it: integral values as ints (8), others as floats (0.05). */
    static Object number(double v) {
        if (v == Math.rint(v) && Math.abs(v) < 1e15) return (long) v;
        return v;
    }
}
