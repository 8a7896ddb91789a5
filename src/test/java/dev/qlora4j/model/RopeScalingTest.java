package dev.qlora4j.model;

import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.*;

/** RoPE inverse frequencies against float64 evaluations of transformers' formulas. */
class RopeScalingTest {

    private static ModelConfig config(int heads, int headDim, double theta, int maxPos, String ropeScaling) {
        return ModelConfig.parse("""
                {"architectures": ["LlamaForCausalLM"], "hidden_size": %d, "num_attention_heads": %d,
                 "rope_theta": %s, "max_position_embeddings": %d, "rope_scaling": %s}"""
                .formatted(heads * headDim, heads, theta, maxPos, ropeScaling));
    }

    /** float64 reference of plain RoPE: 1 / base^(2i/dim). */
    private static double ref(double base, int dim, int i) {
        return 1.0 / Math.pow(base, 2.0 * i / dim);
    }

    @Test
    void defaultSmallExactValues() {
        float[] f = RopeScaling.invFreq(config(2, 4, 10000, 2048, "null"), 1);
        assertArrayEquals(new float[] {1.0f, 0.01f}, f);
    }

    @Test
    void defaultWithinOneUlpOfFloat64() {
        // head_dim 128: every exponent 2i/128 is exact in float32, so only pow and 1/x round
        // (two roundings of at most 2^-24 relative each: within 2 ulp of the exact value)
        ModelConfig c = config(32, 128, 500000, 8192, "null");
        float[] f = RopeScaling.invFreq(c, 10);
        assertEquals(64, f.length);
        for (int i = 0; i < f.length; i++) {
            assertEquals(ref(500000, 128, i), f[i], 2 * Math.ulp(f[i]), "i=" + i);
        }
        assertEquals(1.0, RopeScaling.attentionScaling(c));
        assertFalse(RopeScaling.dependsOnSeqLen(c));
    }

    @Test
    void linearDividesByFactor() {
        ModelConfig c = config(8, 64, 10000, 4096, "{\"type\": \"linear\", \"factor\": 4.0}");
        float[] plain = RopeScaling.invFreq(config(8, 64, 10000, 4096, "null"), 1);
        float[] f = RopeScaling.invFreq(c, 1);
        for (int i = 0; i < f.length; i++) {
            assertEquals(plain[i] / 4.0f, f[i], 0.0f);
            assertEquals(ref(10000, 64, i) / 4.0, f[i], 2 * Math.ulp(f[i]), "i=" + i);
        }
    }

    @Test
    void dynamicNtkBelowAndAboveMaxPositions() {
        ModelConfig c = config(8, 64, 10000, 2048, "{\"rope_type\": \"dynamic\", \"factor\": 2.0}");
        assertTrue(RopeScaling.dependsOnSeqLen(c));
        float[] plain = RopeScaling.invFreq(config(8, 64, 10000, 2048, "null"), 1);
        assertArrayEquals(plain, RopeScaling.invFreq(c, 100), "below max_position_embeddings: plain RoPE");
        assertArrayEquals(plain, RopeScaling.invFreq(c, 2048), "at max_position_embeddings the base is unchanged");
        float[] f = RopeScaling.invFreq(c, 4096);
        // base * ((factor * seq / max) - (factor - 1)) ^ (dim / (dim - 2)) = 10000 * 3^(64/62)
        double base = 10000 * Math.pow(3.0, 64.0 / 62.0);
        assertEquals(31082.24, base, 0.01, "hand-computed scaled base: 3^1.032258 = 3.108224");
        for (int i = 0; i < f.length; i++) {
            assertEquals(ref(base, 64, i), f[i], 2e-6 * ref(base, 64, i), "i=" + i);
        }
        assertTrue(f[1] < plain[1]);
        assertEquals(1.0f, f[0]);
    }

    @Test
    void llama3ThreeFrequencyBands() {
        // Llama 3.x: theta 500000, head_dim 128, factor 8, low 1, high 4, original context 8192
        ModelConfig c = config(32, 128, 500000, 131072, """
                {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 8192}""");
        float[] plain = RopeScaling.invFreq(config(32, 128, 500000, 131072, "null"), 1);
        float[] f = RopeScaling.invFreq(c, 1);
        int high = 0, medium = 0, low = 0;
        for (int i = 0; i < f.length; i++) {
            double inv = ref(500000, 128, i);
            double wavelen = 2 * Math.PI / inv;
            double expected;
            if (wavelen < 8192 / 4.0) {              // high frequencies: kept
                expected = inv;
                assertEquals(plain[i], f[i], 0.0f, "high band i=" + i);
                high++;
            } else if (wavelen > 8192 / 1.0) {       // low frequencies: divided by factor
                expected = inv / 8;
                assertEquals(plain[i] / 8.0f, f[i], 0.0f, "low band i=" + i);
                low++;
            } else {                                 // between: smooth interpolation
                double smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0);
                expected = (1 - smooth) * inv / 8 + smooth * inv;
                assertTrue(f[i] < plain[i] && f[i] > plain[i] / 8, "medium band i=" + i);
                medium++;
            }
            assertEquals(expected, f[i], 2e-6 * expected, "i=" + i);
        }
        // hand-computed band edges: 2*pi*500000^(i/64) crosses 2048 between i=28 and 29, 8192 between 34 and 35
        assertEquals(29, high);
        assertEquals(6, medium);
        assertEquals(29, low);
        assertEquals(1.0, RopeScaling.attentionScaling(c));
        assertFalse(RopeScaling.dependsOnSeqLen(c));
    }

    @Test
    void yarnRampAndAttentionFactor() {
        // Qwen2.5 long-context style: theta 1e6, head_dim 128, factor 4, original 32768
        ModelConfig c = config(16, 128, 1e6, 131072,
                "{\"rope_type\": \"yarn\", \"factor\": 4.0, \"original_max_position_embeddings\": 32768}");
        float[] plain = RopeScaling.invFreq(config(16, 128, 1e6, 131072, "null"), 1);
        float[] f = RopeScaling.invFreq(c, 1);
        // correction range: floor(128 ln(32768 / (32 * 2pi)) / (2 ln 1e6)) = 23, ceil(128 ln(32768 / (2pi)) / (2 ln 1e6)) = 40
        int lo = 23, hi = 40;
        assertEquals(lo, (int) Math.floor(128 * Math.log(32768 / (32 * 2 * Math.PI)) / (2 * Math.log(1e6))));
        assertEquals(hi, (int) Math.ceil(128 * Math.log(32768 / (2 * Math.PI)) / (2 * Math.log(1e6))));
        for (int i = 0; i < f.length; i++) {
            double inv = ref(1e6, 128, i);
            double ramp = Math.clamp((i - (double) lo) / (hi - lo), 0, 1);
            double expected = inv / 4 * ramp + inv * (1 - ramp);
            assertEquals(expected, f[i], 2e-6 * expected, "i=" + i);
            if (i <= lo) assertEquals(plain[i], f[i], 0.0f, "extrapolated i=" + i);
            if (i >= hi) assertEquals(plain[i] / 4, f[i], 0.0f, "interpolated i=" + i);
        }
        assertEquals(0.1 * Math.log(4) + 1, RopeScaling.attentionScaling(c), 1e-15);
    }

    @Test
    void yarnWithoutTruncationUsesFractionalRange() {
        ModelConfig c = config(16, 128, 1e6, 131072, """
                {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768, "truncate": false}""");
        double lo = 128 * Math.log(32768 / (32 * 2 * Math.PI)) / (2 * Math.log(1e6));
        double hi = 128 * Math.log(32768 / (2 * Math.PI)) / (2 * Math.log(1e6));
        float[] f = RopeScaling.invFreq(c, 1);
        for (int i = 0; i < f.length; i++) {
            double inv = ref(1e6, 128, i);
            double ramp = Math.clamp((i - lo) / (hi - lo), 0, 1);
            double expected = inv / 4 * ramp + inv * (1 - ramp);
            assertEquals(expected, f[i], 2e-6 * expected, "i=" + i);
        }
    }

    @Test
    void yarnAttentionFactorVariants() {
        ModelConfig explicit = config(16, 128, 1e6, 131072,
                "{\"rope_type\": \"yarn\", \"factor\": 4.0, \"attention_factor\": 1.25}");
        assertEquals(1.25, RopeScaling.attentionScaling(explicit));
        // DeepSeek style: mscale == mscale_all_dim -> ratio of equal terms
        ModelConfig deepseek = config(16, 128, 10000, 163840, """
                {"rope_type": "yarn", "factor": 40.0, "mscale": 0.707, "mscale_all_dim": 0.707,
                 "original_max_position_embeddings": 4096}""");
        assertEquals(1.0, RopeScaling.attentionScaling(deepseek), 1e-15);
        ModelConfig ratio = config(16, 128, 10000, 163840, """
                {"rope_type": "yarn", "factor": 40.0, "mscale": 1.0, "mscale_all_dim": 0.5,
                 "original_max_position_embeddings": 4096}""");
        assertEquals((0.1 * Math.log(40) + 1) / (0.05 * Math.log(40) + 1), RopeScaling.attentionScaling(ratio), 1e-15);
        // factor derived from max / original when absent
        ModelConfig derived = config(16, 128, 10000, 16384,
                "{\"rope_type\": \"yarn\", \"original_max_position_embeddings\": 4096}");
        assertEquals(0.1 * Math.log(4) + 1, RopeScaling.attentionScaling(derived), 1e-15);
    }
}
