package dev.qlora4j.peft;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.tensor.Tensor;

/**
 * The bottleneck adapters' non-linearities (AdapterHub names). silu/swish run on the backend
 * (siluMul with a ones tensor, and siluMulBackward); relu, tanh, gelu (erf form) and gelu_new
 * (tanh form) have no Backend op yet and are computed on the host (a copy each way on a GPU;
 * free on the CPU): the [n, bottleneck] tensors are small next to the model's.
 */
enum Activation {
    RELU, SILU, GELU, GELU_NEW, TANH;

    static Activation of(String name) {
        return switch (name) {
            case "relu" -> RELU;
            case "silu", "swish" -> SILU;
            case "gelu" -> GELU;
            case "gelu_new" -> GELU_NEW;
            case "tanh" -> TANH;
            default -> throw new IllegalArgumentException("unknown non_linearity '" + name + "'");
        };
    }

    Tensor forward(Backend b, Tensor z) {
        if (this == SILU) {
            try (Tensor ones = ones(b, z)) {
                return b.siluMul(z, ones);
            }
        }
        float[] v = b.toHost(z).toFloatArray();
        for (int i = 0; i < v.length; i++) v[i] = (float) f(v[i]);
        return b.upload(Tensor.of(v, z.shape()));
    }

    /** d loss / d z = act'(z) * gradOut. */
    Tensor backward(Backend b, Tensor z, Tensor gradOut) {
        if (this == SILU) {
            try (Tensor ones = ones(b, z)) {
                Tensor[] g = b.siluMulBackward(z, ones, gradOut);
                g[1].close();
                return g[0];
            }
        }
        float[] v = b.toHost(z).toFloatArray(), g = b.toHost(gradOut).toFloatArray();
        for (int i = 0; i < v.length; i++) v[i] = (float) (df(v[i]) * g[i]);
        return b.upload(Tensor.of(v, z.shape()));
    }

    private static Tensor ones(Backend b, Tensor like) {
        float[] o = new float[Math.toIntExact(like.numel())];
        java.util.Arrays.fill(o, 1f);
        return b.upload(Tensor.of(o, like.shape()));
    }

    private static final double SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);

    double f(double x) {
        return switch (this) {
            case RELU -> Math.max(0, x);
            case SILU -> x / (1 + Math.exp(-x));
            case GELU -> 0.5 * x * (1 + erf(x / Math.sqrt(2)));
            case GELU_NEW -> 0.5 * x * (1 + Math.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)));
            case TANH -> Math.tanh(x);
        };
    }

    double df(double x) {
        return switch (this) {
            case RELU -> x > 0 ? 1 : 0;   // torch's relu backward uses 0 at x == 0
            case SILU -> {
                double s = 1 / (1 + Math.exp(-x));
                yield s * (1 + x * (1 - s));
            }
            case GELU -> 0.5 * (1 + erf(x / Math.sqrt(2))) + x * Math.exp(-0.5 * x * x) / Math.sqrt(2 * Math.PI);
            case GELU_NEW -> {
                double u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x), t = Math.tanh(u);
                yield 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x);
            }
            case TANH -> {
                double t = Math.tanh(x);
                yield 1 - t * t;
            }
        };
    }

    /** erf to ~1e-15 relative (series for |x| < 3, continued fraction beyond), enough for float32 GELU. */
    static double erf(double x) {
        double ax = Math.abs(x);
        if (ax < 3) {
            double sum = 0, term = ax;
            for (int n = 0; n < 200; n++) {
                double add = term / (2 * n + 1);
                sum += add;
                if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
                term *= -ax * ax / (n + 1);
            }
            return Math.signum(x) * 2 / Math.sqrt(Math.PI) * sum;
        }
        // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...)))) (Lentz would be overkill here)
        double cf = 0;
        for (int k = 60; k >= 1; k--) cf = (k / 2.0) / (ax + cf);
        double erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / (ax + cf);
        return Math.signum(x) * (1 - erfc);
    }
}
