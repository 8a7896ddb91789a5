package dev.qlora4j.peft;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.tensor.Tensor;

import java.util.List;
import java.util.SplittableRandom;

/** Float64 reference computations for the adapter tests (written from peft's formulas, independent of the code under test). */
final class Ref {
    private Ref() {}

    /** One adapter as the reference sees it: A [r, in], B [out, r], scale, DoRA magnitude (or null), dropout mask over x (or null). */
    record Adapter(double[] a, double[] b, int r, double s, double[] m, double[] mask) {}

    static double[] d(float[] f) {
        double[] out = new double[f.length];
        for (int i = 0; i < f.length; i++) out[i] = f[i];
        return out;
    }

    static float[] randomFloats(SplittableRandom rng, int n, double scale) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float) ((rng.nextDouble() * 2 - 1) * scale);
        return v;
    }

    /** x [n, k] times w [m, k]^T (+ bias [m]). */
    static double[] linear(double[] x, int n, int k, double[] w, int m, double[] bias) {
        double[] out = new double[n * m];
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < m; j++) {
                double s = bias == null ? 0 : bias[j];
                for (int t = 0; t < k; t++) s += x[i * k + t] * w[j * k + t];
                out[i * m + j] = s;
            }
        }
        return out;
    }

    /** B A [out, in]. */
    static double[] ba(double[] a, double[] b, int out, int r, int in) {
        double[] d = new double[out * in];
        for (int i = 0; i < out; i++) for (int t = 0; t < r; t++) for (int j = 0; j < in; j++) d[i * in + j] += b[i * r + t] * a[t * in + j];
        return d;
    }

    /** ||W + s B A|| per row. */
    static double[] doraNorm(double[] w, Adapter ad, int out, int in) {
        double[] d = ba(ad.a(), ad.b(), out, ad.r(), in);
        double[] norm = new double[out];
        for (int i = 0; i < out; i++) {
            double ss = 0;
            for (int j = 0; j < in; j++) {
                double v = w[i * in + j] + ad.s() * d[i * in + j];
                ss += v * v;
            }
            norm[i] = Math.sqrt(ss);
        }
        return norm;
    }

    /**
     * peft's lora.Linear forward with the given active adapters in order; DoRA norms are taken
     * from {@code norms} (one per adapter, null = computed here), so finite differences can hold
     * them constant as peft's detach() does.
     */
    static double[] forward(double[] x, int n, int in, double[] w, int out, double[] bias, List<Adapter> ads, List<double[]> norms) {
        double[] r = linear(x, n, in, w, out, bias);
        for (int k = 0; k < ads.size(); k++) {
            Adapter ad = ads.get(k);
            double[] xd = x.clone();
            if (ad.mask() != null) for (int i = 0; i < xd.length; i++) xd[i] *= ad.mask()[i];
            double[] h = linear(xd, n, in, ad.a(), ad.r(), null);
            double[] y = linear(h, n, ad.r(), ad.b(), out, null);
            if (ad.m() == null) {
                for (int i = 0; i < r.length; i++) r[i] += ad.s() * y[i];
                continue;
            }
            double[] norm = norms != null && norms.get(k) != null ? norms.get(k) : doraNorm(w, ad, out, in);
            double[] baseNb;
            if (ad.mask() == null) {
                baseNb = r.clone();
                if (bias != null) for (int i = 0; i < n; i++) for (int j = 0; j < out; j++) baseNb[i * out + j] -= bias[j];
            } else {
                baseNb = linear(xd, n, in, w, out, null);
            }
            for (int i = 0; i < n; i++) {
                for (int j = 0; j < out; j++) {
                    double c = ad.m()[j] / norm[j];
                    r[i * out + j] += (c - 1) * baseNb[i * out + j] + c * ad.s() * y[i * out + j];
                }
            }
        }
        return r;
    }

    static double dot(double[] a, double[] b) {
        double s = 0;
        for (int i = 0; i < a.length; i++) s += a[i] * b[i];
        return s;
    }

    static double maxAbs(double[] v) {
        double m = 0;
        for (double x : v) m = Math.max(m, Math.abs(x));
        return m;
    }

    /** max |a - b| / max |b|. */
    static double relErr(float[] actual, double[] expected) {
        double md = 0;
        for (int i = 0; i < expected.length; i++) md = Math.max(md, Math.abs(actual[i] - expected[i]));
        return md / Math.max(1e-30, maxAbs(expected));
    }

    /** The dropout mask a backend applies for (seed, p) to a [rows, cols] tensor, read back by dropping out ones. */
    static double[] mask(Backend b, int rows, int cols, float p, long seed) {
        float[] ones = new float[rows * cols];
        java.util.Arrays.fill(ones, 1f);
        return d(b.toHost(b.dropout(Tensor.of(ones, rows, cols), p, seed)).toFloatArray());
    }
}
