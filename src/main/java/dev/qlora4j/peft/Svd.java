package dev.qlora4j.peft;

import java.util.Arrays;
import java.util.SplittableRandom;

/**
 * Singular value decompositions in float64 for adapter-sized matrices (PiSSA initialization and
 * add_weighted_adapter "svd"): a one-sided Jacobi (Hestenes) SVD, which is accurate to rounding
 * for any matrix, and torch.svd_lowrank's randomized range finder for the top singular triplets
 * of large matrices (peft's init_lora_weights="pissa_niter_N").
 *
 * <p>Matrices are row-major double arrays. The Jacobi SVD costs O(m n^2) per sweep (about 6-10
 * sweeps) with n = min(rows, cols): fine up to a few thousand; use {@link #lowRank} beyond.
 */
public final class Svd {
    private Svd() {}

    /**
     * A thin SVD A = U diag(S) Vt: u [m, k] (row-major), s [k] descending, vt [k, n], k = min(m, n).
     * Columns of U for zero singular values are zero.
     */
    public record Result(int m, int n, double[] u, double[] s, double[] vt) {
        public int k() { return s.length; }

        /** U_r diag(S_r) Vt_r as a row-major [m, n] matrix. */
        public double[] reconstruct(int r) {
            double[] out = new double[m * n];
            for (int i = 0; i < m; i++) {
                for (int t = 0; t < r; t++) {
                    double us = u[i * k() + t] * s[t];
                    if (us == 0) continue;
                    for (int j = 0; j < n; j++) out[i * n + j] += us * vt[t * n + j];
                }
            }
            return out;
        }
    }

    /** Thin SVD of a row-major [m, n] matrix. */
    public static Result of(double[] a, int m, int n) {
        if (a.length != m * n) throw new IllegalArgumentException(a.length + " values do not fill [" + m + ", " + n + "]");
        if (m >= n) return tall(a, m, n);
        // A^T = V S U^T: decompose the transpose and swap the factors.
        Result t = tall(transpose(a, m, n), n, m);
        int k = t.k();
        double[] u = new double[m * k];   // U = (V of A^T) = Vt(A^T)^T
        for (int i = 0; i < k; i++) for (int j = 0; j < m; j++) u[j * k + i] = t.vt()[i * m + j];
        double[] vt = new double[k * n];  // Vt = U(A^T)^T
        for (int i = 0; i < n; i++) for (int j = 0; j < k; j++) vt[j * n + i] = t.u()[i * k + j];
        return new Result(m, n, u, t.s(), vt);
    }

    /** One-sided Jacobi on the columns of A [m, n], m >= n. */
    private static Result tall(double[] a, int m, int n) {
        double[][] col = new double[n][m]; // columns of the working matrix A V
        for (int i = 0; i < m; i++) for (int j = 0; j < n; j++) col[j][i] = a[i * n + j];
        double[][] v = new double[n][n];   // columns of V
        for (int j = 0; j < n; j++) v[j][j] = 1;
        final double eps = 1e-15;
        for (int sweep = 0; sweep < 100; sweep++) {
            boolean rotated = false;
            for (int p = 0; p < n - 1; p++) {
                for (int q = p + 1; q < n; q++) {
                    double alpha = dot(col[p], col[p]), beta = dot(col[q], col[q]), gamma = dot(col[p], col[q]);
                    if (gamma == 0 || Math.abs(gamma) <= eps * Math.sqrt(alpha * beta)) continue;
                    rotated = true;
                    double zeta = (beta - alpha) / (2 * gamma);
                    double t = Math.signum(zeta) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
                    if (zeta == 0) t = 1;
                    double c = 1 / Math.sqrt(1 + t * t), s = c * t;
                    rotate(col[p], col[q], c, s);
                    rotate(v[p], v[q], c, s);
                }
            }
            if (!rotated) break;
        }
        double[] sigma = new double[n];
        for (int j = 0; j < n; j++) sigma[j] = Math.sqrt(dot(col[j], col[j]));
        Integer[] order = new Integer[n];
        for (int j = 0; j < n; j++) order[j] = j;
        Arrays.sort(order, (x, y) -> Double.compare(sigma[y], sigma[x]));
        double[] u = new double[m * n], s = new double[n], vt = new double[n * n];
        for (int t = 0; t < n; t++) {
            int j = order[t];
            s[t] = sigma[j];
            for (int i = 0; i < m; i++) u[i * n + t] = sigma[j] == 0 ? 0 : col[j][i] / sigma[j];
            for (int i = 0; i < n; i++) vt[t * n + i] = v[j][i];
        }
        return new Result(m, n, u, s, vt);
    }

    /**
     * torch.svd_lowrank(A, q, niter): the top-q singular triplets of A [m, n] from a randomized
     * range finder with niter power iterations (Halko et al.): Q = orth(A R) with R Gaussian [n, q],
     * then niter times Q = orth(A^T Q), Q = orth(A Q); B = Q^T A; A ~ (Q U_B) S_B Vt_B.
     */
    public static Result lowRank(double[] a, int m, int n, int q, int niter, long seed) {
        if (q <= 0 || q > Math.min(m, n)) {
            throw new IllegalArgumentException("rank " + q + " must be in 1.." + Math.min(m, n) + " for a [" + m + ", " + n + "] matrix");
        }
        SplittableRandom rng = new SplittableRandom(seed);
        double[] r = new double[n * q];
        for (int i = 0; i < r.length; i++) r[i] = rng.nextGaussian();
        double[] basis = orthonormalColumns(matmul(a, m, n, r, q), m, q);
        double[] at = transpose(a, m, n);
        for (int it = 0; it < niter; it++) {
            basis = orthonormalColumns(matmul(at, n, m, basis, q), n, q);
            basis = orthonormalColumns(matmul(a, m, n, basis, q), m, q);
        }
        double[] b = matmul(transpose(basis, m, q), q, m, a, n); // [q, n]
        Result small = of(b, q, n);
        double[] u = matmul(basis, m, q, small.u(), small.k()); // [m, k]
        return new Result(m, n, u, small.s(), small.vt());
    }

    /** Modified Gram-Schmidt, applied twice for stability, on the columns of x [rows, cols]. */
    static double[] orthonormalColumns(double[] x, int rows, int cols) {
        double[][] c = new double[cols][rows];
        for (int i = 0; i < rows; i++) for (int j = 0; j < cols; j++) c[j][i] = x[i * cols + j];
        for (int j = 0; j < cols; j++) {
            for (int pass = 0; pass < 2; pass++) {
                for (int p = 0; p < j; p++) {
                    double d = dot(c[p], c[j]);
                    for (int i = 0; i < rows; i++) c[j][i] -= d * c[p][i];
                }
            }
            double norm = Math.sqrt(dot(c[j], c[j]));
            for (int i = 0; i < rows; i++) c[j][i] = norm == 0 ? 0 : c[j][i] / norm;
        }
        double[] out = new double[rows * cols];
        for (int i = 0; i < rows; i++) for (int j = 0; j < cols; j++) out[i * cols + j] = c[j][i];
        return out;
    }

    static double[] matmul(double[] a, int m, int k, double[] b, int n) {
        double[] out = new double[m * n];
        for (int i = 0; i < m; i++) {
            for (int t = 0; t < k; t++) {
                double av = a[i * k + t];
                if (av == 0) continue;
                for (int j = 0; j < n; j++) out[i * n + j] += av * b[t * n + j];
            }
        }
        return out;
    }

    static double[] transpose(double[] a, int m, int n) {
        double[] t = new double[m * n];
        for (int i = 0; i < m; i++) for (int j = 0; j < n; j++) t[j * m + i] = a[i * n + j];
        return t;
    }

    private static double dot(double[] x, double[] y) {
        double s = 0;
        for (int i = 0; i < x.length; i++) s += x[i] * y[i];
        return s;
    }

    private static void rotate(double[] p, double[] q, double c, double s) {
        for (int i = 0; i < p.length; i++) {
            double xp = p[i], xq = q[i];
            p[i] = c * xp - s * xq;
            q[i] = s * xp + c * xq;
        }
    }
}
