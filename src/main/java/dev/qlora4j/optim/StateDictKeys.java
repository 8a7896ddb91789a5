package dev.qlora4j.optim;

import dev.qlora4j.tensor.Tensor;

import java.util.HashMap;
import java.util.Map;
import java.util.TreeMap;

/**
 * The key layout of an optimizer state dict, shared by the host optimizers and the CUDA ones so that checkpoints
 * move between them: "state.&lt;parameter name&gt;.&lt;slot&gt;" (slots such as exp_avg, exp_avg_sq, step).
 */
public final class StateDictKeys {
    private StateDictKeys() {}

    public static final String PREFIX = "state.";

    /** The key of one slot of one parameter. */
    public static String key(String param, String slot) { return PREFIX + param + "." + slot; }

    /**
     * Groups a state dict by parameter (sorted by name), slot name -> tensor. A key outside the layout, or one for a
     * parameter that is not in {@code trained}, is an error that says how to resume correctly.
     */
    public static Map<String, Map<String, Tensor>> byParameter(Map<String, Tensor> dict, Map<String, ?> trained) {
        Map<String, Map<String, Tensor>> perParam = new TreeMap<>();
        for (Map.Entry<String, Tensor> e : dict.entrySet()) {
            String key = e.getKey();
            int dot = key.lastIndexOf('.');
            if (!key.startsWith(PREFIX) || dot <= PREFIX.length()) {
                throw new IllegalArgumentException("optimizer state entry '" + key + "' is not named state.<param>.<slot>; "
                        + "load a file written by this optimizer");
            }
            String param = key.substring(PREFIX.length(), dot);
            if (!trained.containsKey(param)) {
                String first = trained.isEmpty() ? "(none)" : "'" + trained.keySet().iterator().next() + "'";
                throw new IllegalArgumentException("optimizer state has an entry for parameter '" + param
                        + "' that this optimizer does not train (its " + trained.size() + " parameters start with "
                        + first + "); resume with the same adapter configuration");
            }
            perParam.computeIfAbsent(param, k -> new HashMap<>()).put(key.substring(dot + 1), e.getValue());
        }
        return perParam;
    }
}
