package dev.qlora4j.peft;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.nn.DenseLinear;
import dev.qlora4j.peft.config.InitLoraWeights;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.*;

/** init_lora_weights distributions, PiSSA, and the SVDs behind PiSSA and add_weighted_adapter "svd". */
class InitAndSvdTest {
    private final Backend b = new RefOpsBackend();

    @Test
    void defaultInitIsKaimingUniformAWithZeroB() {
        int out = 50, in = 400, r = 16;
        LoraInit.Values v = LoraInit.init(InitLoraWeights.of(true), out, in, r, 2, 7, null);
        double bound = 1 / Math.sqrt(in);   // kaiming_uniform_(a=sqrt(5)): gain sqrt(1/3) * sqrt(3 / fan_in)
        double max = 0, mean = 0, var = 0;
        for (float a : v.a()) {
            assertTrue(Math.abs(a) <= bound, "|A| must stay within 1/sqrt(in)");
            max = Math.max(max, Math.abs(a));
            mean += a;
            var += a * a;
        }
        mean /= v.a().length;
        var /= v.a().length;
        assertTrue(max > 0.99 * bound, "the bound is reached: " + max);
        assertEquals(0, mean, 4 * bound / Math.sqrt(3 * v.a().length));
        assertEquals(bound * bound / 3, var, 0.05 * bound * bound / 3, "variance of U(-b, b) is b^2/3");
        for (float x : v.b()) assertEquals(0f, x);
        assertNull(v.residual());
    }

    @Test
    void gaussianInitHasStdOneOverRank() {
        int r = 8;
        LoraInit.Values v = LoraInit.init(InitLoraWeights.of("gaussian"), 10, 2000, r, 1, 3, null);
        double ss = 0;
        for (float a : v.a()) ss += a * a;
        assertEquals(1.0 / r, Math.sqrt(ss / v.a().length), 0.02 / r);
        for (float x : v.b()) assertEquals(0f, x);
    }

    @Test
    void falseInitMakesBNonZero() {
        int r = 4;
        LoraInit.Values v = LoraInit.init(InitLoraWeights.of(false), 30, 20, r, 1, 5, null);
        double max = 0;
        for (float x : v.b()) {
            assertTrue(Math.abs(x) <= 1 / Math.sqrt(r));
            max = Math.max(max, Math.abs(x));
        }
        assertTrue(max > 0.4, "B is random, not zero");
        var e = assertThrows(IllegalArgumentException.class, () -> LoraInit.init(InitLoraWeights.of("loftq"), 3, 3, 1, 1, 1, null));
        assertTrue(e.getMessage().contains("loftq"));
    }

    @Test
    void jacobiSvdReconstructsWithOrthonormalFactors() {
        SplittableRandom rng = new SplittableRandom(1);
        for (int[] dims : new int[][] {{7, 4}, {4, 9}, {12, 12}}) {
            int m = dims[0], n = dims[1];
            double[] a = new double[m * n];
            for (int i = 0; i < a.length; i++) a[i] = rng.nextGaussian();
            Svd.Result s = Svd.of(a, m, n);
            int k = Math.min(m, n);
            assertEquals(k, s.k());
            double[] rec = s.reconstruct(k);
            for (int i = 0; i < a.length; i++) assertEquals(a[i], rec[i], 1e-12);
            for (int t = 1; t < k; t++) assertTrue(s.s()[t - 1] >= s.s()[t]);
            for (int p = 0; p < k; p++) {
                for (int q = 0; q < k; q++) {
                    double uu = 0, vv = 0;
                    for (int i = 0; i < m; i++) uu += s.u()[i * k + p] * s.u()[i * k + q];
                    for (int j = 0; j < n; j++) vv += s.vt()[p * n + j] * s.vt()[q * n + j];
                    assertEquals(p == q ? 1 : 0, uu, 1e-12);
                    assertEquals(p == q ? 1 : 0, vv, 1e-12);
                }
            }
        }
        // singular values of a known matrix: diag(3, 2) embedded in a rotation
        Svd.Result s = Svd.of(new double[] {0, 2, 3, 0}, 2, 2);
        assertArrayEquals(new double[] {3, 2}, s.s(), 1e-14);
    }

    @Test
    void randomizedSvdFindsTheTopTriplets() {
        SplittableRandom rng = new SplittableRandom(2);
        int m = 30, n = 20;
        double[] a = new double[m * n];
        // rank-3 signal with singular values 10, 5, 2 plus small noise
        for (double sv : new double[] {10, 5, 2}) {
            double[] u = new double[m], v = new double[n];
            for (int i = 0; i < m; i++) u[i] = rng.nextGaussian();
            for (int j = 0; j < n; j++) v[j] = rng.nextGaussian();
            for (int i = 0; i < m; i++) for (int j = 0; j < n; j++) a[i * n + j] += sv * u[i] * v[j] / Math.sqrt(m * n);
        }
        for (int i = 0; i < a.length; i++) a[i] += 1e-4 * rng.nextGaussian();
        Svd.Result exact = Svd.of(a, m, n), low = Svd.lowRank(a, m, n, 3, 4, 9);
        for (int t = 0; t < 3; t++) assertEquals(exact.s()[t], low.s()[t], 1e-6 * exact.s()[0]);
        double[] r1 = exact.reconstruct(3), r2 = low.reconstruct(3);
        for (int i = 0; i < r1.length; i++) assertEquals(r1[i], r2[i], 1e-6);
    }

    @Test
    void pissaKeepsTheOutputAndPutsTheTopSingularPartInTheAdapter() {
        SplittableRandom rng = new SplittableRandom(3);
        int out = 12, in = 9, r = 3, n = 4;
        float[] w = Ref.randomFloats(rng, out * in, 1), x = Ref.randomFloats(rng, n * in, 1);
        double scaling = 2;
        for (String method : new String[] {"pissa", "pissa_niter_6"}) {
            LoraLinear l = new LoraLinear("model.layers.0.mlp.down_proj", new DenseLinear(Tensor.of(w.clone(), out, in), null), false);
            LoraAdapter a = l.addAdapter(b, "default", r, 6, scaling, 0, false, InitLoraWeights.of(method), 11);
            // base is now the residual W - s B A, so base + adapter == W
            l.setActiveAdapters(java.util.List.of("default"));
            float[] y = b.toHost(l.forward(b, Tensor.of(x.clone(), n, in))).toFloatArray();
            double[] expected = Ref.linear(Ref.d(x), n, in, Ref.d(w), out, null);
            assertTrue(Ref.relErr(y, expected) < 1e-5, method + ": " + Ref.relErr(y, expected));
            // s B A is the best rank-r approximation of W (its top singular triplets)
            double[] top = Svd.of(Ref.d(w), out, in).reconstruct(r);
            double[] sba = Ref.ba(Ref.d(a.a().hostValues(b)), Ref.d(a.b().hostValues(b)), out, r, in);
            if (method.equals("pissa")) {
                for (int i = 0; i < top.length; i++) assertEquals(top[i], scaling * sba[i], 1e-5, method + " entry " + i);
            } else {
                // randomized (q = r, no oversampling, as peft calls svd_lowrank): near-optimal, not exact, without a spectral gap
                double best = 0, got = 0;
                for (int i = 0; i < top.length; i++) {
                    best += Math.pow(w[i] - top[i], 2);
                    got += Math.pow(w[i] - scaling * sba[i], 2);
                }
                assertTrue(got <= 1.15 * best && got >= best * (1 - 1e-9), method + ": residual " + got + " vs optimal " + best);
            }
            assertEquals(DType.F32, ((DenseLinear) l.base()).weight().dtype());
        }
    }
}
