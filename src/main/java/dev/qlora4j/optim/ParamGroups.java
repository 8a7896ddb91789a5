package dev.qlora4j.optim;

import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Locale;
import java.util.Set;
import java.util.regex.Pattern;

/**
 * Splits parameters into a decayed and a non-decayed group the way transformers' Trainer does
 * (get_decay_parameter_names + create_optimizer): biases and normalization weights get no weight
 * decay. Without module types at hand the rule is transformers' name rule: the lower-cased name
 * contains "bias", "layernorm" or "rmsnorm", or has a path component "norm" or ending in "_norm"
 * (Llama's "model.norm.weight", Qwen3's "q_norm.weight").
 */
public final class ParamGroups {
    private static final Pattern NORM_COMPONENT = Pattern.compile("(?:^|\\.)norm(?:$|\\.)|_norm(?:$|\\.)");

    private ParamGroups() {}

    /** True when weight decay applies to the parameter of this name. */
    public static boolean decays(String name) {
        String n = name.toLowerCase(Locale.ROOT);
        if (n.contains("bias") || n.contains("layernorm") || n.contains("rmsnorm")) return false;
        return !NORM_COMPONENT.matcher(n).find();
    }

    /**
     * Two groups in transformers' order: [decayed params with {@code weightDecay}, the others with 0].
     * Duplicate names are an error (each parameter must be updated once per step).
     */
    public static List<ParamGroup> split(List<? extends Param> params, double weightDecay) {
        List<Param> decay = new ArrayList<>();
        List<Param> noDecay = new ArrayList<>();
        Set<String> seen = new HashSet<>();
        for (Param p : params) {
            if (!seen.add(p.name())) {
                throw new IllegalArgumentException("parameter '" + p.name() + "' is listed twice; pass each trainable tensor once");
            }
            (decays(p.name()) ? decay : noDecay).add(p);
        }
        return List.of(new ParamGroup(decay, weightDecay), new ParamGroup(noDecay, 0.0));
    }
}
