package dev.qlora4j.peft;

import dev.qlora4j.backend.Backend;

import java.util.List;

/**
 * The per-module math of peft's LoraModel.add_weighted_adapter for combination types "linear",
 * "cat" and "svd" (tuners/lora/model.py), on host float arrays. The combined adapter gets
 * lora_alpha = r (scaling 1), so the deltas below are what it adds:
 *
 * <ul>
 *   <li>linear: A = sum_i sqrt(w_i s_i) A_i and B = sum_i sqrt(w_i s_i) B_i (same ranks; as in
 *       peft, the product B A then contains cross terms B_i A_j for i != j);</li>
 *   <li>cat: A = rows [w_1 s_1 A_1; w_2 s_2 A_2; ...], B = columns [B_1, B_2, ...], so
 *       B A = sum_i w_i s_i B_i A_i exactly (rank = sum of ranks);</li>
 *   <li>svd: D = sum_i (w_i s_i) * (s_i B_i A_i), as peft computes it (the weight is multiplied by
 *       the scaling and get_delta_weight scales again), then B = U_r diag(S_r), A = V_r^T of the
 *       truncated SVD of D.</li>
 * </ul>
 */
final class WeightedAdapters {
    private WeightedAdapters() {}

    /** New factors: a [rank*in], b [out*rank]. */
    record Factors(float[] a, float[] b, int rank) {}

    static Factors linear(Backend be, List<LoraAdapter> adapters, List<Double> weights, int out, int in, String module) {
        int r = adapters.getFirst().rank();
        float[] a = new float[r * in], b = new float[out * r];
        double[] ad = new double[a.length], bd = new double[b.length];
        for (int i = 0; i < adapters.size(); i++) {
            LoraAdapter ad_i = adapters.get(i);
            if (ad_i.rank() != r) {
                throw new IllegalArgumentException("All adapters must have the same r value when using combination_type linear: "
                        + module + " has ranks " + adapters.stream().map(LoraAdapter::rank).toList());
            }
            double ws = weights.get(i) * ad_i.scaling();
            if (ws < 0) {
                throw new IllegalArgumentException("combination_type linear takes sqrt(weight * scaling) (peft: math.sqrt), which is "
                        + "undefined for adapter '" + ad_i.name() + "' (weight " + weights.get(i) + ", scaling " + ad_i.scaling()
                        + "); use \"cat\" or \"svd\" for negative weights");
            }
            double f = Math.sqrt(ws);
            float[] av = ad_i.a().hostValues(be), bv = ad_i.b().hostValues(be);
            for (int k = 0; k < ad.length; k++) ad[k] += f * av[k];
            for (int k = 0; k < bd.length; k++) bd[k] += f * bv[k];
        }
        for (int k = 0; k < a.length; k++) a[k] = (float) ad[k];
        for (int k = 0; k < b.length; k++) b[k] = (float) bd[k];
        return new Factors(a, b, r);
    }

    static Factors cat(Backend be, List<LoraAdapter> adapters, List<Double> weights, int out, int in) {
        int total = 0;
        for (LoraAdapter x : adapters) total += x.rank();
        float[] a = new float[total * in], b = new float[out * total];
        int offset = 0;
        for (int i = 0; i < adapters.size(); i++) {
            LoraAdapter x = adapters.get(i);
            int r = x.rank();
            double f = weights.get(i) * x.scaling();
            float[] av = x.a().hostValues(be), bv = x.b().hostValues(be);
            for (int t = 0; t < r; t++) {
                for (int j = 0; j < in; j++) a[(offset + t) * in + j] = (float) (av[t * in + j] * f);
            }
            for (int o = 0; o < out; o++) {
                for (int t = 0; t < r; t++) b[o * total + offset + t] = bv[o * r + t];
            }
            offset += r;
        }
        return new Factors(a, b, total);
    }

    /** deltas: each adapter's get_delta_weight (s_i B_i A_i) [out*in]. */
    static Factors svd(List<LoraAdapter> adapters, List<double[]> deltas, List<Double> weights, int out, int in, int rank, String module) {
        if (rank > Math.min(out, in)) {
            throw new IllegalArgumentException("svd combination rank " + rank + " exceeds min(out, in) = " + Math.min(out, in)
                    + " of " + module + "; pass a smaller svd_rank");
        }
        double[] d = new double[out * in];
        for (int i = 0; i < adapters.size(); i++) {
            double f = weights.get(i) * adapters.get(i).scaling();
            double[] di = deltas.get(i);
            for (int k = 0; k < d.length; k++) d[k] += f * di[k];
        }
        Svd.Result s = Svd.of(d, out, in);
        int k = s.k();
        float[] a = new float[rank * in], b = new float[out * rank];
        for (int t = 0; t < rank; t++) {
            for (int j = 0; j < in; j++) a[t * in + j] = (float) s.vt()[t * in + j];
            for (int o = 0; o < out; o++) b[o * rank + t] = (float) (s.u()[o * k + t] * s.s()[t]);
        }
        return new Factors(a, b, rank);
    }
}
