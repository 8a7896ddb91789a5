package dev.qlora4j.peft.config;

import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Which modules of a model get LoRA adapters, decided as peft decides (tuners_utils.py
 * check_target_module_exists, inject_adapter, _maybe_include_all_linear_layers):
 *
 * <ol>
 *   <li>exclude_modules first: a regex fully matching the path, or a name equal to the path or a
 *       dotted suffix of it, excludes the module;</li>
 *   <li>modules listed in modules_to_save are excluded too (re.match(r"(^|.*\.)NAME($|\..*)"));</li>
 *   <li>target_modules: a regex must fully match the path; a list matches a path equal to an
 *       entry (no further checks) or ending in "." + entry, and then, if layers_to_transform is
 *       set, only when the layer index in the path is one of them;</li>
 *   <li>"all-linear" becomes the set of every linear module path except the output head.</li>
 * </ol>
 *
 * The layer index is the number after ".{layers_pattern}." (any of the patterns), or, without a
 * pattern, the last ".NAME.NUMBER." in the path (peft: re.match(r".*\.[^.]*\.(\d+)\.", path)).
 */
public final class TargetModules {
    /** peft's default target_modules per model_type (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING), for the types we load. */
    public static final Map<String, List<String>> DEFAULTS_BY_MODEL_TYPE = Map.of(
            "llama", List.of("q_proj", "v_proj"),
            "mistral", List.of("q_proj", "v_proj"),
            "mixtral", List.of("q_proj", "v_proj"),
            "qwen2", List.of("q_proj", "v_proj"),
            "gemma", List.of("q_proj", "v_proj"),
            "gemma2", List.of("q_proj", "v_proj"),
            "phi3", List.of("qkv_proj"),
            "gpt2", List.of("c_attn"),
            "falcon", List.of("query_key_value"));

    /** The output head transformers' get_output_embeddings() returns for causal LMs. */
    public static final String DEFAULT_OUTPUT_HEAD = "lm_head";

    private TargetModules() {}

    public enum Match { TARGETED, EXCLUDED, UNMATCHED }

    /** The outcome for every module path given, each list in input order. */
    public record Selection(List<String> targeted, List<String> excluded, List<String> unmatched) {
        public Selection {
            targeted = List.copyOf(targeted);
            excluded = List.copyOf(excluded);
            unmatched = List.copyOf(unmatched);
        }
    }

    /**
     * Fills a missing target_modules with peft's default for the model type (as
     * _prepare_adapter_config does); other configs are returned unchanged.
     */
    public static LoraConfig resolve(LoraConfig config, String modelType) {
        if (config.targetModules() != null) return config;
        List<String> d = DEFAULTS_BY_MODEL_TYPE.get(modelType == null ? "" : modelType.toLowerCase(Locale.ROOT));
        if (d == null) {
            throw new IllegalArgumentException("Please specify `target_modules` in `peft_config`: model type '" + modelType
                    + "' has no default (known: " + new java.util.TreeSet<>(DEFAULTS_BY_MODEL_TYPE.keySet())
                    + "); e.g. target_modules=[\"q_proj\", \"v_proj\"] or \"all-linear\"");
        }
        return config.toBuilder().targetModules(new ModuleSelector.Names(d)).build();
    }

    /**
     * peft's check_target_module_exists for one module path. target_modules must be a list or a
     * regex here: resolve "all-linear" with {@link #select} and null with {@link #resolve}.
     */
    public static Match check(LoraConfig config, String path) {
        ModuleSelector ex = config.excludeModules();
        if (ex != null) {
            boolean excluded = switch (ex) {
                case ModuleSelector.Regex r -> r.matches(path);
                case ModuleSelector.Names n -> n.matches(path);
                case ModuleSelector.AllLinear a -> false; // rejected by LoraConfig
            };
            if (excluded) return Match.EXCLUDED;
        }
        if (config.modulesToSave() != null) {
            for (String m : config.modulesToSave()) {
                if (Pattern.compile("(^|.*\\.)" + m + "($|\\..*)").matcher(path).lookingAt()) return Match.EXCLUDED;
            }
        }
        ModuleSelector target = config.targetModules();
        switch (target) {
            case null -> throw new IllegalStateException("target_modules is not set; call TargetModules.resolve(config, modelType) first");
            case ModuleSelector.AllLinear a -> throw new IllegalStateException("\"all-linear\" needs the model's linear layers; use TargetModules.select");
            case ModuleSelector.Regex r -> {
                return r.matches(path) ? Match.TARGETED : Match.UNMATCHED;
            }
            case ModuleSelector.Names n -> {
                if (n.names().contains(path)) return Match.TARGETED;
                boolean found = false;
                for (String name : n.names()) {
                    if (path.endsWith("." + name)) {
                        found = true;
                        break;
                    }
                }
                if (!found) return Match.UNMATCHED;
                List<Integer> layers = config.layersToTransform();
                if (layers == null || layers.isEmpty()) return Match.TARGETED;
                Integer index = layerIndex(path, config.layersPattern());
                return index != null && layers.contains(index) ? Match.TARGETED : Match.UNMATCHED;
            }
        }
    }

    /** The layer index in a module path as peft extracts it, or null when there is none. */
    public static Integer layerIndex(String path, List<String> layersPattern) {
        if (layersPattern == null || layersPattern.isEmpty()) {
            Matcher m = Pattern.compile(".*\\.[^.]*\\.(\\d+)\\.").matcher(path);
            return m.lookingAt() ? Integer.valueOf(m.group(1)) : null;
        }
        for (String p : layersPattern) {
            Matcher m = Pattern.compile(".*\\." + p + "\\.(\\d+)\\.").matcher(path);
            if (m.lookingAt()) return Integer.valueOf(m.group(1));
        }
        return null;
    }

    /** {@link #select(LoraConfig, List, String)} with the output head "lm_head". */
    public static Selection select(LoraConfig config, List<String> linearModulePaths) {
        return select(config, linearModulePaths, DEFAULT_OUTPUT_HEAD);
    }

    /**
     * Decides every linear module of the model.
     *
     * @param linearModulePaths the model's linear layers, e.g. "model.layers.0.self_attn.q_proj", ..., "lm_head"
     * @param outputHeadPath    the output projection that "all-linear" leaves out (null: none)
     * @throws IllegalArgumentException when no module is targeted, with peft's message, the
     *         model's linear module names and what to change
     */
    public static Selection select(LoraConfig config, List<String> linearModulePaths, String outputHeadPath) {
        LoraConfig effective = config;
        if (config.targetModules() instanceof ModuleSelector.AllLinear) {
            List<String> all = new ArrayList<>();
            for (String p : linearModulePaths) if (!p.equals(outputHeadPath)) all.add(p);
            effective = config.toBuilder().targetModules(new ModuleSelector.Names(all)).build();
        }
        List<String> targeted = new ArrayList<>(), excluded = new ArrayList<>(), unmatched = new ArrayList<>();
        for (String path : linearModulePaths) {
            switch (check(effective, path)) {
                case TARGETED -> targeted.add(path);
                case EXCLUDED -> excluded.add(path);
                case UNMATCHED -> unmatched.add(path);
            }
        }
        if (targeted.isEmpty()) throw new IllegalArgumentException(noTargetMessage(config, linearModulePaths, excluded, unmatched));
        return new Selection(targeted, excluded, unmatched);
    }

    private static String noTargetMessage(LoraConfig config, List<String> paths, List<String> excluded, List<String> unmatched) {
        StringBuilder sb = new StringBuilder();
        if (!excluded.isEmpty() && unmatched.isEmpty()) {
            sb.append("All modules were excluded. This is likely unintended. "
                    + "Check your `target_modules`, `exclude_modules` and `modules_to_save` configuration.");
        } else if (excluded.isEmpty()) {
            sb.append("Target modules ").append(config.targetModules().pythonRepr())
                    .append(" not found in the base model. Please check the target modules and try again.");
        } else {
            sb.append("No modules were targeted for adaptation. This might be caused by a combination of mismatched target "
                    + "modules and excluded modules. Please check your `target_modules` and `exclude_modules` configuration. "
                    + "You may also have only targeted modules that are marked to be saved (`modules_to_save`).");
        }
        if (config.layersToTransform() != null) sb.append(" Note: You specified 'layers_to_transform': ").append(config.layersToTransform()).append('.');
        if (config.layersPattern() != null) {
            sb.append(" You also specified 'layers_pattern': ")
                    .append(config.layersPattern().stream().map(s -> "'" + s + "'").toList()).append('.');
        }
        Set<String> names = new LinkedHashSet<>();
        for (String p : paths) names.add(p.substring(p.lastIndexOf('.') + 1));
        sb.append("\nThe model's linear modules are named ").append(String.join(", ", names));
        if (!paths.isEmpty()) sb.append(" (full paths like ").append(paths.getFirst()).append(')');
        sb.append(". Set target_modules to some of these names, to a regex that matches whole module paths, or to \"all-linear\"");
        if (config.layersToTransform() != null) {
            List<Integer> indices = new ArrayList<>(new LinkedHashSet<>(paths.stream().map(p -> layerIndex(p, config.layersPattern()))
                    .filter(java.util.Objects::nonNull).toList()));
            sb.append("; the layer indices found with this layers_pattern are ").append(indices.isEmpty() ? "none" : compactRange(indices));
        }
        return sb.append('.').toString();
    }

    private static String compactRange(List<Integer> indices) {
        List<Integer> sorted = indices.stream().sorted().toList();
        boolean contiguous = sorted.getLast() - sorted.getFirst() + 1 == sorted.size();
        return contiguous && sorted.size() > 2 ? sorted.getFirst() + ".." + sorted.getLast() : sorted.toString();
    }
}
