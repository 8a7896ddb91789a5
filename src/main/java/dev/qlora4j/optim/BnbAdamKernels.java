package dev.qlora4j.optim;

import dev.qlora4j.quant.DynamicMap;

/**
 * bitsandbytes' Adam update kernels, CPU twins of csrc/kernels.cu:
 * <ul>
 *   <li>{@link #update32} = kOptimizer32bit2State&lt;ADAM&gt; (state in float32; used for tensors
 *       under 4096 elements),</li>
 *   <li>{@link #update8bitBlock} = kOptimizerStatic8bit2StateBlockwise&lt;ADAM&gt; (state in 8 bits,
 *       blocks of {@link #BLOCKSIZE} with one absmax each).</li>
 * </ul>
 *
 * <p>Both differ from torch.optim.AdamW in one visible way, mirrored here: weight decay is applied
 * after the Adam step, p = (p + step) * (1 - lr*wd), where torch decays first. The eps is folded
 * into the bias correction: p += (-lr*sqrt(bc2)/bc1) * m / (sqrt(v) + sqrt(bc2)*eps), which equals
 * torch's -lr * (m/bc1) / (sqrt(v/bc2) + eps). All arithmetic is float32, as on the GPU.
 */
public final class BnbAdamKernels {
    /** Elements per absmax block of the 8-bit state (bitsandbytes' optimizer blocksize). */
    public static final int BLOCKSIZE = 256;

    /** create_dynamic_map(signed=True): the first moment's codes [256]; shared, never modified. */
    private static final float[] CODE1 = DynamicMap.create(true);
    /** create_dynamic_map(signed=False): the second moment's codes [256]; shared, never modified. */
    private static final float[] CODE2 = DynamicMap.create(false);

    private BnbAdamKernels() {}

    /** Per-step scalars, as the kernels compute them from their float arguments. */
    public record Scalars(float beta1, float beta2, float eps, float lr, float weightDecay, float correction2, float stepSize, float gnormScale) {
        public static Scalars of(double lr, double beta1, double beta2, double eps, double weightDecay, long step) {
            float b1 = (float) beta1, b2 = (float) beta2, flr = (float) lr;
            float correction1 = 1.0f - (float) Math.pow(b1, step);
            float correction2 = (float) Math.sqrt(1.0f - (float) Math.pow(b2, step));
            float stepSize = (-flr * correction2) / correction1;
            return new Scalars(b1, b2, (float) eps, flr, (float) weightDecay, correction2, stepSize, 1.0f);
        }
    }

    /** Float32 state: elements [from, to) of p, s1 (exp_avg), s2 (exp_avg_sq) from g. */
    public static void update32(float[] p, float[] g, float[] s1, float[] s2, int from, int to, Scalars s) {
        float decay = 1.0f - s.lr() * s.weightDecay();
        for (int i = from; i < to; i++) {
            float gi = s.gnormScale() * g[i];
            float m = s1[i] * s.beta1() + (1.0f - s.beta1()) * gi;
            float v = s2[i] * s.beta2() + (1.0f - s.beta2()) * (gi * gi);
            float pi = p[i] + s.stepSize() * (m / ((float) Math.sqrt(v) + s.eps() * s.correction2()));
            if (s.weightDecay() > 0.0f) pi = pi * decay;
            p[i] = pi;
            s1[i] = m;
            s2[i] = v;
        }
    }

    /**
     * One block of the 8-bit blockwise update: elements [block*256, min(n, block*256+256)).
     * Order as in the kernel: dequantize both states with the block's old absmax and update them
     * (a non-finite gradient zeroes that element's states and leaves its parameter alone), take the
     * new absmax over the block, step the parameters, then requantize with the new absmax (the
     * first moment against the signed map, re-signed if quantization flipped its sign; the second
     * against the unsigned map).
     *
     * @param q1      state1 codes [n] (signed map)
     * @param q2      state2 codes [n] (unsigned map)
     * @param absmax1 [ceil(n/256)]
     * @param absmax2 [ceil(n/256)]
     * @param m       scratch [256]
     * @param v       scratch [256]
     */
    public static void update8bitBlock(float[] p, float[] g, byte[] q1, byte[] q2, float[] absmax1, float[] absmax2,
                                int block, int n, Scalars s, float[] m, float[] v) {
        float[] code1 = CODE1;
        float[] code2 = CODE2;
        int base = block * BLOCKSIZE;
        int valid = Math.min(BLOCKSIZE, n - base);
        float oldMax1 = absmax1[block];
        float oldMax2 = absmax2[block];
        float newMax1 = -Float.MAX_VALUE;
        float newMax2 = -Float.MAX_VALUE;
        for (int j = 0; j < valid; j++) {
            float graw = g[base + j];
            if (Float.isFinite(graw)) {
                float gi = graw * s.gnormScale();
                float v2 = code2[q2[base + j] & 0xFF] * oldMax2;
                v[j] = v2 * s.beta2() + (1.0f - s.beta2()) * gi * gi;
                float m1 = code1[q1[base + j] & 0xFF] * oldMax1;
                m[j] = m1 * s.beta1() + (1.0f - s.beta1()) * gi;
            } else {
                m[j] = 0.0f;
                v[j] = 0.0f;
            }
            newMax1 = Math.max(newMax1, Math.abs(m[j]));
            newMax2 = Math.max(newMax2, Math.abs(v[j]));
        }
        if (valid < BLOCKSIZE) {
            // The GPU block also reduces over its padding lanes, loaded as g = 0, state1 code 128 and
            // state2 code 0; they add |code1[128]*oldMax1*beta1| to the max (code2[0] is 0).
            newMax1 = Math.max(newMax1, Math.abs(code1[128] * oldMax1 * s.beta1() + (1.0f - s.beta1()) * 0.0f));
            newMax2 = Math.max(newMax2, Math.abs(code2[0] * oldMax2 * s.beta2()));
        }
        absmax1[block] = newMax1;
        absmax2[block] = newMax2;

        float decay = 1.0f - s.lr() * s.weightDecay();
        for (int j = 0; j < valid; j++) {
            if (!Float.isFinite(g[base + j])) continue;
            float pi = p[base + j] + s.stepSize() * (m[j] / ((float) Math.sqrt(v[j]) + s.correction2() * s.eps()));
            if (s.weightDecay() > 0.0f) pi = pi * decay;
            p[base + j] = pi;
        }

        for (int j = 0; j < valid; j++) {
            // the optimizer kernel's quantize_2D search is dQuantize's (its initial bounds never
            // decide a code: code[255] is 1.0 in both maps, and an unmoved lower pivot returns 0)
            int c1 = DynamicMap.quantize(code1, m[j] / newMax1);
            int c2 = DynamicMap.quantize(code2, v[j] / newMax2);
            if (signBit(code1[c1]) != signBit(m[j])) {
                c1 = m[j] > 0.0f ? (c1 + 1) & 0xFF : (c1 - 1) & 0xFF;
            }
            q1[base + j] = (byte) c1;
            q2[base + j] = (byte) c2;
        }
    }

    /** A copy of the code table the kernels use for state1 (signed) or state2 (unsigned), for uploading to a device. */
    public static float[] codeTable(boolean signed) {
        return (signed ? CODE1 : CODE2).clone();
    }

    private static boolean signBit(float x) {
        return Float.floatToRawIntBits(x) < 0;
    }

    public static int blocks(int n) {
        return n / BLOCKSIZE + (n % BLOCKSIZE == 0 ? 0 : 1);
    }
}
