package dev.qlora4j.peft;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.KvCache;
import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.backend.cpu.CpuBackend;
import dev.qlora4j.quant.Int8Weight;
import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Device;
import dev.qlora4j.tensor.Tensor;

/**
 * Test-only backend: the real CPU backend's forward ops plus plain-Java (float64-accumulated)
 * versions of the training ops this package uses, written straight from Backend's documented
 * contract. It lets the adapter logic be checked before the CPU backend's own training ops are
 * merged; the same tests also run on the real CPU backend (skipped while its ops throw).
 */
final class RefOpsBackend implements Backend {
    private final CpuBackend cpu = new CpuBackend(1);

    @Override public Device device() { return Device.CPU; }
    @Override public DType activationDType() { return DType.F32; }
    @Override public Tensor empty(DType dtype, int... shape) { return cpu.empty(dtype, shape); }
    @Override public Tensor upload(Tensor host) { return cpu.upload(host); }
    @Override public Tensor toHost(Tensor t) { return cpu.toHost(t); }
    @Override public Tensor cast(Tensor t, DType dtype) { return cpu.cast(t, dtype); }
    @Override public Tensor embedding(Tensor ids, Tensor table) { return cpu.embedding(ids, table); }
    @Override public Tensor rmsNorm(Tensor x, Tensor weight, float eps) { return cpu.rmsNorm(x, weight, eps); }
    @Override public Tensor linear(Tensor x, Tensor w, Tensor bias) { return cpu.linear(x, w, bias); }
    @Override public Tensor add(Tensor a, Tensor b) { return cpu.add(a, b); }
    @Override public Tensor addInPlace(Tensor a, Tensor b) { return cpu.addInPlace(a, b); }
    @Override public Tensor siluMul(Tensor gate, Tensor up) { return cpu.siluMul(gate, up); }
    @Override public void ropeInPlace(Tensor x, Tensor p, Tensor f, int h, int d, float s) { cpu.ropeInPlace(x, p, f, h, d, s); }
    @Override public KvCache newKvCache(int l, int b, int kv, int c, int d) { return cpu.newKvCache(l, b, kv, c, d); }
    @Override public Tensor attention(Tensor q, Tensor k, Tensor v, KvCache cache, int layer, int start, Tensor padStart,
                                      int heads, int kvHeads, int headDim, float scale, int window) {
        return cpu.attention(q, k, v, cache, layer, start, padStart, heads, kvHeads, headDim, scale, window);
    }
    @Override public Tensor gatherRows(Tensor x, Tensor rows) { return cpu.gatherRows(x, rows); }
    @Override public Tensor crossEntropy(Tensor logits, Tensor targets) { return cpu.crossEntropy(logits, targets); }
    @Override public QuantizedWeight prepare4bit(QuantState4bit w, DType d) { return cpu.prepare4bit(w, d); }
    @Override public QuantizedWeight prepare8bit(Int8Weight w, float t) { return cpu.prepare8bit(w, t); }
    @Override public Tensor linearQuantized(Tensor x, QuantizedWeight w, Tensor bias) { return cpu.linearQuantized(x, w, bias); }
    @Override public Tensor dequantize(QuantizedWeight w, DType dtype) { return cpu.dequantize(w, dtype); }

    // ---- training ops, reference implementations ----

    @Override
    public Tensor scale(Tensor a, float s) {
        float[] v = a.toFloatArray();
        for (int i = 0; i < v.length; i++) v[i] *= s;
        return Tensor.of(v, a.shape());
    }

    @Override
    public Tensor axpyInPlace(Tensor a, float alpha, Tensor b) {
        same(a, b);
        for (long i = 0; i < a.numel(); i++) a.setFloat(i, a.getFloat(i) + alpha * b.getFloat(i));
        return a;
    }

    @Override
    public Tensor mul(Tensor a, Tensor b) {
        same(a, b);
        float[] v = a.toFloatArray(), w = b.toFloatArray();
        for (int i = 0; i < v.length; i++) v[i] *= w[i];
        return Tensor.of(v, a.shape());
    }

    @Override
    public double sumOfSquares(Tensor a) {
        double s = 0;
        for (float v : a.toFloatArray()) s += (double) v * v;
        return s;
    }

    /** keep element i when u(seed, i) >= p, u uniform in [0, 1) from a SplitMix64 hash. */
    static boolean keep(long seed, long i, float p) {
        long z = seed + (i + 1) * 0x9e3779b97f4a7c15L;
        z = (z ^ (z >>> 30)) * 0xbf58476d1ce4e5b9L;
        z = (z ^ (z >>> 27)) * 0x94d049bb133111ebL;
        z ^= z >>> 31;
        return (z >>> 11) * 0x1.0p-53 >= p;
    }

    @Override
    public Tensor dropout(Tensor x, float p, long seed) {
        float[] v = x.toFloatArray();
        for (int i = 0; i < v.length; i++) v[i] = keep(seed, i, p) ? v[i] / (1 - p) : 0f;
        return Tensor.of(v, x.shape());
    }

    @Override
    public Tensor rowNorms(Tensor x) {
        int n = x.dim(0), h = x.dim(1);
        float[] out = new float[n];
        for (int i = 0; i < n; i++) {
            double s = 0;
            for (int j = 0; j < h; j++) {
                double v = x.getFloat((long) i * h + j);
                s += v * v;
            }
            out[i] = (float) Math.sqrt(s);
        }
        return Tensor.of(out, n);
    }

    @Override
    public Tensor scaleColumns(Tensor x, Tensor s) {
        int n = x.dim(0), m = x.dim(1);
        float[] v = x.toFloatArray(), c = s.toFloatArray();
        for (int i = 0; i < n; i++) for (int j = 0; j < m; j++) v[i * m + j] *= c[j];
        return Tensor.of(v, n, m);
    }

    @Override
    public Tensor transpose(Tensor x) {
        int n = x.dim(0), m = x.dim(1);
        float[] v = x.toFloatArray(), t = new float[n * m];
        for (int i = 0; i < n; i++) for (int j = 0; j < m; j++) t[j * n + i] = v[i * m + j];
        return Tensor.of(t, m, n);
    }

    @Override
    public Tensor linearBackwardInput(Tensor gradOut, Tensor w) {
        int n = gradOut.dim(0), m = gradOut.dim(1), k = w.dim(1);
        float[] g = gradOut.toFloatArray(), wv = w.toFloatArray(), out = new float[n * k];
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < k; j++) {
                double s = 0;
                for (int t = 0; t < m; t++) s += (double) g[i * m + t] * wv[t * k + j];
                out[i * k + j] = (float) s;
            }
        }
        return Tensor.of(out, n, k);
    }

    @Override
    public Tensor linearQuantizedBackwardInput(Tensor gradOut, QuantizedWeight w) {
        try (Tensor dq = cpu.dequantize(w, DType.F32)) {
            return linearBackwardInput(gradOut, dq);
        }
    }

    @Override
    public void linearBackwardWeight(Tensor gradOut, Tensor x, Tensor gradW) {
        int n = gradOut.dim(0), m = gradOut.dim(1), k = x.dim(1);
        float[] g = gradOut.toFloatArray(), xv = x.toFloatArray();
        for (int a = 0; a < m; a++) {
            for (int b = 0; b < k; b++) {
                double s = 0;
                for (int i = 0; i < n; i++) s += (double) g[i * m + a] * xv[i * k + b];
                long idx = (long) a * k + b;
                gradW.setFloat(idx, (float) (gradW.getFloat(idx) + s));
            }
        }
    }

    @Override
    public void sumRowsInto(Tensor gradOut, Tensor gradB) {
        int n = gradOut.dim(0), m = gradOut.dim(1);
        for (int j = 0; j < m; j++) {
            double s = 0;
            for (int i = 0; i < n; i++) s += gradOut.getFloat((long) i * m + j);
            gradB.setFloat(j, (float) (gradB.getFloat(j) + s));
        }
    }

    @Override
    public void embeddingBackward(Tensor ids, Tensor gradOut, Tensor gradTable) {
        int h = gradOut.dim(1);
        for (int i = 0; i < ids.dim(0); i++) {
            int id = ids.getInt(i);
            for (int j = 0; j < h; j++) {
                long idx = (long) id * h + j;
                gradTable.setFloat(idx, gradTable.getFloat(idx) + gradOut.getFloat((long) i * h + j));
            }
        }
    }

    private static void same(Tensor a, Tensor b) {
        if (a.numel() != b.numel()) throw new IllegalArgumentException(a + " vs " + b);
    }

    @Override
    public void close() { cpu.close(); }
}
