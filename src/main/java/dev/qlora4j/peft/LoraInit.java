package dev.qlora4j.peft;

import dev.qlora4j.peft.config.InitLoraWeights;

import java.util.SplittableRandom;

/**
 * peft's init_lora_weights for a linear layer [out, in] (tuners/lora/layer.py update_layer,
 * reset_lora_parameters, pissa_init), with our own random numbers (torch's generator is not
 * reproduced; the distributions are):
 *
 * <ul>
 *   <li>true: A ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0;</li>
 *   <li>"gaussian": A ~ N(0, (1/r)^2), B = 0;</li>
 *   <li>false: both keep nn.Linear's default init, A ~ U(+-1/sqrt(in)) and B ~ U(+-1/sqrt(r)):
 *       the adapter is not a no-op (for tests);</li>
 *   <li>"pissa" / "pissa_niter_N": from the top-r singular triplets of W = U S V^T (exact, or
 *       torch.svd_lowrank with N power iterations): with S_r' = S_r / scaling,
 *       A = diag(sqrt(S_r')) V_r^T, B = U_r diag(sqrt(S_r')), and the base becomes the residual
 *       W - scaling B A (so the model's output is unchanged at step 0).</li>
 * </ul>
 */
final class LoraInit {
    private LoraInit() {}

    /** Host initial values: a [r*in], b [out*r]; residual [out*in] for PiSSA, else null. */
    record Values(float[] a, float[] b, float[] residual) {}

    static boolean needsBaseWeight(InitLoraWeights how) {
        return how instanceof InitLoraWeights.Method m && m.name().startsWith("pissa");
    }

    /**
     * @param weight the dense base weight [out*in] as float32 (PiSSA only, else ignored / null)
     */
    static Values init(InitLoraWeights how, int out, int in, int r, double scaling, long seed, float[] weight) {
        SplittableRandom rng = new SplittableRandom(seed);
        return switch (how) {
            case InitLoraWeights.Flag f when f.value() -> new Values(uniform(rng, r * in, 1 / Math.sqrt(in)), new float[out * r], null);
            case InitLoraWeights.Flag f -> new Values(uniform(rng, r * in, 1 / Math.sqrt(in)), uniform(rng, out * r, 1 / Math.sqrt(r)), null);
            case InitLoraWeights.Method m when m.name().equals("gaussian") -> {
                float[] a = new float[r * in];
                for (int i = 0; i < a.length; i++) a[i] = (float) (rng.nextGaussian() / r);
                yield new Values(a, new float[out * r], null);
            }
            case InitLoraWeights.Method m when m.name().equals("pissa") -> pissa(weight, out, in, r, scaling, -1, seed);
            case InitLoraWeights.Method m when InitLoraWeights.PISSA_NITER.matcher(m.name()).matches() ->
                    pissa(weight, out, in, r, scaling, Integer.parseInt(m.name().substring("pissa_niter_".length())), seed);
            case InitLoraWeights.Method m -> throw new IllegalArgumentException("init_lora_weights=\"" + m.name()
                    + "\" is not supported by qlora4j (it needs data-driven or quantization-aware initialization); use true, "
                    + "false, \"gaussian\", \"pissa\" or \"pissa_niter_<N>\"");
        };
    }

    /** kaiming_uniform_(a=sqrt(5)) on a fan-in of n has bound gain*sqrt(3/n) = sqrt(1/3)*sqrt(3/n) = 1/sqrt(n). */
    private static float[] uniform(SplittableRandom rng, int count, double bound) {
        float[] v = new float[count];
        for (int i = 0; i < count; i++) v[i] = (float) ((rng.nextDouble() * 2 - 1) * bound);
        return v;
    }

    /** niter < 0: exact SVD ("pissa"); otherwise randomized ("pissa_niter_N"). */
    static Values pissa(float[] weight, int out, int in, int r, double scaling, int niter, long seed) {
        if (r > Math.min(out, in)) {
            throw new IllegalArgumentException("PiSSA needs r <= min(out, in) = " + Math.min(out, in) + ", got r=" + r);
        }
        double[] w = new double[out * in];
        for (int i = 0; i < w.length; i++) w[i] = weight[i];
        Svd.Result svd = niter < 0 ? Svd.of(w, out, in) : Svd.lowRank(w, out, in, r, niter, seed);
        int k = svd.k();
        float[] a = new float[r * in], b = new float[out * r];
        double[] ad = new double[r * in], bd = new double[out * r];
        for (int t = 0; t < r; t++) {
            double root = Math.sqrt(svd.s()[t] / scaling);
            for (int j = 0; j < in; j++) ad[t * in + j] = root * svd.vt()[t * in + j];
            for (int i = 0; i < out; i++) bd[i * r + t] = svd.u()[i * k + t] * root;
        }
        for (int i = 0; i < a.length; i++) a[i] = (float) ad[i];
        for (int i = 0; i < b.length; i++) b[i] = (float) bd[i];
        // residual from the float32 factors the adapter actually holds, so base + adapter == W to rounding
        float[] residual = new float[out * in];
        for (int i = 0; i < out; i++) {
            for (int j = 0; j < in; j++) {
                double d = 0;
                for (int t = 0; t < r; t++) d += (double) b[i * r + t] * a[t * in + j];
                residual[i * in + j] = (float) (weight[i * in + j] - scaling * d);
            }
        }
        return new Values(a, b, residual);
    }
}
