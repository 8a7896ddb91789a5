package dev.qlora4j.backend.cpu;

import static dev.qlora4j.backend.cpu.Activations.read;
import static dev.qlora4j.backend.cpu.Activations.readIndices;
import static dev.qlora4j.backend.cpu.Activations.requireRank;
import static dev.qlora4j.backend.cpu.Activations.requireSameShape;
import static dev.qlora4j.backend.cpu.Activations.shape;

import dev.qlora4j.backend.AttentionResult;
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

    // ---- training: backward passes and the ops adapters need ----

    @Override
    public Tensor scale(Tensor a, float s) {
        float[] as = read(a, "scale a");
        float[] out = new float[as.length];
        parallel.forRange(out.length, 1, (lo, hi) -> ElementwiseOps.scale(as, s, out, lo, hi));
        return Tensor.of(out, a.shape());
    }

    @Override
    public Tensor axpyInPlace(Tensor a, float alpha, Tensor b) {
        requireSameShape(a, b, "axpyInPlace");
        Activations.requireF32(a, "axpyInPlace target a");
        float[] as = read(a, "axpyInPlace a"), bs = read(b, "axpyInPlace b");
        parallel.forRange(as.length, 2, (lo, hi) -> ElementwiseOps.axpy(as, alpha, bs, lo, hi));
        Activations.writeBack(a, as);
        return a;
    }

    @Override
    public Tensor mul(Tensor a, Tensor b) {
        requireSameShape(a, b, "mul");
        float[] as = read(a, "mul a"), bs = read(b, "mul b");
        float[] out = new float[as.length];
        parallel.forRange(out.length, 1, (lo, hi) -> ElementwiseOps.mul(as, bs, out, lo, hi));
        return Tensor.of(out, a.shape());
    }

    @Override
    public double sumOfSquares(Tensor a) {
        float[] as = read(a, "sumOfSquares a");
        int blocks = (as.length + ElementwiseOps.SQUARES_BLOCK - 1) / ElementwiseOps.SQUARES_BLOCK;
        double[] partial = new double[blocks];
        parallel.forRange(blocks, 2L * ElementwiseOps.SQUARES_BLOCK,
                (lo, hi) -> ElementwiseOps.sumOfSquaresBlocks(as, partial, lo, hi));
        double sum = 0;
        for (double p : partial) sum += p;
        return sum;
    }

    /** See {@link Dropout} for the exact mask function (shared with the CUDA backend). */
    @Override
    public Tensor dropout(Tensor x, float p, long seed) {
        if (!(p >= 0f && p <= 1f)) {
            throw new IllegalArgumentException("dropout: probability p must be in [0, 1], got " + p);
        }
        float[] xs = read(x, "dropout x");
        float[] out = new float[xs.length];
        parallel.forRange(out.length, 12, (lo, hi) -> Dropout.apply(xs, p, seed, out, lo, hi));
        return Tensor.of(out, x.shape());
    }

    @Override
    public Tensor rowNorms(Tensor x) {
        requireRank(x, 2, "rowNorms x");
        int n = x.dim(0), h = x.dim(1);
        float[] xs = read(x, "rowNorms x");
        float[] out = new float[n];
        parallel.forRange(n, 2L * h, (lo, hi) -> ElementwiseOps.rowNorms(xs, h, out, lo, hi));
        return Tensor.of(out, n);
    }

    @Override
    public Tensor scaleColumns(Tensor x, Tensor s) {
        requireRank(x, 2, "scaleColumns x");
        int n = x.dim(0), m = x.dim(1);
        float[] ss = WeightView.ofVector(s, "scaleColumns s").toFloats();
        if (ss.length != m) {
            throw new IllegalArgumentException("scaleColumns: s " + shape(s) + " must have one value per column of x "
                    + shape(x));
        }
        float[] xs = read(x, "scaleColumns x");
        float[] out = new float[xs.length];
        parallel.forRange(n, m, (lo, hi) -> ElementwiseOps.scaleColumns(xs, ss, m, out, lo, hi));
        return Tensor.of(out, n, m);
    }

    @Override
    public Tensor transpose(Tensor x) {
        requireRank(x, 2, "transpose x");
        int n = x.dim(0), m = x.dim(1);
        float[] xs = read(x, "transpose x");
        float[] out = new float[xs.length];
        int tile = ElementwiseOps.TRANSPOSE_TILE;
        int tiles = (m + tile - 1) / tile;
        parallel.forRange(tiles, (long) tile * n,
                (lo, hi) -> ElementwiseOps.transpose(xs, n, m, out, lo * tile, Math.min(m, hi * tile)));
        return Tensor.of(out, m, n);
    }

    @Override
    public Tensor linearBackwardInput(Tensor gradOut, Tensor w) {
        requireRank(gradOut, 2, "linearBackwardInput gradOut");
        WeightView wv = WeightView.of(w, "linearBackwardInput weight");
        int n = gradOut.dim(0), m = gradOut.dim(1);
        if (wv.rows != m) {
            throw new IllegalArgumentException("linearBackwardInput: gradOut " + shape(gradOut) + " and w " + shape(w)
                    + " disagree on the output features (" + m + " vs " + wv.rows + "); w must be [out, in]");
        }
        float[] out = new float[Math.multiplyExact(n, wv.cols)];
        MatmulAccumulate.run(parallel, read(gradOut, "linearBackwardInput gradOut"), m, 1, n, m,
                MatmulAccumulate.ofWeight(wv), wv.cols, out);
        return Tensor.of(out, n, wv.cols);
    }

    @Override
    public Tensor linearQuantizedBackwardInput(Tensor gradOut, QuantizedWeight w) {
        requireRank(gradOut, 2, "linearQuantizedBackwardInput gradOut");
        int n = gradOut.dim(0), m = gradOut.dim(1);
        if (m != w.outFeatures()) {
            throw new IllegalArgumentException("linearQuantizedBackwardInput: gradOut " + shape(gradOut)
                    + " does not match the weight [" + w.outFeatures() + ", " + w.inFeatures() + "] (need [n, "
                    + w.outFeatures() + "])");
        }
        MatmulAccumulate.BlockSource source = switch (w) {
            case CpuQuantized.FourBit f -> QuantizedBlocks.of4bit(f.state(), f.computeDType());
            case CpuQuantized.EightBit e -> QuantizedBlocks.of8bit(e.weight());
            default -> throw new IllegalArgumentException("quantized weight " + w.getClass().getSimpleName()
                    + " was prepared for another backend; prepare it with this backend's prepare4bit/prepare8bit");
        };
        int k = w.inFeatures();
        float[] out = new float[Math.multiplyExact(n, k)];
        MatmulAccumulate.run(parallel, read(gradOut, "linearQuantizedBackwardInput gradOut"), m, 1, n, m, source, k, out);
        return Tensor.of(out, n, k);
    }

    @Override
    public void linearBackwardWeight(Tensor gradOut, Tensor x, Tensor gradW) {
        requireRank(gradOut, 2, "linearBackwardWeight gradOut");
        requireRank(x, 2, "linearBackwardWeight x");
        requireRank(gradW, 2, "linearBackwardWeight gradW");
        Activations.requireF32(gradW, "linearBackwardWeight gradW");
        int n = gradOut.dim(0), m = gradOut.dim(1), k = x.dim(1);
        if (x.dim(0) != n || gradW.dim(0) != m || gradW.dim(1) != k) {
            throw new IllegalArgumentException("linearBackwardWeight: gradOut " + shape(gradOut) + ", x " + shape(x)
                    + " and gradW " + shape(gradW) + " must be [n, m], [n, k] and [m, k]");
        }
        float[] gw = read(gradW, "linearBackwardWeight gradW");
        // gradW [m, k] += A B with A = gradOut^T (A[j, i] = gradOut[i * m + j]) and B = x [n, k].
        MatmulAccumulate.run(parallel, read(gradOut, "linearBackwardWeight gradOut"), 1, m, m, n,
                MatmulAccumulate.ofArray(read(x, "linearBackwardWeight x"), k), k, gw);
        Activations.writeBack(gradW, gw);
    }

    @Override
    public void sumRowsInto(Tensor gradOut, Tensor gradB) {
        requireRank(gradOut, 2, "sumRowsInto gradOut");
        requireRank(gradB, 1, "sumRowsInto gradB");
        Activations.requireF32(gradB, "sumRowsInto gradB");
        int n = gradOut.dim(0), m = gradOut.dim(1);
        if (gradB.dim(0) != m) {
            throw new IllegalArgumentException("sumRowsInto: gradB " + shape(gradB) + " must have one value per column of "
                    + "gradOut " + shape(gradOut));
        }
        float[] g = read(gradOut, "sumRowsInto gradOut");
        float[] gb = read(gradB, "sumRowsInto gradB");
        forColumnSlices(m, n, (c0, c1) -> ColumnSums.sumRows(g, n, m, gb, c0, c1));
        Activations.writeBack(gradB, gb);
    }

    /** Runs body over column slices [c0, c1) of width ColumnSums.SLICE covering [0, cols). */
    private void forColumnSlices(int cols, long rows, Parallel.RangeBody body) {
        int slice = ColumnSums.SLICE;
        int slices = (cols + slice - 1) / slice;
        parallel.forRange(slices, rows * slice, (lo, hi) -> {
            for (int u = lo; u < hi; u++) body.run(u * slice, Math.min(cols, (u + 1) * slice));
        });
    }

    @Override
    public Tensor rmsNormBackward(Tensor x, Tensor weight, float eps, Tensor gradOut, Tensor gradWeight) {
        requireRank(x, 2, "rmsNormBackward x");
        requireSameShape(x, gradOut, "rmsNormBackward x and gradOut");
        float[] w = WeightView.ofVector(weight, "rmsNormBackward weight").toFloats();
        int n = x.dim(0), h = x.dim(1);
        if (w.length != h) {
            throw new IllegalArgumentException("rmsNormBackward: x " + shape(x) + " and weight " + shape(weight)
                    + " disagree on the hidden size");
        }
        if (gradWeight != null) {
            requireRank(gradWeight, 1, "rmsNormBackward gradWeight");
            Activations.requireF32(gradWeight, "rmsNormBackward gradWeight");
            if (gradWeight.dim(0) != h) {
                throw new IllegalArgumentException("rmsNormBackward: gradWeight " + shape(gradWeight)
                        + " must be [" + h + "] like the weight");
            }
        }
        float[] xs = read(x, "rmsNormBackward x"), g = read(gradOut, "rmsNormBackward gradOut");
        float[] gx = new float[xs.length];
        float[] inv = new float[n]; // 1/rms per row, for the weight gradient
        parallel.forRange(n, 8L * h, (lo, hi) -> ActivationBackward.rmsNorm(xs, w, eps, g, h, gx, inv, lo, hi));
        if (gradWeight != null) {
            float[] gw = read(gradWeight, "rmsNormBackward gradWeight");
            forColumnSlices(h, 2L * n, (c0, c1) -> ActivationBackward.rmsNormWeight(xs, g, inv, n, h, gw, c0, c1));
            Activations.writeBack(gradWeight, gw);
        }
        return Tensor.of(gx, n, h);
    }

    @Override
    public Tensor[] siluMulBackward(Tensor gate, Tensor up, Tensor gradOut) {
        requireSameShape(gate, up, "siluMulBackward gate and up");
        requireSameShape(gate, gradOut, "siluMulBackward gate and gradOut");
        float[] ga = read(gate, "siluMulBackward gate"), u = read(up, "siluMulBackward up");
        float[] g = read(gradOut, "siluMulBackward gradOut");
        float[] gradGate = new float[ga.length], gradUp = new float[ga.length];
        parallel.forRange(ga.length, 24, (lo, hi) -> ActivationBackward.siluMul(ga, u, g, gradGate, gradUp, lo, hi));
        return new Tensor[] {Tensor.of(gradGate, gate.shape()), Tensor.of(gradUp, gate.shape())};
    }

    @Override
    public void ropeBackwardInPlace(Tensor grad, Tensor positions, Tensor invFreq, int heads, int headDim,
                                    float attentionScaling) {
        // Same checks as the forward (rope's messages name the argument the same way).
        requireRank(grad, 2, "rope backward grad");
        Activations.requireF32(grad, "rope backward grad");
        int[] pos = readIndices(positions, "rope backward positions");
        float[] freq = WeightView.ofVector(invFreq, "rope backward invFreq").toFloats();
        if (heads < 1 || headDim < 2 || headDim % 2 != 0) {
            throw new IllegalArgumentException("rope backward: heads must be >= 1 and headDim even, got heads=" + heads
                    + " headDim=" + headDim);
        }
        if (grad.dim(1) != heads * headDim || pos.length != grad.dim(0) || freq.length != headDim / 2) {
            throw new IllegalArgumentException("rope backward: grad " + shape(grad) + ", positions " + shape(positions)
                    + " and invFreq " + shape(invFreq) + " must be [n, " + heads + "*" + headDim + "], [n] and ["
                    + headDim / 2 + "]");
        }
        float[] gs = read(grad, "rope backward grad");
        parallel.forRange(pos.length, 6L * grad.dim(1),
                (lo, hi) -> Rope.applyBackward(gs, pos, freq, heads, headDim, attentionScaling, lo, hi));
        Activations.writeBack(grad, gs);
    }

    @Override
    public void embeddingBackward(Tensor ids, Tensor gradOut, Tensor gradTable) {
        int[] tokens = readIndices(ids, "embeddingBackward ids");
        requireRank(gradOut, 2, "embeddingBackward gradOut");
        requireRank(gradTable, 2, "embeddingBackward gradTable");
        Activations.requireF32(gradTable, "embeddingBackward gradTable");
        int vocab = gradTable.dim(0), hidden = gradTable.dim(1);
        if (gradOut.dim(0) != tokens.length || gradOut.dim(1) != hidden) {
            throw new IllegalArgumentException("embeddingBackward: gradOut " + shape(gradOut) + " must be ["
                    + tokens.length + ", " + hidden + "] (one row per id, gradTable " + shape(gradTable) + ")");
        }
        for (int id : tokens) {
            if (id < 0 || id >= vocab) {
                throw new IllegalArgumentException("embeddingBackward: token id " + id + " is outside gradTable "
                        + shape(gradTable) + "; check that the tokenizer matches the model");
            }
        }
        float[] g = read(gradOut, "embeddingBackward gradOut");
        float[] table = read(gradTable, "embeddingBackward gradTable");
        forColumnSlices(hidden, tokens.length, (c0, c1) -> ColumnSums.scatterRows(tokens, g, hidden, table, c0, c1));
        Activations.writeBack(gradTable, table);
    }

    @Override
    public AttentionResult attentionTrain(Tensor q, Tensor k, Tensor v, Tensor segments, int batch, int heads,
                                          int kvHeads, int headDim, float scale, int window) {
        TrainAttention.Shape s = trainAttentionShape(q, k, v, batch, heads, kvHeads, headDim, "attentionTrain");
        int[] segs = readSegments(segments, q.dim(0), "attentionTrain");
        float[] qs = read(q, "attentionTrain q"), ks = read(k, "attentionTrain k"), vs = read(v, "attentionTrain v");
        float[] out = new float[qs.length];
        float[] lse = new float[batch * heads * s.tokens()];
        long workPerPair = 2L * s.tokens() * s.tokens() * headDim;
        parallel.forRange(batch * heads, workPerPair,
                (lo, hi) -> TrainAttention.forward(s, qs, ks, vs, segs, scale, window, out, lse, lo, hi));
        return new AttentionResult(Tensor.of(out, q.shape()), Tensor.of(lse, batch, heads, s.tokens()));
    }

    @Override
    public Tensor[] attentionBackward(Tensor q, Tensor k, Tensor v, Tensor segments, AttentionResult fwd,
                                      Tensor gradOut, int batch, int heads, int kvHeads, int headDim,
                                      float scale, int window) {
        TrainAttention.Shape s = trainAttentionShape(q, k, v, batch, heads, kvHeads, headDim, "attentionBackward");
        int[] segs = readSegments(segments, q.dim(0), "attentionBackward");
        requireSameShape(q, fwd.out(), "attentionBackward q and fwd.out");
        requireSameShape(q, gradOut, "attentionBackward q and gradOut");
        int tokens = s.tokens();
        if (fwd.lse().numel() != (long) batch * heads * tokens) {
            throw new IllegalArgumentException("attentionBackward: fwd.lse " + shape(fwd.lse()) + " must be [" + batch
                    + ", " + heads + ", " + tokens + "]; pass the AttentionResult attentionTrain returned for these inputs");
        }
        float[] qs = read(q, "attentionBackward q"), ks = read(k, "attentionBackward k");
        float[] vs = read(v, "attentionBackward v"), out = read(fwd.out(), "attentionBackward fwd.out");
        float[] lse = read(fwd.lse(), "attentionBackward fwd.lse"), g = read(gradOut, "attentionBackward gradOut");
        float[] gq = new float[qs.length], gk = new float[ks.length], gv = new float[vs.length];
        boolean direct = heads == kvHeads;
        // Grouped heads: each (row, query head) pair gets its own dK, dV [T, headDim], summed per group after.
        float[] gkPairs = direct ? gk : new float[batch * heads * tokens * headDim];
        float[] gvPairs = direct ? gv : new float[gkPairs.length];
        long workPerPair = 5L * tokens * tokens * headDim;
        parallel.forRange(batch * heads, workPerPair, (lo, hi) -> TrainAttention.backward(
                s, qs, ks, vs, segs, out, lse, g, scale, window, gq, gkPairs, gvPairs, direct, lo, hi));
        if (!direct) {
            parallel.forRange(batch * tokens, 2L * heads * headDim,
                    (lo, hi) -> TrainAttention.sumGroups(s, gkPairs, gvPairs, gk, gv, lo, hi));
        }
        return new Tensor[] {Tensor.of(gq, q.shape()), Tensor.of(gk, k.shape()), Tensor.of(gv, v.shape())};
    }

    @Override
    public AttentionResult prefixAttention(Tensor q, Tensor kPrefix, Tensor vPrefix, AttentionResult seq, int batch,
                                           int heads, int kvHeads, int headDim, float scale) {
        int tokens = dev.qlora4j.backend.PrefixAttentionShapes.check("prefixAttention", q, kPrefix, vPrefix, seq, batch, heads,
                kvHeads, headDim);
        var s = new PrefixAttention.Shape(batch, tokens, heads, kvHeads, headDim, kPrefix.dim(0));
        float[] qs = read(q, "prefixAttention q"), ks = read(kPrefix, "prefixAttention kPrefix");
        float[] vs = read(vPrefix, "prefixAttention vPrefix"), outS = read(seq.out(), "prefixAttention seq.out");
        float[] lseS = read(seq.lse(), "prefixAttention seq.lse");
        float[] out = new float[qs.length], lse = new float[lseS.length];
        parallel.forRange(s.rows() * heads, 4L * s.prefix() * headDim,
                (lo, hi) -> PrefixAttention.forward(s, qs, ks, vs, outS, lseS, scale, out, lse, lo, hi));
        return new AttentionResult(Tensor.of(out, q.shape()), Tensor.of(lse, batch, heads, tokens));
    }

    @Override
    public void prefixAttentionBackward(Tensor q, Tensor kPrefix, Tensor vPrefix, AttentionResult merged, Tensor gradOut,
                                        Tensor gradQ, Tensor gradKPrefix, Tensor gradVPrefix, int batch, int heads,
                                        int kvHeads, int headDim, float scale) {
        String op = "prefixAttentionBackward";
        int tokens = dev.qlora4j.backend.PrefixAttentionShapes.check(op, q, kPrefix, vPrefix, merged, batch, heads, kvHeads, headDim);
        dev.qlora4j.backend.PrefixAttentionShapes.checkGradients(op, q, kPrefix, gradOut, gradQ, gradKPrefix, gradVPrefix);
        Activations.requireF32(gradQ, op + " gradQ");
        var s = new PrefixAttention.Shape(batch, tokens, heads, kvHeads, headDim, kPrefix.dim(0));
        float[] qs = read(q, op + " q"), ks = read(kPrefix, op + " kPrefix"), vs = read(vPrefix, op + " vPrefix");
        float[] out = read(merged.out(), op + " out"), lse = read(merged.lse(), op + " lse"), g = read(gradOut, op + " gradOut");
        float[] gq = read(gradQ, op + " gradQ"), gk = read(gradKPrefix, op + " gradKPrefix"), gv = read(gradVPrefix, op + " gradVPrefix");
        int pairs = s.rows() * heads;
        float[] probs = new float[pairs * s.prefix()], dScores = new float[probs.length];
        parallel.forRange(pairs, 6L * s.prefix() * headDim, (lo, hi) ->
                PrefixAttention.backwardQuery(s, qs, ks, vs, out, lse, g, scale, gq, probs, dScores, lo, hi));
        parallel.forRange(s.prefix() * kvHeads, 4L * s.rows() * s.group() * headDim, (lo, hi) ->
                PrefixAttention.backwardPrefix(s, qs, g, probs, dScores, gk, gv, lo, hi));
        Activations.writeBack(gradQ, gq);
        Activations.writeBack(gradKPrefix, gk);
        Activations.writeBack(gradVPrefix, gv);
    }

    private static TrainAttention.Shape trainAttentionShape(Tensor q, Tensor k, Tensor v, int batch, int heads,
                                                            int kvHeads, int headDim, String op) {
        requireRank(q, 2, op + " q");
        requireRank(k, 2, op + " k");
        requireSameShape(k, v, op + " k and v");
        if (heads < 1 || kvHeads < 1 || heads % kvHeads != 0 || headDim < 1) {
            throw new IllegalArgumentException(op + ": heads (" + heads + ") must be a positive multiple of kvHeads ("
                    + kvHeads + ") and headDim (" + headDim + ") positive");
        }
        if (q.dim(1) != heads * headDim || k.dim(1) != kvHeads * headDim) {
            throw new IllegalArgumentException(op + ": q " + shape(q) + " and k " + shape(k) + " must be [B*T, "
                    + heads + "*" + headDim + "] and [B*T, " + kvHeads + "*" + headDim + "]");
        }
        if (batch < 1 || q.dim(0) != k.dim(0) || q.dim(0) % batch != 0) {
            throw new IllegalArgumentException(op + ": q " + shape(q) + " and k " + shape(k)
                    + " must both have B*T rows with B = " + batch);
        }
        return new TrainAttention.Shape(batch, q.dim(0) / batch, heads, kvHeads, headDim);
    }

    private static int[] readSegments(Tensor segments, int rows, String op) {
        if (segments == null) return null;
        int[] segs = readIndices(segments, op + " segments");
        if (segs.length != rows) {
            throw new IllegalArgumentException(op + ": segments " + shape(segments) + " must have one id per token ("
                    + rows + " = B*T)");
        }
        return segs;
    }

    @Override
    public Tensor[] crossEntropyWithGrad(Tensor logits, Tensor targets, float gradScale) {
        requireRank(logits, 2, "crossEntropyWithGrad logits");
        int[] t = readIndices(targets, "crossEntropyWithGrad targets");
        int n = logits.dim(0), vocab = logits.dim(1);
        if (t.length != n) {
            throw new IllegalArgumentException("crossEntropyWithGrad: logits " + shape(logits) + " and targets "
                    + shape(targets) + " disagree on the number of rows");
        }
        for (int i = 0; i < n; i++) {
            if (t[i] != RowOps.IGNORE_INDEX && (t[i] < 0 || t[i] >= vocab)) {
                throw new IllegalArgumentException("crossEntropyWithGrad: target " + t[i] + " in row " + i
                        + " is outside the vocabulary of " + vocab + " (use -100 to ignore a position)");
            }
        }
        float[] ls = read(logits, "crossEntropyWithGrad logits");
        float[] loss = new float[n];
        float[] grad = new float[Math.multiplyExact(n, vocab)];
        parallel.forRange(n, 5L * vocab, (lo, hi) -> CrossEntropyGrad.rows(ls, vocab, t, gradScale, loss, grad, lo, hi));
        return new Tensor[] {Tensor.of(loss, n), Tensor.of(grad, n, vocab)};
    }

    /** Stops the worker threads. */
    @Override
    public void close() {
        parallel.close();
    }
}
