package dev.qlora4j.peft.config;

import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * peft's LoraConfig (peft_type "LORA"), with peft's defaults: r 8, lora_alpha 8, lora_dropout 0.0,
 * bias "none", init_lora_weights true, everything else off/empty.
 *
 * <p>{@link #toJson()} writes the keys peft 0.14 writes (27 of them; the seven this engine does not
 * model, e.g. loftq_config or megatron_core, with peft's default values unless the parsed file had
 * others), plus any other keys a parsed file carried (newer peft versions add keys; they are kept
 * in {@link #extra()} and written back). List-valued settings are always written as lists
 * (layers_to_transform 3 becomes [3], which peft reads the same way).
 *
 * @param r                  default rank (> 0)
 * @param loraAlpha          default alpha (peft allows int or float)
 * @param targetModules      null = the model type's default (see {@link TargetModules#resolve})
 * @param excludeModules     null = exclude nothing
 * @param modulesToSave      extra modules trained and saved in full (e.g. "lm_head"), or null
 * @param layersToTransform  layer indices that get adapters, or null for all
 * @param layersPattern      names of the layer list in module paths ("layers", "h" ...), or null for any
 * @param rankPattern        regex key -> rank, first match in order (see {@link #rank(String)})
 * @param alphaPattern       regex key -> alpha
 * @param extra              other keys of the file, sorted
 */
public record LoraConfig(
        int r, double loraAlpha, double loraDropout,
        ModuleSelector targetModules, ModuleSelector excludeModules,
        LoraBias bias, boolean useRslora, boolean useDora, boolean fanInFanOut,
        InitLoraWeights initLoraWeights,
        List<String> modulesToSave, List<Integer> layersToTransform, List<String> layersPattern,
        Map<String, Integer> rankPattern, Map<String, Double> alphaPattern,
        String taskType, String baseModelNameOrPath, String revision, boolean inferenceMode,
        Map<String, Object> extra) implements PeftConfig {

    public static final String PEFT_TYPE = "LORA";

    /** Keys peft 0.14 writes that this engine does not model, with the values peft writes by default. */
    static final Map<String, Object> PASSTHROUGH_DEFAULTS;

    static {
        Map<String, Object> m = new TreeMap<>();
        m.put("auto_mapping", null);
        m.put("eva_config", null);
        m.put("layer_replication", null);
        m.put("loftq_config", Map.of());
        m.put("lora_bias", false);
        m.put("megatron_config", null);
        m.put("megatron_core", "megatron.core");
        PASSTHROUGH_DEFAULTS = Collections.unmodifiableMap(m);
    }

    public LoraConfig {
        if (r <= 0) throw new IllegalArgumentException("`r` should be a positive integer value but the value passed is " + r);
        if (!(loraDropout >= 0 && loraDropout < 1)) throw new IllegalArgumentException("lora_dropout must be in [0, 1), got " + loraDropout);
        if (!Double.isFinite(loraAlpha)) throw new IllegalArgumentException("lora_alpha must be a finite number, got " + loraAlpha);
        if (excludeModules instanceof ModuleSelector.AllLinear) {
            throw new IllegalArgumentException("exclude_modules cannot be \"all-linear\"; list the modules to exclude or give a regex");
        }
        boolean stringTarget = targetModules instanceof ModuleSelector.Regex || targetModules instanceof ModuleSelector.AllLinear;
        if (stringTarget && layersToTransform != null) {
            throw new IllegalArgumentException("`layers_to_transform` cannot be used when `target_modules` is a str.");
        }
        if (stringTarget && layersPattern != null) {
            throw new IllegalArgumentException("`layers_pattern` cannot be used when `target_modules` is a str.");
        }
        if (bias == null) bias = LoraBias.NONE;
        if (initLoraWeights == null) initLoraWeights = InitLoraWeights.DEFAULT;
        modulesToSave = modulesToSave == null ? null : List.copyOf(modulesToSave);
        layersToTransform = layersToTransform == null ? null : List.copyOf(layersToTransform);
        layersPattern = layersPattern == null ? null : List.copyOf(layersPattern);
        rankPattern = Collections.unmodifiableMap(new LinkedHashMap<>(rankPattern == null ? Map.of() : rankPattern));
        alphaPattern = Collections.unmodifiableMap(new LinkedHashMap<>(alphaPattern == null ? Map.of() : alphaPattern));
        rankPattern.forEach((k, v) -> {
            PatternKeys.compile(k);
            if (v == null || v <= 0) throw new IllegalArgumentException("rank_pattern['" + k + "'] must be a positive integer, got " + v);
        });
        alphaPattern.forEach((k, v) -> {
            PatternKeys.compile(k);
            if (v == null || !Double.isFinite(v)) throw new IllegalArgumentException("alpha_pattern['" + k + "'] must be a number, got " + v);
        });
        PeftConfig.checkTaskType(taskType);
        extra = Collections.unmodifiableMap(new TreeMap<>(extra == null ? Map.of() : extra));
    }

    /** peft's defaults with the given targets (the usual start: {@code LoraConfig.of(16, 32, "q_proj", "v_proj")}). */
    public static LoraConfig of(int r, double loraAlpha, String... targetModules) {
        return builder().r(r).loraAlpha(loraAlpha).targetModules(ModuleSelector.names(targetModules)).build();
    }

    public static Builder builder() { return new Builder(); }

    public Builder toBuilder() { return new Builder(this); }

    @Override public String peftType() { return PEFT_TYPE; }

    /** Rank of the adapter on {@code modulePath}: rank_pattern's first matching key, else r. */
    public int rank(String modulePath) {
        return PatternKeys.lookup(rankPattern, modulePath, r);
    }

    /** Alpha of the adapter on {@code modulePath}: alpha_pattern's first matching key, else lora_alpha. */
    public double alpha(String modulePath) {
        return PatternKeys.lookup(alphaPattern, modulePath, loraAlpha);
    }

    /** The LoRA output scale on {@code modulePath}: alpha / r, or alpha / sqrt(r) with use_rslora. */
    public double scaling(String modulePath) {
        int rank = rank(modulePath);
        double alpha = alpha(modulePath);
        return useRslora ? alpha / Math.sqrt(rank) : alpha / rank;
    }

    /**
     * Settings in the file that change what the adapter is but that this config only carries
     * through (e.g. "lora_bias=true", "layer_replication=[[0, 4], [2, 5]]", or a key of a newer peft
     * such as "target_parameters=[...]"). Code that builds LoRA layers should refuse a config with
     * any, naming them.
     */
    public List<String> unsupportedSettings() {
        List<String> out = new ArrayList<>();
        extra.forEach((k, v) -> {
            if (INERT_KEYS.contains(k)) return;
            boolean inactive = v == null || Boolean.FALSE.equals(v) || (v instanceof Map<?, ?> m && m.isEmpty())
                    || (v instanceof List<?> l && l.isEmpty());
            if (!inactive) out.add(k + "=" + PeftJson.dumpsCompact(v));
        });
        return out;
    }

    /** Keys whose value never changes the adapter's math. */
    private static final List<String> INERT_KEYS = List.of("auto_mapping", "megatron_core", "peft_version", "qalora_group_size");

    @Override
    public Map<String, Object> toMap() {
        Map<String, Object> m = new TreeMap<>(PASSTHROUGH_DEFAULTS);
        m.putAll(extra);
        m.put("alpha_pattern", numbers(alphaPattern));
        m.put("base_model_name_or_path", baseModelNameOrPath);
        m.put("bias", bias.json());
        m.put("exclude_modules", excludeModules == null ? null : excludeModules.toJsonValue());
        m.put("fan_in_fan_out", fanInFanOut);
        m.put("inference_mode", inferenceMode);
        m.put("init_lora_weights", initLoraWeights.toJsonValue());
        m.put("layers_pattern", layersPattern);
        m.put("layers_to_transform", layersToTransform);
        m.put("lora_alpha", PeftJson.number(loraAlpha));
        m.put("lora_dropout", loraDropout);
        m.put("modules_to_save", modulesToSave);
        m.put("peft_type", PEFT_TYPE);
        m.put("r", r);
        m.put("rank_pattern", new LinkedHashMap<>(rankPattern));
        m.put("revision", revision);
        m.put("target_modules", targetModules == null ? null : targetModules.toJsonValue());
        m.put("task_type", taskType);
        m.put("use_dora", useDora);
        m.put("use_rslora", useRslora);
        return m;
    }

    private static Map<String, Object> numbers(Map<String, Double> m) {
        Map<String, Object> out = new LinkedHashMap<>();
        m.forEach((k, v) -> out.put(k, PeftJson.number(v)));
        return out;
    }

    /** Reads the fields of an adapter_config.json object whose peft_type is LORA. */
    static LoraConfig fromFields(Fields f) {
        f.take("peft_type");
        f.take("runtime_config"); // peft drops it on load: runtime-only
        Builder b = builder()
                .r(orDefault(f.integer("r", 8), 8))
                .loraAlpha(orDefault(f.number("lora_alpha", 8.0), 8.0))
                .loraDropout(orDefault(f.number("lora_dropout", 0.0), 0.0))
                .targetModules(ModuleSelector.parseTarget(f.take("target_modules"), f, "target_modules"))
                .excludeModules(ModuleSelector.parseExclude(f.take("exclude_modules"), f, "exclude_modules"))
                .useRslora(f.bool("use_rslora", false))
                .useDora(f.bool("use_dora", false))
                .fanInFanOut(f.bool("fan_in_fan_out", false))
                .modulesToSave(f.strings("modules_to_save", false))
                .layersToTransform(f.ints("layers_to_transform"))
                .layersPattern(f.strings("layers_pattern", true))
                .taskType(f.string("task_type", null))
                .baseModelNameOrPath(f.string("base_model_name_or_path", null))
                .revision(f.string("revision", null))
                .inferenceMode(f.bool("inference_mode", false));
        String bias = f.string("bias", "none");
        b.bias(LoraBias.parse(bias == null ? "none" : bias));
        Object init = f.take("init_lora_weights");
        if (init == null || init instanceof Boolean) b.initLoraWeights(InitLoraWeights.of(init == null || (Boolean) init));
        else if (init instanceof String s) b.initLoraWeights(InitLoraWeights.of(s));
        else throw f.bad("init_lora_weights", "true, false or a method name", init);
        Map<String, Integer> ranks = new LinkedHashMap<>();
        f.object("rank_pattern").forEach((k, v) -> {
            if (!(v instanceof Long l)) throw f.bad("rank_pattern", "an object of integer ranks", v);
            ranks.put(k, Math.toIntExact(l));
        });
        Map<String, Double> alphas = new LinkedHashMap<>();
        f.object("alpha_pattern").forEach((k, v) -> {
            if (!(v instanceof Number n)) throw f.bad("alpha_pattern", "an object of numbers", v);
            alphas.put(k, n.doubleValue());
        });
        b.rankPattern(ranks).alphaPattern(alphas);
        Map<String, Object> extra = new TreeMap<>(f.rest());
        // keys at peft's default carry no information: dropping them makes parse(toJson(c)) equal c
        PASSTHROUGH_DEFAULTS.forEach((k, v) -> {
            if (extra.containsKey(k) && java.util.Objects.equals(extra.get(k), v)) extra.remove(k);
        });
        return b.extra(extra).build();
    }

    private static <T> T orDefault(T v, T d) { return v == null ? d : v; }

    @Override
    public LoraConfig withInferenceMode(boolean inferenceMode) { return toBuilder().inferenceMode(inferenceMode).build(); }

    @Override
    public LoraConfig withBaseModel(String baseModelNameOrPath, String revision) {
        return toBuilder().baseModelNameOrPath(baseModelNameOrPath).revision(revision).build();
    }

    /** Mutable builder with peft's defaults. */
    public static final class Builder {
        private int r = 8;
        private double loraAlpha = 8;
        private double loraDropout = 0.0;
        private ModuleSelector targetModules;
        private ModuleSelector excludeModules;
        private LoraBias bias = LoraBias.NONE;
        private boolean useRslora, useDora, fanInFanOut;
        private InitLoraWeights initLoraWeights = InitLoraWeights.DEFAULT;
        private List<String> modulesToSave;
        private List<Integer> layersToTransform;
        private List<String> layersPattern;
        private Map<String, Integer> rankPattern = new LinkedHashMap<>();
        private Map<String, Double> alphaPattern = new LinkedHashMap<>();
        private String taskType, baseModelNameOrPath, revision;
        private boolean inferenceMode;
        private Map<String, Object> extra = Map.of();

        private Builder() {}

        private Builder(LoraConfig c) {
            r = c.r; loraAlpha = c.loraAlpha; loraDropout = c.loraDropout;
            targetModules = c.targetModules; excludeModules = c.excludeModules;
            bias = c.bias; useRslora = c.useRslora; useDora = c.useDora; fanInFanOut = c.fanInFanOut;
            initLoraWeights = c.initLoraWeights;
            modulesToSave = c.modulesToSave; layersToTransform = c.layersToTransform; layersPattern = c.layersPattern;
            rankPattern = new LinkedHashMap<>(c.rankPattern); alphaPattern = new LinkedHashMap<>(c.alphaPattern);
            taskType = c.taskType; baseModelNameOrPath = c.baseModelNameOrPath; revision = c.revision;
            inferenceMode = c.inferenceMode; extra = c.extra;
        }

        public Builder r(int r) { this.r = r; return this; }
        public Builder loraAlpha(double a) { this.loraAlpha = a; return this; }
        public Builder loraDropout(double d) { this.loraDropout = d; return this; }
        public Builder targetModules(ModuleSelector t) { this.targetModules = t; return this; }
        public Builder targetModules(String... names) { this.targetModules = ModuleSelector.names(names); return this; }
        public Builder excludeModules(ModuleSelector e) { this.excludeModules = e; return this; }
        public Builder bias(LoraBias b) { this.bias = b; return this; }
        public Builder useRslora(boolean v) { this.useRslora = v; return this; }
        public Builder useDora(boolean v) { this.useDora = v; return this; }
        public Builder fanInFanOut(boolean v) { this.fanInFanOut = v; return this; }
        public Builder initLoraWeights(InitLoraWeights i) { this.initLoraWeights = i; return this; }
        public Builder modulesToSave(List<String> m) { this.modulesToSave = m; return this; }
        public Builder layersToTransform(List<Integer> l) { this.layersToTransform = l; return this; }
        public Builder layersPattern(List<String> p) { this.layersPattern = p; return this; }
        public Builder rankPattern(Map<String, Integer> p) { this.rankPattern = new LinkedHashMap<>(p); return this; }
        public Builder alphaPattern(Map<String, Double> p) { this.alphaPattern = new LinkedHashMap<>(p); return this; }
        public Builder taskType(String t) { this.taskType = t; return this; }
        public Builder baseModelNameOrPath(String b) { this.baseModelNameOrPath = b; return this; }
        public Builder revision(String r) { this.revision = r; return this; }
        public Builder inferenceMode(boolean v) { this.inferenceMode = v; return this; }
        public Builder extra(Map<String, Object> e) { this.extra = e; return this; }

        public LoraConfig build() {
            return new LoraConfig(r, loraAlpha, loraDropout, targetModules, excludeModules, bias, useRslora, useDora, fanInFanOut,
                    initLoraWeights, modulesToSave, layersToTransform, layersPattern, rankPattern, alphaPattern,
                    taskType, baseModelNameOrPath, revision, inferenceMode, extra);
        }
    }
}
