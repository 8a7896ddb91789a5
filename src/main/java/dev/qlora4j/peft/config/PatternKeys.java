package dev.qlora4j.peft.config;

import java.util.Map;
import java.util.regex.Pattern;
import java.util.regex.PatternSyntaxException;

/**
 * peft's get_pattern_key (utils/other.py), used for rank_pattern and alpha_pattern: the first key,
 * in the map's order, for which re.match(r"(.*\.)?(KEY)$", modulePath) succeeds, i.e. KEY (a
 * regex) matches the whole path or a dotted suffix of it. "q_proj" therefore matches
 * "model.layers.0.self_attn.q_proj" but not "model.layers.0.self_attn.xq_proj";
 * "layers\\.0\\..*" or "model.layers.0.self_attn.q_proj" select single layers.
 */
final class PatternKeys {
    private PatternKeys() {}

    /** The first matching key, or null when none matches (peft then uses the default r / alpha). */
    static String find(Iterable<String> keys, String modulePath) {
        for (String key : keys) {
            if (compile(key).matcher(modulePath).matches()) return key;
        }
        return null;
    }

    static <V> V lookup(Map<String, V> patterns, String modulePath, V dflt) {
        String key = find(patterns.keySet(), modulePath);
        return key == null ? dflt : patterns.get(key);
    }

    static Pattern compile(String key) {
        try {
            return Pattern.compile("(?:.*\\.)?(?:" + key + ")");
        } catch (PatternSyntaxException e) {
            throw new IllegalArgumentException("rank_pattern/alpha_pattern key '" + key + "' is not a valid regex: " + e.getDescription(), e);
        }
    }
}
