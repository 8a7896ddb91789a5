package dev.qlora4j.model;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;

import java.util.List;
import java.util.Map;

/**
 * RoPE scaling parameters from config.json ({@code rope_scaling}, or transformers 5's
 * {@code rope_parameters}) and the inverse frequencies they imply.
 *
 * <p>Fields are kept as written (null when absent), so {@link #writeTo} gives back what was read;
 * defaults are applied where the frequencies are computed, as transformers 5's
 * {@code modeling_rope_utils} does: {@code original_max_position_embeddings} defaults to
 * {@code max_position_embeddings} for llama3 and yarn, yarn's {@code factor} defaults to
 * max_position_embeddings / original_max_position_embeddings, beta_fast/beta_slow to 32/1.
 *
 * <p>Numerics ({@link #invFreq}): transformers builds inv_freq in float32 with one torch op per
 * step; every step is mirrored here with one float32 operation (Java float arithmetic rounds
 * each operation to float32, as torch's element-wise kernels do), in the same order, including
 * torch's {@code scalar / tensor == tensor.reciprocal() * scalar}. The one op that cannot be
 * mirrored bit for bit is {@code base ** exponent}: torch's CPU kernel uses SLEEF's powf
 * (error at most 1 ulp); here the power is evaluated in float64 and rounded once to float32
 * (correctly rounded), so single elements may differ from torch by 1 ulp.
 *
 * @param ropeType                      "linear", "dynamic", "llama3" or "yarn"
 * @param factor                        scaling factor (null only for yarn, where it is derived)
 * @param lowFreqFactor                 llama3
 * @param highFreqFactor                llama3
 * @param originalMaxPositionEmbeddings llama3/yarn pre-extension context length, null = max_position_embeddings
 * @param attentionFactor               yarn: scale applied to cos/sin; null = derived from factor/mscale
 * @param betaFast                      yarn, null = 32
 * @param betaSlow                      yarn, null = 1
 * @param mscale                        yarn (DeepSeek style), nullable
 * @param mscaleAllDim                  yarn (DeepSeek style), nullable
 * @param truncate                      yarn: floor/ceil the correction range, null = true
 */
public record RopeScaling(String ropeType, Double factor, Double lowFreqFactor, Double highFreqFactor,
                          Integer originalMaxPositionEmbeddings, Double attentionFactor, Double betaFast,
                          Double betaSlow, Double mscale, Double mscaleAllDim, Boolean truncate) {

    /** The scaled RoPE types this class computes (plain RoPE is a null RopeScaling). */
    public static final List<String> SUPPORTED_TYPES = List.of("linear", "dynamic", "llama3", "yarn");

    public RopeScaling {
        if (!SUPPORTED_TYPES.contains(ropeType)) {
            throw new IllegalArgumentException("rope type '" + ropeType + "' is not supported (supported: default, "
                    + String.join(", ", SUPPORTED_TYPES) + ")");
        }
        String where = "rope_scaling (rope_type '" + ropeType + "')";
        if (factor == null && !ropeType.equals("yarn")) {
            throw new IllegalArgumentException(where + " needs a 'factor'");
        }
        if (factor != null && !(factor > 0)) {
            throw new IllegalArgumentException(where + ": factor must be > 0, got " + factor);
        }
        if (ropeType.equals("llama3")) {
            if (lowFreqFactor == null || highFreqFactor == null) {
                throw new IllegalArgumentException(where + " needs 'low_freq_factor' and 'high_freq_factor'");
            }
            if (!(highFreqFactor > lowFreqFactor)) {
                throw new IllegalArgumentException(where + ": high_freq_factor (" + highFreqFactor
                        + ") must be greater than low_freq_factor (" + lowFreqFactor + ")");
            }
        }
        if (originalMaxPositionEmbeddings != null && originalMaxPositionEmbeddings <= 0) {
            throw new IllegalArgumentException(where + ": original_max_position_embeddings must be > 0, got "
                    + originalMaxPositionEmbeddings);
        }
    }

    /**
     * Parses a rope_scaling / rope_parameters object. Returns null for plain RoPE (no object,
     * an empty one, or rope_type "default"). The type is read from "rope_type" or the older "type".
     */
    public static RopeScaling fromJson(JsonNode node, String source) {
        if (node == null || node.isNull() || (node.isObject() && node.isEmpty())) return null;
        if (!node.isObject()) {
            throw new IllegalArgumentException(source + ": rope_scaling must be an object, got " + node);
        }
        JsonNode typeNode = node.hasNonNull("rope_type") ? node.get("rope_type") : node.get("type");
        String type = typeNode == null || typeNode.isNull() ? "default" : typeNode.asText();
        if (type.equals("default")) return null;
        if (!SUPPORTED_TYPES.contains(type)) {
            throw new IllegalArgumentException(source + ": rope type '" + type + "' is not supported (supported: "
                    + "default, " + String.join(", ", SUPPORTED_TYPES) + "). Use a checkpoint with one of these"
                    + " RoPE variants.");
        }
        JsonNode prf = node.get("partial_rotary_factor");
        if (prf != null && !prf.isNull() && prf.asDouble() != 1.0) {
            throw new IllegalArgumentException(source + ": partial_rotary_factor " + prf.asDouble()
                    + " is not supported (Llama, Mistral and Qwen2 rotate the whole head)");
        }
        try {
            return new RopeScaling(type, dbl(node, "factor"), dbl(node, "low_freq_factor"),
                    dbl(node, "high_freq_factor"), integer(node, "original_max_position_embeddings"),
                    dbl(node, "attention_factor"), dbl(node, "beta_fast"), dbl(node, "beta_slow"),
                    dbl(node, "mscale"), dbl(node, "mscale_all_dim"),
                    node.hasNonNull("truncate") ? node.get("truncate").asBoolean() : null);
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException(source + ": " + e.getMessage(), e);
        }
    }

    /** Writes the parameters as a transformers rope_scaling object (only the fields that were set). */
    public void writeTo(ObjectNode out) {
        out.put("rope_type", ropeType);
        for (Map.Entry<String, Object> e : fields().entrySet()) {
            Object v = e.getValue();
            if (v instanceof Double d) out.put(e.getKey(), d);
            else if (v instanceof Integer i) out.put(e.getKey(), i);
            else if (v instanceof Boolean b) out.put(e.getKey(), b);
        }
    }

    private Map<String, Object> fields() {
        var m = new java.util.LinkedHashMap<String, Object>();
        m.put("factor", factor);
        m.put("low_freq_factor", lowFreqFactor);
        m.put("high_freq_factor", highFreqFactor);
        m.put("original_max_position_embeddings", originalMaxPositionEmbeddings);
        m.put("attention_factor", attentionFactor);
        m.put("beta_fast", betaFast);
        m.put("beta_slow", betaSlow);
        m.put("mscale", mscale);
        m.put("mscale_all_dim", mscaleAllDim);
        m.put("truncate", truncate);
        return m;
    }

    // ---------------------------------------------------------------- frequencies

    /**
     * Inverse frequencies float32[headDim / 2] for a model at the given sequence length (the
     * largest position + 1). Only "dynamic" depends on seqLen: at or below max_position_embeddings
     * it equals plain RoPE; above, the base grows as transformers' dynamic NTK does.
     */
    public static float[] invFreq(ModelConfig c, int seqLen) {
        RopeScaling rs = c.ropeScaling();
        int dim = c.headDim();
        if (rs == null) return defaultInvFreq(c.ropeTheta(), dim);
        return switch (rs.ropeType) {
            case "linear" -> linear(c.ropeTheta(), dim, rs.factor);
            case "dynamic" -> dynamicNtk(c.ropeTheta(), dim, rs.factor, c.maxPositionEmbeddings(), seqLen);
            case "llama3" -> llama3(c.ropeTheta(), dim, rs, rs.originalMax(c));
            case "yarn" -> yarn(c.ropeTheta(), dim, rs, c.maxPositionEmbeddings(), rs.originalMax(c));
            default -> throw new IllegalStateException("unreachable: " + rs.ropeType);
        };
    }

    /** True when {@link #invFreq} changes with the sequence length ("dynamic" NTK scaling). */
    public static boolean dependsOnSeqLen(ModelConfig c) {
        return c.ropeScaling() != null && c.ropeScaling().ropeType.equals("dynamic");
    }

    /**
     * The factor transformers multiplies cos and sin by ({@code attention_scaling}): 1.0 except
     * for yarn, where it is attention_factor, or 0.1 ln(factor) + 1 (DeepSeek: the ratio of two
     * such terms with mscale and mscale_all_dim).
     */
    public static double attentionScaling(ModelConfig c) {
        RopeScaling rs = c.ropeScaling();
        if (rs == null || !rs.ropeType.equals("yarn")) return 1.0;
        if (rs.attentionFactor != null) return rs.attentionFactor;
        double factor = rs.yarnFactor(c.maxPositionEmbeddings(), rs.originalMax(c));
        // transformers tests "if mscale and mscale_all_dim": zero counts as absent
        if (rs.mscale != null && rs.mscale != 0 && rs.mscaleAllDim != null && rs.mscaleAllDim != 0) {
            return yarnMscale(factor, rs.mscale) / yarnMscale(factor, rs.mscaleAllDim);
        }
        return yarnMscale(factor, 1.0);
    }

    private int originalMax(ModelConfig c) {
        return originalMaxPositionEmbeddings != null ? originalMaxPositionEmbeddings : c.maxPositionEmbeddings();
    }

    private double yarnFactor(int maxPositionEmbeddings, int originalMax) {
        return factor != null ? factor : (double) maxPositionEmbeddings / originalMax;
    }

    private static double yarnMscale(double scale, double mscale) {
        return scale <= 1 ? 1.0 : 0.1 * mscale * Math.log(scale) + 1.0;
    }

    /** arange(0, dim, 2).float() / dim, element i, in float32. */
    private static float exponent(int i, int dim) {
        return (float) (2 * i) / (float) dim;
    }

    /** base ** exponent with base cast to float32 (torch casts the Python scalar to the tensor dtype). */
    private static float pow(double base, float exponent) {
        return (float) Math.pow((float) base, exponent);
    }

    /** inv_freq = 1 / (base ** (arange(0, dim, 2) / dim)), float32[dim / 2]. */
    static float[] defaultInvFreq(double base, int dim) {
        float[] inv = new float[dim / 2];
        for (int i = 0; i < inv.length; i++) inv[i] = 1.0f / pow(base, exponent(i, dim));
        return inv;
    }

    private static float[] linear(double base, int dim, double factor) {
        float[] inv = defaultInvFreq(base, dim);
        for (int i = 0; i < inv.length; i++) inv[i] = inv[i] / (float) factor;
        return inv;
    }

    private static float[] dynamicNtk(double base, int dim, double factor, int maxPos, int seqLen) {
        double len = Math.max(seqLen, maxPos);
        // computed in Python floats (float64), then cast to float32 inside the power
        double scaledBase = base * Math.pow(factor * len / maxPos - (factor - 1), (double) dim / (dim - 2));
        return defaultInvFreq(scaledBase, dim);
    }

    private static float[] llama3(double base, int dim, RopeScaling rs, int oldContextLen) {
        float[] inv = defaultInvFreq(base, dim);
        float factor = (float) (double) rs.factor;
        float lowFreqFactor = (float) (double) rs.lowFreqFactor;
        // Python floats, compared against the float32 tensor after a cast to float32
        float lowFreqWavelen = (float) (oldContextLen / rs.lowFreqFactor);
        float highFreqWavelen = (float) (oldContextLen / rs.highFreqFactor);
        float smoothDenominator = (float) (rs.highFreqFactor - rs.lowFreqFactor);
        float twoPi = (float) (2 * Math.PI);
        float[] out = new float[inv.length];
        for (int i = 0; i < inv.length; i++) {
            float wavelen = (1.0f / inv[i]) * twoPi;                        // 2*pi / inv_freq
            float scaled = wavelen > lowFreqWavelen ? inv[i] / factor : inv[i];
            float smooth = ((1.0f / wavelen) * (float) oldContextLen - lowFreqFactor) / smoothDenominator;
            float smoothed = (1.0f - smooth) * scaled / factor + smooth * scaled;
            boolean medium = !(wavelen < highFreqWavelen) && !(wavelen > lowFreqWavelen);
            out[i] = medium ? smoothed : scaled;
        }
        return out;
    }

    private static float[] yarn(double base, int dim, RopeScaling rs, int maxPos, int originalMax) {
        double factor = rs.yarnFactor(maxPos, originalMax);
        // transformers: `beta_fast or 32`, so 0 also means the default
        double betaFast = rs.betaFast != null && rs.betaFast != 0 ? rs.betaFast : 32;
        double betaSlow = rs.betaSlow != null && rs.betaSlow != 0 ? rs.betaSlow : 1;
        boolean truncate = rs.truncate == null || rs.truncate;
        double low = correctionDim(betaFast, dim, base, originalMax);
        double high = correctionDim(betaSlow, dim, base, originalMax);
        if (truncate) {
            low = Math.floor(low);
            high = Math.ceil(high);
        }
        low = Math.max(low, 0);
        high = Math.min(high, dim - 1);
        if (low == high) high += 0.001; // transformers: prevent a zero-width ramp
        float rampMin = (float) low;
        float rampWidth = (float) (high - low);

        float[] out = new float[dim / 2];
        for (int i = 0; i < out.length; i++) {
            float pos = pow(base, exponent(i, dim));
            float extrapolation = 1.0f / pos;
            float interpolation = 1.0f / ((float) factor * pos);
            float ramp = Math.clamp(((float) i - rampMin) / rampWidth, 0.0f, 1.0f);
            float extrapolationFactor = 1.0f - ramp;
            out[i] = interpolation * (1.0f - extrapolationFactor) + extrapolation * extrapolationFactor;
        }
        return out;
    }

    /** Dimension index at which a frequency completes numRotations over maxPos positions (float64). */
    private static double correctionDim(double numRotations, int dim, double base, int maxPos) {
        return (dim * Math.log(maxPos / (numRotations * 2 * Math.PI))) / (2 * Math.log(base));
    }

    private static Double dbl(JsonNode n, String key) {
        JsonNode v = n.get(key);
        if (v == null || v.isNull()) return null;
        if (!v.isNumber()) throw new IllegalArgumentException("'" + key + "' must be a number, got " + v);
        return v.asDouble();
    }

    private static Integer integer(JsonNode n, String key) {
        JsonNode v = n.get(key);
        if (v == null || v.isNull()) return null;
        if (!v.isIntegralNumber() && !(v.isNumber() && v.asDouble() == Math.rint(v.asDouble()))) {
            throw new IllegalArgumentException("'" + key + "' must be an integer, got " + v);
        }
        return v.asInt();
    }
}
