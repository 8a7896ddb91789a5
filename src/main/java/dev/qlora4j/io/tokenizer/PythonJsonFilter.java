package dev.qlora4j.io.tokenizer;

import com.hubspot.jinjava.interpret.JinjavaInterpreter;
import com.hubspot.jinjava.lib.filter.Filter;
import dev.qlora4j.json.PythonJson;

import java.util.Map;

/**
 * The {@code tojson} filter as transformers defines it for chat templates: Python's
 * json.dumps(x, ensure_ascii=False, indent=indent, sort_keys=False), i.e. ", " and ": "
 * separators (no spaces before newlines when indented), key order kept, non-ASCII kept.
 * (Jinjava's own tojson writes compact JSON, which changes tool-calling prompts.)
 */
final class PythonJsonFilter implements Filter {
    private static final PythonJson.Options TOJSON =
            PythonJson.Options.DEFAULTS.withEnsureAscii(false).withFallback(Object::toString);

    @Override
    public String getName() {
        return "tojson";
    }

    @Override
    public Object filter(Object var, JinjavaInterpreter interpreter, String... args) {
        return dumps(var, args.length > 0 && args[0] != null ? Integer.parseInt(args[0]) : -1);
    }

    @Override
    public Object filter(Object var, JinjavaInterpreter interpreter, Object[] args, Map<String, Object> kwargs) {
        Object indent = kwargs.containsKey("indent") ? kwargs.get("indent") : args.length > 0 ? args[0] : null;
        return dumps(var, indent instanceof Number n ? n.intValue() : -1);
    }

    /** json.dumps(v, ensure_ascii=False, indent=indent); indent &lt; 0 means None; other objects as their strings. */
    static String dumps(Object v, int indent) {
        return PythonJson.dumps(v, TOJSON.withIndent(indent));
    }
}
