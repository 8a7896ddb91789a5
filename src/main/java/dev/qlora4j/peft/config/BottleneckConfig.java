package dev.qlora4j.peft.config;

import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * Bottleneck adapters (Houlsby, Pfeiffer, parallel), configured in peft's file style with our own
 * peft_type "BOTTLENECK". peft has no bottleneck adapters; the fields and defaults follow
 * AdapterHub's BnConfig (adapters library), whose names are kept:
 *
 * <ul>
 *   <li>bottleneck size: {@code bottleneckSize} if set, else hidden_size / reduction_factor;</li>
 *   <li>non_linearity: relu, silu (= swish), gelu, gelu_new or tanh;</li>
 *   <li>mh_adapter: an adapter after the attention block; output_adapter: one after the MLP;</li>
 *   <li>is_parallel: adapter applied in parallel to the block (He et al.) instead of after it,
 *       its output multiplied by scaling (a number, or "learned");</li>
 *   <li>original_ln_before / original_ln_after, residual_before_ln, ln_before / ln_after: where
 *       the model's own norm and residual sit relative to the adapter, and optional new norms;</li>
 *   <li>layers_to_transform: layer indices that get adapters (null: all).</li>
 * </ul>
 *
 * Presets: {@link #houlsby(int)} (DoubleSeqBnConfig), {@link #pfeiffer(int)} (SeqBnConfig),
 * {@link #parallel(int)} (ParBnConfig).
 */
public record BottleneckConfig(
        Integer bottleneckSize, double reductionFactor, String nonLinearity,
        boolean mhAdapter, boolean outputAdapter, boolean isParallel, Scaling scaling,
        boolean originalLnBefore, boolean originalLnAfter, boolean residualBeforeLn, boolean lnBefore, boolean lnAfter,
        String initWeights, double dropout, List<Integer> layersToTransform,
        String taskType, String baseModelNameOrPath, String revision, boolean inferenceMode,
        Map<String, Object> extra) implements PeftConfig {

    public static final String PEFT_TYPE = "BOTTLENECK";

    public static final List<String> NON_LINEARITIES = List.of("relu", "silu", "swish", "gelu", "gelu_new", "tanh");

    public static final List<String> INIT_WEIGHTS = List.of("bert", "mam_adapter", "houlsby");

    /** Output scale of the adapter: a constant, or one learned scalar. */
    public record Scaling(double value, boolean learned) {
        public static final Scaling ONE = new Scaling(1.0, false);

        public static Scaling fixed(double v) { return new Scaling(v, false); }

        public static Scaling learnedScalar() { return new Scaling(1.0, true); }

        Object toJsonValue() { return learned ? "learned" : value; }
    }

    public BottleneckConfig {
        if (bottleneckSize != null && bottleneckSize <= 0) throw new IllegalArgumentException("bottleneck_size must be positive, got " + bottleneckSize);
        if (!(reductionFactor > 0)) throw new IllegalArgumentException("reduction_factor must be > 0, got " + reductionFactor);
        if (nonLinearity == null || !NON_LINEARITIES.contains(nonLinearity.toLowerCase(java.util.Locale.ROOT))) {
            throw new IllegalArgumentException("non_linearity must be one of " + NON_LINEARITIES + ", got " + nonLinearity);
        }
        nonLinearity = nonLinearity.toLowerCase(java.util.Locale.ROOT);
        if (!mhAdapter && !outputAdapter) {
            throw new IllegalArgumentException("a bottleneck config needs mh_adapter (after attention) or output_adapter (after the MLP), or both");
        }
        if (scaling == null) scaling = Scaling.ONE;
        if (initWeights == null) initWeights = "bert";
        if (!INIT_WEIGHTS.contains(initWeights)) throw new IllegalArgumentException("init_weights must be one of " + INIT_WEIGHTS + ", got " + initWeights);
        if (!(dropout >= 0 && dropout < 1)) throw new IllegalArgumentException("dropout must be in [0, 1), got " + dropout);
        layersToTransform = layersToTransform == null ? null : List.copyOf(layersToTransform);
        PeftConfig.checkTaskType(taskType);
        extra = Collections.unmodifiableMap(new TreeMap<>(extra == null ? Map.of() : extra));
    }

    /** Houlsby et al. (AdapterHub DoubleSeqBnConfig): adapters after attention and MLP, swish, reduction 16. */
    public static BottleneckConfig houlsby(int reductionFactor) {
        return new BottleneckConfig(null, reductionFactor, "swish", true, true, false, Scaling.ONE,
                false, true, true, false, false, "bert", 0.0, null, "CAUSAL_LM", null, null, false, Map.of());
    }

    /** Pfeiffer et al. (AdapterHub SeqBnConfig): one adapter after the MLP, relu, reduction 16. */
    public static BottleneckConfig pfeiffer(int reductionFactor) {
        return new BottleneckConfig(null, reductionFactor, "relu", false, true, false, Scaling.ONE,
                true, true, true, false, false, "bert", 0.0, null, "CAUSAL_LM", null, null, false, Map.of());
    }

    /** He et al. parallel adapter (AdapterHub ParBnConfig): parallel to the MLP, relu, reduction 2, scaling 4. */
    public static BottleneckConfig parallel(int reductionFactor) {
        return new BottleneckConfig(null, reductionFactor, "relu", false, true, true, Scaling.fixed(4.0),
                false, true, true, false, false, "mam_adapter", 0.0, null, "CAUSAL_LM", null, null, false, Map.of());
    }

    @Override public String peftType() { return PEFT_TYPE; }

    /** The bottleneck width for a model of {@code hiddenSize}: bottleneck_size, else int(hidden / reduction_factor). */
    public int bottleneckSize(int hiddenSize) {
        int size = bottleneckSize != null ? bottleneckSize : (int) (hiddenSize / reductionFactor);
        if (size <= 0) {
            throw new IllegalArgumentException("reduction_factor " + reductionFactor + " leaves no bottleneck for hidden size " + hiddenSize
                    + "; lower reduction_factor or set bottleneck_size");
        }
        return size;
    }

    /** Whether layer {@code index} gets adapters. */
    public boolean appliesToLayer(int index) {
        return layersToTransform == null || layersToTransform.contains(index);
    }

    @Override
    public Map<String, Object> toMap() {
        Map<String, Object> m = new TreeMap<>(extra);
        m.put("base_model_name_or_path", baseModelNameOrPath);
        m.put("bottleneck_size", bottleneckSize);
        m.put("dropout", dropout);
        m.put("inference_mode", inferenceMode);
        m.put("init_weights", initWeights);
        m.put("is_parallel", isParallel);
        m.put("layers_to_transform", layersToTransform);
        m.put("ln_after", lnAfter);
        m.put("ln_before", lnBefore);
        m.put("mh_adapter", mhAdapter);
        m.put("non_linearity", nonLinearity);
        m.put("original_ln_after", originalLnAfter);
        m.put("original_ln_before", originalLnBefore);
        m.put("output_adapter", outputAdapter);
        m.put("peft_type", PEFT_TYPE);
        m.put("reduction_factor", PeftJson.number(reductionFactor));
        m.put("residual_before_ln", residualBeforeLn);
        m.put("revision", revision);
        m.put("scaling", scaling.toJsonValue());
        m.put("task_type", taskType);
        return m;
    }

    /** Reads a BOTTLENECK file; absent keys take AdapterHub BnConfig's defaults (reduction_factor 16, relu, output adapter only). */
    static BottleneckConfig fromFields(Fields f) {
        f.take("peft_type");
        Object rawScaling = f.take("scaling");
        Scaling scaling;
        if (rawScaling == null) scaling = Scaling.ONE;
        else if (rawScaling instanceof Number n) scaling = Scaling.fixed(n.doubleValue());
        else if ("learned".equals(rawScaling)) scaling = Scaling.learnedScalar();
        else throw f.bad("scaling", "a number or \"learned\"", rawScaling);
        Double rf = f.number("reduction_factor", 16.0);
        Double dropout = f.number("dropout", 0.0);
        return new BottleneckConfig(f.integer("bottleneck_size", null), rf == null ? 16.0 : rf, f.string("non_linearity", "relu"),
                f.bool("mh_adapter", false), f.bool("output_adapter", true), f.bool("is_parallel", false), scaling,
                f.bool("original_ln_before", false), f.bool("original_ln_after", true), f.bool("residual_before_ln", true),
                f.bool("ln_before", false), f.bool("ln_after", false), f.string("init_weights", "bert"),
                dropout == null ? 0.0 : dropout, f.ints("layers_to_transform"),
                f.string("task_type", null), f.string("base_model_name_or_path", null), f.string("revision", null),
                f.bool("inference_mode", false), f.rest());
    }

    private BottleneckConfig with(String base, String rev, boolean inference) {
        return new BottleneckConfig(bottleneckSize, reductionFactor, nonLinearity, mhAdapter, outputAdapter, isParallel, scaling,
                originalLnBefore, originalLnAfter, residualBeforeLn, lnBefore, lnAfter, initWeights, dropout, layersToTransform,
                taskType, base, rev, inference, extra);
    }

    @Override public BottleneckConfig withInferenceMode(boolean v) { return with(baseModelNameOrPath, revision, v); }

    @Override public BottleneckConfig withBaseModel(String base, String rev) { return with(base, rev, inferenceMode); }
}
