package dev.qlora4j.backend.cpu;

import static dev.qlora4j.backend.cpu.Activations.read;
import static dev.qlora4j.backend.cpu.Activations.readIndices;
import static dev.qlora4j.backend.cpu.Activations.requireRank;
import static dev.qlora4j.backend.cpu.Activations.requireSameShape;
import static dev.qlora4j.backend.cpu.Activations.shape;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.KvCache;
import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.quant.Int8Weight;
import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Device;
import dev.qlora4j.tensor.Tensor;

/**
 * The reference backend: float32 activations on the heap, weights read in place (F32, BF16 or
 * F16, heap or memory-mapped), Vector API kernels run on a private pool of worker threads.
 * Numerics follow HF transformers in float32 (see each kernel class for the exact order).
 */
public final class CpuBackend implements Backend {
    private final Parallel parallel;

    /** One worker per available processor. */
    public CpuBackend() {
        this(Runtime.getRuntime().availableProcessors());
    }

    /** threads workers (1 runs everything on the calling thread). */
    public CpuBackend(int threads) {
        this.parallel = new Parallel(threads);
    }

    public int threads() { return parallel.threads(); }

    @Override public Device device() { return Device.CPU; }

    @Override public DType activationDType() { return DType.F32; }

    // ---- memory ----

    @Override
    public Tensor empty(DType dtype, int... shape) {
        return Tensor.zeros(dtype, shape);
    }

    @Override
    public Tensor upload(Tensor host) {
        requireHost(host, "upload");
        return host;
    }

    @Override
    public Tensor toHost(Tensor t) {
        requireHost(t, "toHost");
        return t;
    }

    @Override
    public Tensor cast(Tensor t, DType dtype) {
        requireHost(t, "cast");
        return t.toDType(dtype);
    }

    private static void requireHost(Tensor t, String op) {
        if (!t.device().isCpu()) {
            throw new IllegalArgumentException(op + ": " + t + " is on " + t.device()
                    + "; the CPU backend only holds host tensors (copy it with its own backend's toHost)");
        }
    }

    // ---- forward ops ----

    @Override
    public Tensor embedding(Tensor ids, Tensor table) {
        int[] tokens = readIndices(ids, "embedding ids");
        WeightView w = WeightView.of(table, "embedding table");
        for (int id : tokens) {
            if (id < 0 || id >= w.rows) {
                throw new IllegalArgumentException("token id " + id + " is outside the embedding table (vocab size "
                        + w.rows + "); check that the tokenizer matches the model");
            }
        }
        int hidden = w.cols;
        float[] out = new float[tokens.length * hidden];
        parallel.forRange(tokens.length, hidden, (lo, hi) -> {
            for (int r = lo; r < hi; r++) w.rowsToFloats(tokens[r], tokens[r] + 1, out, r * hidden);
        });
        return Tensor.of(out, tokens.length, hidden);
    }

    @Override
    public Tensor rmsNorm(Tensor x, Tensor weight, float eps) {
        requireRank(x, 2, "rmsNorm x");
        float[] w = WeightView.ofVector(weight, "rmsNorm weight").toFloats();
        int n = x.dim(0), h = x.dim(1);
        if (w.length != h) {
            throw new IllegalArgumentException("rmsNorm: x " + shape(x) + " and weight " + shape(weight)
                    + " disagree on the hidden size");
        }
        float[] xs = read(x, "rmsNorm x");
        float[] out = new float[n * h];
        parallel.forRange(n, 4L * h, (lo, hi) -> RowOps.rmsNorm(xs, w, eps, h, out, lo, hi));
        return Tensor.of(out, n, h);
    }

    @Override
    public Tensor linear(Tensor x, Tensor w, Tensor bias) {
        requireRank(x, 2, "linear x");
        WeightView wv = WeightView.of(w, "linear weight");
        int n = x.dim(0), k = x.dim(1), m = wv.rows;
        if (wv.cols != k) {
            throw new IllegalArgumentException("linear: x " + shape(x) + " and w " + shape(w)
                    + " disagree on the input features (" + k + " vs " + wv.cols + "); w must be [out, in]");
        }
        float[] b = null;
        if (bias != null) {
            b = WeightView.ofVector(bias, "linear bias").toFloats();
            if (b.length != m) {
                throw new IllegalArgumentException("linear: bias " + shape(bias) + " does not match w " + shape(w)
                        + " (expected [" + m + "])");
            }
        }
        float[] out = new float[Math.multiplyExact(n, m)];
        LinearKernel.run(parallel, read(x, "linear x"), n, wv, b, out);
        return Tensor.of(out, n, m);
    }

    @Override
    public Tensor add(Tensor a, Tensor b) {
        requireSameShape(a, b, "add");
        float[] as = read(a, "add a"), bs = read(b, "add b");
        float[] out = new float[as.length];
        parallel.forRange(out.length, 1, (lo, hi) -> RowOps.add(as, bs, out, lo, hi));
        return Tensor.of(out, a.shape());
    }

    @Override
    public Tensor addInPlace(Tensor a, Tensor b) {
        requireSameShape(a, b, "addInPlace");
        Activations.requireF32(a, "addInPlace target a");
        float[] as = read(a, "addInPlace a"), bs = read(b, "addInPlace b");
        parallel.forRange(as.length, 1, (lo, hi) -> RowOps.add(as, bs, as, lo, hi));
        Activations.writeBack(a, as);
        return a;
    }

    @Override
    public Tensor siluMul(Tensor gate, Tensor up) {
        requireSameShape(gate, up, "siluMul");
        float[] g = read(gate, "siluMul gate"), u = read(up, "siluMul up");
        float[] out = new float[g.length];
        parallel.forRange(out.length, 16, (lo, hi) -> RowOps.siluMul(g, u, out, lo, hi));
        return Tensor.of(out, gate.shape());
    }

    @Override
    public void ropeInPlace(Tensor x, Tensor positions, Tensor invFreq, int heads, int headDim, float attentionScaling) {
        requireRank(x, 2, "rope x");
        Activations.requireF32(x, "rope x");
        int[] pos = readIndices(positions, "rope positions");
        float[] freq = WeightView.ofVector(invFreq, "rope invFreq").toFloats();
        if (heads < 1 || headDim < 2 || headDim % 2 != 0) {
            throw new IllegalArgumentException("rope: heads must be >= 1 and headDim even, got heads=" + heads
                    + " headDim=" + headDim);
        }
        if (x.dim(1) != heads * headDim) {
            throw new IllegalArgumentException("rope: x " + shape(x) + " is not [n, heads*headDim] = [n, "
                    + heads + "*" + headDim + "]");
        }
        if (pos.length != x.dim(0)) {
            throw new IllegalArgumentException("rope: positions " + shape(positions) + " do not match x " + shape(x)
                    + " (one position per row)");
        }
        if (freq.length != headDim / 2) {
            throw new IllegalArgumentException("rope: invFreq " + shape(invFreq) + " must be [headDim/2] = ["
                    + headDim / 2 + "]");
        }
        float[] xs = read(x, "rope x");
        parallel.forRange(pos.length, 6L * x.dim(1),
                (lo, hi) -> Rope.apply(xs, pos, freq, heads, headDim, attentionScaling, lo, hi));
        Activations.writeBack(x, xs);
    }

    @Override
    public KvCache newKvCache(int layers, int batch, int kvHeads, int capacity, int headDim) {
        return new CpuKvCache(layers, batch, kvHeads, capacity, headDim);
    }

    @Override
    public Tensor attention(Tensor q, Tensor k, Tensor v, KvCache cache, int layer, int start, Tensor padStart,
                            int heads, int kvHeads, int headDim, float scale, int window) {
        if (!(cache instanceof CpuKvCache c)) {
            throw new IllegalArgumentException("attention: the CPU backend needs a KV cache from its own newKvCache, got "
                    + (cache == null ? "null" : cache.getClass().getName()));
        }
        int[] pads = readIndices(padStart, "attention padStart");
        AttentionKernel.Shape s = attentionShape(q, k, v, c, start, pads, heads, kvHeads, headDim);
        float[] qs = read(q, "attention q");
        float[] kc = c.keyArray(layer), vc = c.valueArray(layer);
        AttentionKernel.writeCache(s, read(k, "attention k"), read(v, "attention v"), kc, vc, start);
        float[] out = new float[qs.length];
        long workPerPair = 4L * s.tokens() * (start + s.tokens()) * headDim;
        parallel.forRange(s.batch() * heads, workPerPair,
                (lo, hi) -> AttentionKernel.attend(s, qs, kc, vc, start, pads, scale, window, out, lo, hi));
        return Tensor.of(out, q.shape());
    }

    private static AttentionKernel.Shape attentionShape(Tensor q, Tensor k, Tensor v, CpuKvCache c, int start,
                                                        int[] pads, int heads, int kvHeads, int headDim) {
        requireRank(q, 2, "attention q");
        requireRank(k, 2, "attention k");
        requireSameShape(k, v, "attention k and v");
        if (heads < 1 || kvHeads < 1 || heads % kvHeads != 0) {
            throw new IllegalArgumentException("attention: heads (" + heads + ") must be a positive multiple of kvHeads ("
                    + kvHeads + ")");
        }
        if (c.kvHeads() != kvHeads || c.headDim() != headDim) {
            throw new IllegalArgumentException("attention: KV cache has kvHeads=" + c.kvHeads() + " headDim="
                    + c.headDim() + " but the call has kvHeads=" + kvHeads + " headDim=" + headDim);
        }
        int batch = c.batch();
        if (pads.length != batch) {
            throw new IllegalArgumentException("attention: padStart has " + pads.length
                    + " entries but the KV cache batch is " + batch);
        }
        if (q.dim(1) != heads * headDim || k.dim(1) != kvHeads * headDim) {
            throw new IllegalArgumentException("attention: q " + shape(q) + " and k " + shape(k) + " must be [B*T, "
                    + heads + "*" + headDim + "] and [B*T, " + kvHeads + "*" + headDim + "]");
        }
        if (q.dim(0) != k.dim(0) || q.dim(0) % batch != 0) {
            throw new IllegalArgumentException("attention: q " + shape(q) + " and k " + shape(k)
                    + " must both have B*T rows with B = " + batch + " (the KV cache batch)");
        }
        int tokens = q.dim(0) / batch;
        if (start < 0 || start + tokens > c.capacity()) {
            throw new IllegalArgumentException("attention: slots [" + start + ", " + (start + tokens)
                    + ") do not fit the KV cache capacity " + c.capacity() + "; create a larger cache");
        }
        for (int b = 0; b < batch; b++) {
            if (pads[b] < 0) {
                throw new IllegalArgumentException("attention: padStart[" + b + "] = " + pads[b] + " is negative");
            }
        }
        return new AttentionKernel.Shape(batch, tokens, heads, kvHeads, headDim, c.capacity());
    }

    @Override
    public Tensor gatherRows(Tensor x, Tensor rows) {
        requireRank(x, 2, "gatherRows x");
        int[] idx = readIndices(rows, "gatherRows rows");
        int n = x.dim(0), h = x.dim(1);
        for (int r : idx) {
            if (r < 0 || r >= n) {
                throw new IllegalArgumentException("gatherRows: row " + r + " is outside x " + shape(x));
            }
        }
        float[] xs = read(x, "gatherRows x");
        float[] out = new float[idx.length * h];
        for (int i = 0; i < idx.length; i++) System.arraycopy(xs, idx[i] * h, out, i * h, h);
        return Tensor.of(out, idx.length, h);
    }

    @Override
    public Tensor crossEntropy(Tensor logits, Tensor targets) {
        requireRank(logits, 2, "crossEntropy logits");
        int[] t = readIndices(targets, "crossEntropy targets");
        int n = logits.dim(0), vocab = logits.dim(1);
        if (t.length != n) {
            throw new IllegalArgumentException("crossEntropy: logits " + shape(logits) + " and targets "
                    + shape(targets) + " disagree on the number of rows");
        }
        for (int i = 0; i < n; i++) {
            if (t[i] != RowOps.IGNORE_INDEX && (t[i] < 0 || t[i] >= vocab)) {
                throw new IllegalArgumentException("crossEntropy: target " + t[i] + " in row " + i
                        + " is outside the vocabulary of " + vocab + " (use -100 to ignore a position)");
            }
        }
        float[] ls = read(logits, "crossEntropy logits");
        float[] loss = new float[n];
        parallel.forRange(n, 3L * vocab, (lo, hi) -> RowOps.crossEntropy(ls, vocab, t, loss, lo, hi));
        return Tensor.of(loss, n);
    }

    @Override
    public QuantizedWeight prepare4bit(QuantState4bit weight, DType computeDType) {
        return new CpuQuantized.FourBit(weight, computeDType);
    }

    @Override
    public QuantizedWeight prepare8bit(Int8Weight weight, float threshold) {
        return new CpuQuantized.EightBit(weight, threshold);
    }

    @Override
    public Tensor linearQuantized(Tensor x, QuantizedWeight w, Tensor bias) {
        requireRank(x, 2, "linearQuantized x");
        if (x.dim(1) != w.inFeatures()) {
            throw new IllegalArgumentException("linearQuantized: x " + shape(x) + " does not match the weight ["
                    + w.outFeatures() + ", " + w.inFeatures() + "]");
        }
        float[] b = bias == null ? null : read(bias, "linearQuantized bias");
        return CpuQuantized.linear(read(x, "linearQuantized x"), x.dim(0), w, b);
    }

    @Override
    public Tensor dequantize(QuantizedWeight w, DType dtype) {
        return CpuQuantized.dequantize(w, dtype);
    }

    /** Stops the worker threads. */
    @Override
    public void close() {
        parallel.close();
    }
}
