package dev.qlora4j.backend.cpu;

import static org.junit.jupiter.api.Assertions.fail;

import java.util.function.ToDoubleFunction;

/**
 * Gradient checks: central finite differences of a float64 scalar loss, compared with the CPU
 * backend's analytic float32 gradients.
 *
 * <p>Why 1e-3 relative: the float64 central difference with step 1e-5 has truncation error
 * ~h^2 * f''' ~ 1e-10 and cancellation error ~1e-16 / 1e-5 = 1e-11 relative, so it is the exact
 * gradient for this purpose; the analytic gradient is float32 (rounding ~1e-7 per operation,
 * ~1e-6 after the sums of these small shapes). 1e-3 leaves a wide margin for float32 while any
 * real error in a gradient formula (a missing term, a wrong index or sign) is of order 1.
 */
final class FiniteDifferences {
    private FiniteDifferences() {}

    static final double STEP = 1e-5;
    static final double REL_TOL = 1e-3;

    /** d loss / d x[i] for every i, by central differences (x is restored). */
    static double[] gradient(double[] x, ToDoubleFunction<double[]> loss) {
        double[] g = new double[x.length];
        for (int i = 0; i < x.length; i++) {
            double keep = x[i];
            x[i] = keep + STEP;
            double up = loss.applyAsDouble(x);
            x[i] = keep - STEP;
            double down = loss.applyAsDouble(x);
            x[i] = keep;
            g[i] = (up - down) / (2 * STEP);
        }
        return g;
    }

    /**
     * Fails unless |analytic[i] - fd[i]| <= REL_TOL * max(|fd[i]|, rms(fd)) for every i: relative
     * error below 1e-3, measured against the gradient's typical size where an entry is near zero.
     */
    static void assertGradient(double[] fd, float[] analytic, String what) {
        if (fd.length != analytic.length) fail(what + ": length " + analytic.length + " != " + fd.length);
        double ss = 0;
        for (double v : fd) ss += v * v;
        double rms = Math.sqrt(ss / Math.max(1, fd.length));
        if (!(rms > 0)) fail(what + ": the finite-difference gradient is all zero; the check would prove nothing");
        for (int i = 0; i < fd.length; i++) {
            double err = Math.abs(analytic[i] - fd[i]);
            double tol = REL_TOL * Math.max(Math.abs(fd[i]), rms);
            if (!(err <= tol)) {
                fail(what + ": index " + i + " analytic " + analytic[i] + " vs finite difference " + fd[i]
                        + " (error " + err + " > " + tol + ")");
            }
        }
    }

    static double[] toDoubles(float[] a) {
        double[] d = new double[a.length];
        for (int i = 0; i < a.length; i++) d[i] = a[i];
        return d;
    }

    static double dot(double[] a, double[] b) {
        double s = 0;
        for (int i = 0; i < a.length; i++) s += a[i] * b[i];
        return s;
    }
}
