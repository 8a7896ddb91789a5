package dev.qlora4j.backend.cpu;

import dev.qlora4j.backend.AttentionResult;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Backend.prefixAttention / prefixAttentionBackward on the CPU, composed as a decoder layer runs
 * them with attentionTrain / attentionBackward, against a float64 reference of attention over
 * [P prefix keys visible to every query ; causal keys of the query's segment], with GQA and packing.
 */
class PrefixAttentionTest {
    static final int B = 2, T = 7, H = 4, KV = 2, D = 8, P = 3;

    @Test
    void composedAttentionMatchesFloat64Reference() {
        SplittableRandom r = new SplittableRandom(17);
        int n = B * T;
        float[] q = gauss(r, n * H * D), k = gauss(r, n * KV * D), v = gauss(r, n * KV * D);
        float[] kp = gauss(r, P * KV * D), vp = gauss(r, P * KV * D), g = gauss(r, n * H * D);
        int[] seg = {0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1}; // row 0: two examples; row 1: an example and padding
        float scale = (float) (1 / Math.sqrt(D));
        try (CpuBackend cpu = new CpuBackend(2)) {
            Tensor qt = Tensor.of(q, n, H * D), kt = Tensor.of(k, n, KV * D), vt = Tensor.of(v, n, KV * D);
            Tensor kpt = Tensor.of(kp, P, KV * D), vpt = Tensor.of(vp, P, KV * D), gt = Tensor.of(g, n, H * D), st = Tensor.ofInts(seg, n);
            AttentionResult seq = cpu.attentionTrain(qt, kt, vt, st, B, H, KV, D, scale, 0);
            AttentionResult merged = cpu.prefixAttention(qt, kpt, vpt, seq, B, H, KV, D, scale);
            Tensor[] gs = cpu.attentionBackward(qt, kt, vt, st, merged, gt, B, H, KV, D, scale, 0);
            Tensor gkp = Tensor.zeros(DType.F32, P, KV * D), gvp = Tensor.zeros(DType.F32, P, KV * D);
            cpu.prefixAttentionBackward(qt, kpt, vpt, merged, gt, gs[0], gkp, gvp, B, H, KV, D, scale);

            double[][] ref = reference(q, k, v, kp, vp, g, seg, scale);
            check(merged.out().toFloatArray(), ref[0], "out");
            check(merged.lse().toFloatArray(), ref[1], "lse");
            check(gs[0].toFloatArray(), ref[2], "dQ");
            check(gs[1].toFloatArray(), ref[3], "dK");
            check(gs[2].toFloatArray(), ref[4], "dV");
            check(gkp.toFloatArray(), ref[5], "dK prefix");
            check(gvp.toFloatArray(), ref[6], "dV prefix");

            var e = assertThrows(IllegalArgumentException.class,
                    () -> cpu.prefixAttention(qt, kpt, Tensor.zeros(DType.F32, P + 1, KV * D), seq, B, H, KV, D, scale));
            assertTrue(e.getMessage().contains("vPrefix"), e.getMessage());
        }
    }

    static void check(float[] got, double[] want, String what) {
        double num = 0, den = 0;
        for (int i = 0; i < want.length; i++) {
            num += (got[i] - want[i]) * (got[i] - want[i]);
            den += want[i] * want[i];
        }
        double rel = Math.sqrt(num / den);
        System.out.printf("prefix attention %s: rel error %.3g vs float64%n", what, rel);
        assertTrue(rel < 2e-6, what + ": relative error " + rel);
    }

    /** {out, lse, dQ, dK, dV, dKp, dVp} in float64: softmax over [prefix ; visible sequence keys]. */
    static double[][] reference(float[] q, float[] k, float[] v, float[] kp, float[] vp, float[] g, int[] seg, float scale) {
        int n = B * T, qw = H * D, kw = KV * D;
        double[] out = new double[n * qw], lse = new double[B * H * T], dq = new double[n * qw], dk = new double[n * kw],
                dv = new double[n * kw], dkp = new double[P * kw], dvp = new double[P * kw];
        for (int b = 0; b < B; b++) for (int h = 0; h < H; h++) for (int t = 0; t < T; t++) {
            int row = b * T + t, kh = h / (H / KV), qo = row * qw + h * D;
            // keys: P prefix slots, then the visible sequence positions
            int m = P + T;
            double[] s = new double[m];
            boolean[] vis = new boolean[m];
            for (int j = 0; j < m; j++) {
                boolean prefix = j < P;
                int src = prefix ? j : b * T + (j - P);
                vis[j] = prefix || (j - P <= t && seg[src] == seg[row]);
                if (!vis[j]) continue;
                float[] kk = prefix ? kp : k;
                int ko = src * kw + kh * D;
                for (int d = 0; d < D; d++) s[j] += (double) q[qo + d] * kk[ko + d];
                s[j] *= scale;
            }
            double max = Double.NEGATIVE_INFINITY, z = 0;
            for (int j = 0; j < m; j++) if (vis[j]) max = Math.max(max, s[j]);
            for (int j = 0; j < m; j++) if (vis[j]) z += Math.exp(s[j] - max);
            lse[(b * H + h) * T + t] = max + Math.log(z);
            double[] p = new double[m];
            for (int j = 0; j < m; j++) if (vis[j]) p[j] = Math.exp(s[j] - max) / z;
            double delta = 0;
            for (int d = 0; d < D; d++) {
                double o = 0;
                for (int j = 0; j < m; j++) {
                    if (!vis[j]) continue;
                    int src = j < P ? j : b * T + (j - P);
                    o += p[j] * (j < P ? vp : v)[src * kw + kh * D + d];
                }
                out[qo + d] = o;
                delta += o * g[qo + d];
            }
            for (int j = 0; j < m; j++) {
                if (!vis[j]) continue;
                boolean prefix = j < P;
                int src = prefix ? j : b * T + (j - P), ko = src * kw + kh * D;
                double dp = 0;
                for (int d = 0; d < D; d++) dp += g[qo + d] * (prefix ? vp : v)[ko + d];
                double ds = p[j] * (dp - delta) * scale;
                for (int d = 0; d < D; d++) {
                    dq[qo + d] += ds * (prefix ? kp : k)[ko + d];
                    (prefix ? dkp : dk)[ko + d] += ds * q[qo + d];
                    (prefix ? dvp : dv)[ko + d] += p[j] * g[qo + d];
                }
            }
        }
        return new double[][] {out, lse, dq, dk, dv, dkp, dvp};
    }

    static float[] gauss(SplittableRandom r, int n) {
        float[] a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float) r.nextGaussian();
        return a;
    }
}
