package dev.qlora4j.backend.cuda;

import dev.qlora4j.backend.AttentionResult;
import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.KvCache;
import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.cuda.CudaDriver;
import dev.qlora4j.quant.Int8Weight;
import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Device;
import dev.qlora4j.tensor.Tensor;

import java.util.List;
import java.util.Locale;

/**
 * The GPU backend: every op of {@link Backend} as PTX kernels (native/*.cu) and cuBLAS, ordered on one
 * stream of one device.
 *
 * <p>Activations are F32 by default, so results match the CPU backend to float32 rounding (the golden
 * tests); BF16 activations (float32 math inside every kernel, one rounding per stored value) halve the
 * memory traffic and take cuBLAS' BF16 tensor-core path: choose them with the constructor or
 * {@code -Dqlora4j.cuda.activations=bf16}. Inputs of another float dtype are cast to the activation dtype
 * first; tensors updated in place (addInPlace's a, rope's x) must already be in it.
 *
 * <p>Bad indices (token ids, gathered rows, cross-entropy targets) are found by the kernels and reported at
 * the next {@link #toHost} or {@link #synchronize} as an IllegalArgumentException (see DeviceStatus);
 * padStart values are not checked (that would need a copy to the host per call).
 *
 * <p>Decode steps can be captured into CUDA graphs ({@link GraphCapable}): on unless
 * {@code -Dqlora4j.cuda.graphs=false}. Not thread-safe: one model step at a time.
 */
public final class CudaBackend implements Backend, GraphCapable {
    public static final String ACTIVATIONS_PROPERTY = "qlora4j.cuda.activations";
    public static final String GRAPHS_PROPERTY = "qlora4j.cuda.graphs";

    private final CudaContext ctx;
    private final DType act;
    private volatile boolean graphs;
    private final DeviceStatus status;
    /** Per-op GPU times when -Dqlora4j.cuda.profile=true (OpProfiler), else null: then each op costs a null check. */
    private final OpProfiler profiler;
    /** Device address of the int a captured decode step reads its cache slot from; 0 outside graphs. */
    private long graphStartPointer;

    public CudaBackend(CudaContext ctx, DType activations, boolean decodeGraphs) {
        KernelTypes.act(activations); // F32 or BF16
        this.ctx = ctx;
        this.act = activations;
        this.graphs = decodeGraphs;
        this.status = new DeviceStatus(ctx);
        this.profiler = OpProfiler.fromProperty(ctx.driver(), ctx.stream(), () -> ctx.allocator().stats().peakAllocatedBytes());
    }

    /** Whether a GPU with a driver is present (never throws). Called by Backends reflectively. */
    public static boolean isAvailable() { return CudaDriver.isAvailable(); }

    /** The backend on cuda:ordinal with the activation dtype and graph setting of the system properties. */
    public static CudaBackend create(int ordinal) {
        return create(ordinal, activationsFromProperty(), graphsFromProperty());
    }

    public static CudaBackend create(int ordinal, DType activations, boolean decodeGraphs) {
        CudaContext ctx = new CudaContext(CudaDriver.get(), ordinal);
        try {
            return new CudaBackend(ctx, activations, decodeGraphs);
        } catch (RuntimeException e) {
            ctx.close();
            throw e;
        }
    }

    /** qlora4j.cuda.activations: "f32" (default) or "bf16". */
    static DType activationsFromProperty() {
        return parseActivations(System.getProperty(ACTIVATIONS_PROPERTY, "f32"));
    }

    static DType parseActivations(String s) {
        return switch (s.trim().toLowerCase(Locale.ROOT)) {
            case "f32", "fp32", "float32", "float" -> DType.F32;
            case "bf16", "bfloat16" -> DType.BF16;
            default -> throw new IllegalArgumentException("-D" + ACTIVATIONS_PROPERTY + "=" + s
                    + " is not an activation dtype: use f32 (matches the CPU) or bf16 (faster)");
        };
    }

    static boolean graphsFromProperty() {
        return !"false".equalsIgnoreCase(System.getProperty(GRAPHS_PROPERTY, "true").trim());
    }

    public CudaContext context() { return ctx; }

    /** The op profiler (-Dqlora4j.cuda.profile=true), or null when profiling is off. */
    public OpProfiler profiler() { return profiler; }

    @Override public Device device() { return ctx.device(); }

    @Override public DType activationDType() { return act; }

    // ---- memory ----

    @Override
    public Tensor empty(DType dtype, int... shape) { return ctx.empty(dtype, shape); }

    /** Zero-filled by a memset on the stream (no host copy, no wait for the queued work). */
    @Override
    public Tensor zeros(DType dtype, int... shape) {
        Tensor t = ctx.empty(dtype, shape);
        if (t.byteSize() > 0) ctx.driver().memsetD8Async(CudaContext.ptr(t), (byte) 0, t.byteSize(), ctx.stream());
        return t;
    }

    /** A device copy of a host tensor; a tensor already on this GPU is returned as it is (no copy). */
    @Override
    public Tensor upload(Tensor host) {
        if (host.device().equals(ctx.device())) return host;
        if (!host.device().isCpu()) {
            throw new IllegalArgumentException("upload: " + host + " is on " + host.device() + ", not the host or "
                    + ctx.device());
        }
        return ctx.upload(host);
    }

    /** A host copy (waits for the stream; reports errors kernels recorded since the last check). */
    @Override
    public Tensor toHost(Tensor t) {
        KernelTypes.requireDevice(t, "toHost");
        Tensor h = ctx.download(t);
        status.check();
        if (profiler != null) profiler.resolve(); // the stream is idle now: resolving costs no extra wait
        return h;
    }

    @Override
    public Tensor cast(Tensor t, DType dtype) {
        int mark = profBegin();
        return profEnd("cast", mark, CastKernels.cast(ctx, t, dtype));
    }

    // ---- forward ops ----

    @Override
    public Tensor embedding(Tensor ids, Tensor table) {
        int mark = profBegin();
        return profEnd("embedding", mark, EmbeddingKernels.embedding(ctx, act, ids, table, status));
    }

    @Override
    public Tensor rmsNorm(Tensor x, Tensor weight, float eps) {
        KernelTypes.requireRank(x, 2, "rmsNorm x");
        return rmsNormPadded(x, weight, eps, x.dim(1));
    }

    /**
     * {@link #rmsNorm} into the first h columns of a new [n, width] tensor (width >= h, a multiple of 8 for 16-byte
     * rows) whose columns [h, width) are zero: a LoRA fold's [x | H] buffer with x written by the norm itself
     * (peft.LoraGroup#normedInput), so the fold need not copy x. The same values as rmsNorm in the first h columns.
     */
    public Tensor rmsNormPadded(Tensor x, Tensor weight, float eps, int width) {
        int mark = profBegin();
        KernelTypes.requireRank(x, 2, "rmsNorm x");
        try (Owned xa = activation(x, "rmsNorm x")) {
            return profEnd("rmsNorm", mark, RmsNormKernels.rmsNorm(ctx, act, xa.t, weight, eps, width));
        }
    }

    /** {@link #addInPlaceRmsNorm} with the norm written as {@link #rmsNormPadded} writes it. */
    public Tensor addInPlaceRmsNormPadded(Tensor resid, Tensor y, Tensor weight, float eps, int width) {
        int mark = profBegin();
        KernelTypes.requireDevice(resid, "addInPlaceRmsNorm resid");
        if (resid.dtype() != act) {
            throw new IllegalArgumentException("addInPlaceRmsNorm resid must be " + act
                    + " (the CUDA backend's activation dtype: it is updated in place), got " + resid);
        }
        try (Owned yy = activation(y, "addInPlaceRmsNorm y")) {
            return profEnd("addInPlaceRmsNorm", mark, FusedKernels.addRmsNorm(ctx, act, resid, yy.t, weight, eps, width));
        }
    }

    @Override
    public Tensor linear(Tensor x, Tensor w, Tensor bias) {
        int mark = profBegin();
        KernelTypes.requireRank(x, 2, "linear x");
        KernelTypes.requireDevice(w, "linear weight");
        KernelTypes.requireRank(w, 2, "linear weight");
        if (w.dim(1) != x.dim(1)) {
            throw new IllegalArgumentException("linear: x " + KernelTypes.shape(x) + " and w " + KernelTypes.shape(w)
                    + " disagree on the input features (" + x.dim(1) + " vs " + w.dim(1) + "); w must be [out, in]");
        }
        KernelTypes.cublas(w.dtype());
        if (bias != null) {
            KernelTypes.requireDevice(bias, "linear bias");
            if (bias.rank() != 1 || bias.dim(0) != w.dim(0)) {
                throw new IllegalArgumentException("linear: bias " + KernelTypes.shape(bias) + " does not match w "
                        + KernelTypes.shape(w) + " (expected [" + w.dim(0) + "])");
            }
            KernelTypes.weight(bias, "linear bias");
        }
        try (Owned xa = activation(x, "linear x")) {
            return profEnd(w.dtype() == act ? "linear" : "linear (mixed dtypes)", mark,
                    LinearOps.linear(ctx, act, xa.t, w, bias));
        }
    }

    @Override
    public Tensor add(Tensor a, Tensor b) {
        int mark = profBegin();
        KernelTypes.requireSameShape(a, b, "add");
        try (Owned aa = activation(a, "add a"); Owned bb = activation(b, "add b")) {
            Tensor out = ctx.empty(act, a.shape());
            ElementwiseKernels.add(ctx, act, aa.t, bb.t, out);
            return profEnd("add", mark, out);
        }
    }

    @Override
    public Tensor addInPlace(Tensor a, Tensor b) {
        int mark = profBegin();
        KernelTypes.requireSameShape(a, b, "addInPlace");
        KernelTypes.requireDevice(a, "addInPlace target a");
        if (a.dtype() != act) {
            throw new IllegalArgumentException("addInPlace target a must be " + act
                    + " (the CUDA backend's activation dtype), got " + a);
        }
        try (Owned bb = activation(b, "addInPlace b")) {
            ElementwiseKernels.add(ctx, act, a, bb.t, a);
            return profEnd("addInPlace", mark, a);
        }
    }

    @Override
    public Tensor siluMul(Tensor gate, Tensor up) {
        int mark = profBegin();
        KernelTypes.requireSameShape(gate, up, "siluMul");
        try (Owned g = activation(gate, "siluMul gate"); Owned u = activation(up, "siluMul up")) {
            Tensor out = ctx.empty(act, gate.shape());
            ElementwiseKernels.siluMul(ctx, act, g.t, u.t, out);
            return profEnd("siluMul", mark, out);
        }
    }

    @Override
    public Tensor siluMulHalves(Tensor gateUp) {
        int mark = profBegin();
        requireHalves(gateUp, "siluMulHalves");
        Tensor out = ctx.empty(act, gateUp.dim(0), gateUp.dim(1) / 2);
        ElementwiseKernels.siluMulHalves(ctx, act, gateUp, out);
        return profEnd("siluMul", mark, out);
    }

    /** gateUp must be a device [n, 2 m] tensor of the activation dtype. */
    private void requireHalves(Tensor gateUp, String op) {
        KernelTypes.requireDevice(gateUp, op + " gateUp");
        if (gateUp.dtype() != act || gateUp.rank() != 2 || gateUp.dim(1) % 2 != 0) {
            throw new IllegalArgumentException(op + ": gateUp must be " + act + " [n, 2 * intermediate] (gate's columns, then up's), got "
                    + gateUp);
        }
    }

    @Override
    public void ropeInPlace(Tensor x, Tensor positions, Tensor invFreq, int heads, int headDim, float attentionScaling) {
        int mark = profBegin();
        KernelTypes.requireDevice(x, "rope x");
        KernelTypes.requireDevice(invFreq, "rope invFreq");
        try (Owned f = invFreq.dtype() == DType.F32 ? new Owned(invFreq, false)
                : new Owned(CastKernels.cast(ctx, invFreq, DType.F32), true)) {
            RopeKernels.ropeInPlace(ctx, act, x, positions, f.t, heads, headDim, attentionScaling);
            profEnd("rope", mark);
        }
    }

    @Override
    public Tensor addInPlaceRmsNorm(Tensor resid, Tensor y, Tensor weight, float eps) {
        KernelTypes.requireRank(resid, 2, "addInPlaceRmsNorm resid");
        return addInPlaceRmsNormPadded(resid, y, weight, eps, resid.dim(1));
    }

    @Override
    public void ropeQkInPlace(Tensor q, Tensor k, Tensor positions, Tensor invFreq, int heads, int kvHeads, int headDim,
                              float attentionScaling) {
        int mark = profBegin();
        KernelTypes.requireDevice(q, "rope q");
        KernelTypes.requireDevice(k, "rope k");
        KernelTypes.requireDevice(invFreq, "rope invFreq");
        try (Owned f = invFreq.dtype() == DType.F32 ? new Owned(invFreq, false)
                : new Owned(CastKernels.cast(ctx, invFreq, DType.F32), true)) {
            FusedKernels.ropeQk(ctx, act, q, k, positions, f.t, heads, kvHeads, headDim, attentionScaling);
            profEnd("ropeQk", mark);
        }
    }

    @Override
    public KvCache newKvCache(int layers, int batch, int kvHeads, int capacity, int headDim) {
        return new CudaKvCache(ctx, act, layers, batch, kvHeads, capacity, headDim);
    }

    @Override
    public Tensor attention(Tensor q, Tensor k, Tensor v, KvCache cache, int layer, int start, Tensor padStart,
                            int heads, int kvHeads, int headDim, float scale, int window) {
        int mark = profBegin();
        if (!(cache instanceof CudaKvCache c)) {
            throw new IllegalArgumentException("attention: the CUDA backend needs a KV cache from its own newKvCache, got "
                    + (cache == null ? "null" : cache.getClass().getName()));
        }
        try (Owned qa = activation(q, "attention q"); Owned ka = activation(k, "attention k");
             Owned va = activation(v, "attention v")) {
            AttentionKernels.Shape s = AttentionKernels.check(qa.t, ka.t, va.t, c, act, start, padStart, heads, kvHeads,
                    headDim);
            return profEnd("attention (decode)", mark, AttentionKernels.attention(ctx, act, s, qa.t, ka.t, va.t, c, layer,
                    start, graphStartPointer, padStart, scale, window));
        }
    }

    /**
     * RoPE fused with the cache write when the fusion is on (-Dqlora4j.cuda.fuseRopeKv, default true), the cache is
     * this backend's and v is already in the activation dtype: q is rotated in place, k is rotated straight into the
     * cache (k itself keeps its input values), then the attention reads the cache. Otherwise the two calls of the
     * default. A captured decode step reads the slot from the graph's start pointer, as {@link #attention} does.
     */
    @Override
    public Tensor ropeQkAttention(Tensor q, Tensor k, Tensor v, Tensor positions, Tensor invFreq, float attentionScaling,
                                  KvCache cache, int layer, int start, Tensor padStart, int heads, int kvHeads,
                                  int headDim, float scale, int window) {
        if (!FusedKernels.ropeKvFusion() || !(cache instanceof CudaKvCache c) || v.dtype() != act) {
            return Backend.super.ropeQkAttention(q, k, v, positions, invFreq, attentionScaling, cache, layer, start,
                    padStart, heads, kvHeads, headDim, scale, window);
        }
        int mark = profBegin();
        for (Tensor t : new Tensor[] {q, k, v, invFreq}) KernelTypes.requireDevice(t, "ropeQkAttention");
        AttentionKernels.Shape s = AttentionKernels.check(q, k, v, c, act, start, padStart, heads, kvHeads, headDim);
        if (FusedKernels.ropeInDecode() && AttentionKernels.ropeInDecodeApplies(ctx, s) && invFreq.dtype() == DType.F32) {
            // one launch: the rotation and the cache write inside the decode attention (invFreq and positions are
            // host copies, which the kernel may read before waiting for the q / k / v kernel)
            RopeKernels.check(act, q, positions, invFreq, heads, headDim);
            RopeKernels.check(act, k, positions, invFreq, kvHeads, headDim);
            return profEnd("ropeQk+kvWrite+attention (decode)", mark, AttentionKernels.attendRoped(ctx, act, s, q,
                    new AttentionKernels.DecodeRope(k, v, positions, invFreq, attentionScaling), c, layer, start,
                    graphStartPointer, padStart, scale, window));
        }
        try (Owned f = invFreq.dtype() == DType.F32 ? new Owned(invFreq, false)
                : new Owned(CastKernels.cast(ctx, invFreq, DType.F32), true)) {
            FusedKernels.ropeQkKvWrite(ctx, act, s, q, k, v, positions, f.t, attentionScaling, c, layer, start,
                    graphStartPointer, false);
        }
        profEnd("ropeQk+kvWrite", mark);
        int attend = profBegin();
        return profEnd("attention (decode)", attend, AttentionKernels.attendCached(ctx, act, s, q, c, layer, start,
                graphStartPointer, padStart, scale, window));
    }

    @Override
    public Tensor gatherRows(Tensor x, Tensor rows) {
        int mark = profBegin();
        KernelTypes.requireRank(x, 2, "gatherRows x");
        KernelTypes.requireIndices(rows, "gatherRows rows");
        try (Owned xa = activation(x, "gatherRows x")) {
            return profEnd("gatherRows", mark, ElementwiseKernels.gatherRows(ctx, act, xa.t, rows, status));
        }
    }

    @Override
    public Tensor crossEntropy(Tensor logits, Tensor targets) {
        int mark = profBegin();
        KernelTypes.requireRank(logits, 2, "crossEntropy logits");
        KernelTypes.requireIndices(targets, "crossEntropy targets");
        if (targets.dim(0) != logits.dim(0)) {
            throw new IllegalArgumentException("crossEntropy: logits " + KernelTypes.shape(logits) + " and targets "
                    + KernelTypes.shape(targets) + " disagree on the number of rows");
        }
        try (Owned l = activation(logits, "crossEntropy logits")) {
            return profEnd("crossEntropy", mark, XentKernels.crossEntropy(ctx, act, l.t, targets, status));
        }
    }

    // ---- quantized weights: CudaQuantOps (the quantized-kernel branch) ----

    @Override
    public QuantizedWeight quantize4bit(Tensor weight, dev.qlora4j.quant.QuantType type, int blocksize,
                                        boolean doubleQuant, DType computeDType) {
        boolean onDevice = weight.storage() instanceof CudaStorage;
        Tensor w = onDevice ? weight : ctx.upload(weight);
        try {
            return CudaQuantOps.arranged(ctx, CudaQuantOps.quantize4bit(ctx, w, type, blocksize, doubleQuant, computeDType));
        } finally {
            if (!onDevice) w.close();
        }
    }

    @Override
    public QuantizedWeight prepare4bit(QuantState4bit weight, DType computeDType) {
        return CudaQuantOps.arranged(ctx, (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, weight, computeDType));
    }

    @Override
    public QuantizedWeight prepare8bit(Int8Weight weight, float threshold) {
        return CudaQuantOps.prepare8bit(ctx, weight, threshold);
    }

    @Override
    public Tensor linearQuantized(Tensor x, QuantizedWeight w, Tensor bias) {
        int mark = profBegin();
        KernelTypes.requireRank(x, 2, "linearQuantized x");
        if (x.dim(1) != w.inFeatures()) {
            throw new IllegalArgumentException("linearQuantized: x " + KernelTypes.shape(x) + " does not match the weight ["
                    + w.outFeatures() + ", " + w.inFeatures() + "]");
        }
        try (Owned xa = activation(x, "linearQuantized x")) {
            Tensor y = CudaQuantOps.linear(ctx, xa.t, w, bias);
            if (y.dtype() == act) return profEnd("linearQuantized", mark, y);
            try (y) {
                return profEnd("linearQuantized", mark, CastKernels.cast(ctx, y, act));
            }
        }
    }

    /**
     * One grouped v2 GEMV launch when {@link CudaQuantOps#fusedGroup} takes the group (decode: 1..16 rows, 4-bit
     * weights with the same in_features and compute dtype, the v2 / v2reg kernel selected), else one
     * {@link #linearQuantized} per weight. Same values either way.
     */
    @Override
    public Tensor[] linearQuantizedGroup(Tensor x, List<? extends QuantizedWeight> ws, List<Tensor> biases) {
        if (x.dtype() == act && x.storage() instanceof CudaStorage) {  // decode on tiles: one persistent launch
            List<CudaQuant4bit> tiles = CudaQuantOps.tilesGroup(ctx, x, ws, biases);
            if (tiles != null) {
                int mark = profBegin();
                return profEnd("linearQuantizedGroup (tiles)", mark, CudaQuantOps.linear4bitTilesGroup(ctx, x, tiles, biases));
            }
        }
        List<CudaQuant4bit> group = biases.size() == ws.size() ? CudaQuantOps.fusedGroup(x, ws) : null;
        if (group == null) return Backend.super.linearQuantizedGroup(x, ws, biases);
        int mark = profBegin();
        KernelTypes.requireRank(x, 2, "linearQuantizedGroup x");
        try (Owned xa = activation(x, "linearQuantizedGroup x")) {
            Tensor[] ys = CudaQuantOps.linear4bitGroup(ctx, xa.t, group, biases);
            for (int i = 0; i < ys.length; i++) {
                if (ys[i].dtype() == act) continue;
                try (Tensor y = ys[i]) {
                    ys[i] = CastKernels.cast(ctx, y, act);
                }
            }
            return profEnd("linearQuantizedGroup", mark, ys);
        }
    }

    /** The joint gate / up decode GEMV where {@link CudaQuantOps#swiGlu} takes the call; else null. */
    @Override
    public Tensor linearQuantizedSwiGlu(Tensor x, QuantizedWeight gate, QuantizedWeight up) {
        if (x.rank() != 2 || x.dtype() != act || !(x.storage() instanceof CudaStorage)) return null;
        int mark = profBegin();
        return profEndUnlessDeclined("linearQuantizedSwiGlu", mark, CudaQuantOps.swiGlu(ctx, x, gate, up));
    }

    @Override
    public Tensor dequantize(QuantizedWeight w, DType dtype) {
        int mark = profBegin();
        return profEnd("dequantize", mark, CudaQuantOps.dequantize(ctx, w, dtype));
    }

    // ---- training: backward passes and the ops adapters need (TrainKernels, TrainLinearOps, TrainAttentionKernels) ----
    // Activation-shaped results (including activation gradients) are in the activation dtype, so they flow into
    // addInPlace like forward activations; accumulators (gradW, gradB, gradTable, gradWeight) are F32.

    @Override
    public Tensor scale(Tensor a, float s) {
        int mark = profBegin();
        try (Owned aa = activation(a, "scale a")) {
            Tensor out = ctx.empty(act, a.shape());
            TrainKernels.scale(ctx, aa.t, s, out);
            return profEnd("scale", mark, out);
        }
    }

    /** a (F32 or BF16, on this GPU) += alpha * b; b is cast to a's dtype first when it differs. */
    @Override
    public Tensor axpyInPlace(Tensor a, float alpha, Tensor b) {
        int mark = profBegin();
        KernelTypes.requireSameShape(a, b, "axpyInPlace");
        KernelTypes.requireDevice(a, "axpyInPlace target a");
        KernelTypes.requireDevice(b, "axpyInPlace b");
        if (a.dtype() != DType.F32 && a.dtype() != DType.BF16) {
            throw new IllegalArgumentException("axpyInPlace target a must be F32 or BF16 on the CUDA backend, got " + a);
        }
        try (Owned bb = b.dtype() == a.dtype() ? new Owned(b, false) : new Owned(CastKernels.cast(ctx, b, a.dtype()), true)) {
            TrainKernels.axpy(ctx, a, alpha, bb.t);
        }
        return profEnd("axpyInPlace", mark, a);
    }

    @Override
    public Tensor mul(Tensor a, Tensor b) {
        int mark = profBegin();
        KernelTypes.requireSameShape(a, b, "mul");
        try (Owned aa = activation(a, "mul a"); Owned bb = activation(b, "mul b")) {
            Tensor out = ctx.empty(act, a.shape());
            TrainKernels.mul(ctx, act, aa.t, bb.t, out);
            return profEnd("mul", mark, out);
        }
    }

    /** Sum of squares in float64 (waits for the stream: the result goes to the host). */
    @Override
    public double sumOfSquares(Tensor a) {
        int mark = profBegin();
        KernelTypes.requireDevice(a, "sumOfSquares a");
        try (Owned aa = a.dtype() == DType.F32 || a.dtype() == DType.BF16 ? new Owned(a, false)
                : new Owned(CastKernels.cast(ctx, a, DType.F32), true)) {
            double s = TrainKernels.sumsOfSquares(ctx, java.util.List.of(aa.t))[0];
            status.check();
            profEnd("sumOfSquares (waits)", mark);
            return s;
        }
    }

    /** The mask of backend/cpu/Dropout, bit for bit. */
    @Override
    public Tensor dropout(Tensor x, float p, long seed) {
        int mark = profBegin();
        if (!(p >= 0f && p <= 1f)) {
            throw new IllegalArgumentException("dropout: probability p must be in [0, 1], got " + p);
        }
        try (Owned xa = activation(x, "dropout x")) {
            Tensor out = ctx.empty(act, x.shape());
            TrainKernels.dropout(ctx, act, xa.t, p, seed, out);
            return profEnd("dropout", mark, out);
        }
    }

    @Override
    public Tensor rowNorms(Tensor x) {
        int mark = profBegin();
        KernelTypes.requireRank(x, 2, "rowNorms x");
        try (Owned xa = activation(x, "rowNorms x")) {
            return profEnd("rowNorms", mark, TrainKernels.rowNorms(ctx, act, xa.t));
        }
    }

    @Override
    public Tensor scaleColumns(Tensor x, Tensor s) {
        int mark = profBegin();
        KernelTypes.requireRank(x, 2, "scaleColumns x");
        KernelTypes.requireDevice(s, "scaleColumns s");
        if (s.numel() != x.dim(1)) {
            throw new IllegalArgumentException("scaleColumns: s " + KernelTypes.shape(s) + " must have one value per column of x "
                    + KernelTypes.shape(x));
        }
        try (Owned xa = activation(x, "scaleColumns x"); Owned sf = f32(s, "scaleColumns s")) {
            return profEnd("scaleColumns", mark, TrainKernels.scaleColumns(ctx, act, xa.t, sf.t));
        }
    }

    /** Transpose; F32 stays F32 (adapter weights), other float dtypes come out in the activation dtype. */
    @Override
    public Tensor transpose(Tensor x) {
        int mark = profBegin();
        KernelTypes.requireRank(x, 2, "transpose x");
        KernelTypes.requireDevice(x, "transpose x");
        try (Owned xa = x.dtype() == DType.F32 ? new Owned(x, false) : activation(x, "transpose x")) {
            return profEnd("transpose", mark, TrainKernels.transpose(ctx, xa.t));
        }
    }

    @Override
    public Tensor linearBackwardInput(Tensor gradOut, Tensor w) {
        int mark = profBegin();
        KernelTypes.requireRank(gradOut, 2, "linearBackwardInput gradOut");
        KernelTypes.requireDevice(w, "linearBackwardInput weight");
        KernelTypes.requireRank(w, 2, "linearBackwardInput weight");
        KernelTypes.cublas(w.dtype());
        if (w.dim(0) != gradOut.dim(1)) {
            throw new IllegalArgumentException("linearBackwardInput: gradOut " + KernelTypes.shape(gradOut) + " and w "
                    + KernelTypes.shape(w) + " disagree on the output features (" + gradOut.dim(1) + " vs " + w.dim(0)
                    + "); w must be [out, in]");
        }
        try (Owned g = activation(gradOut, "linearBackwardInput gradOut")) {
            return profEnd(w.dtype() == act ? "linearBackwardInput" : "linearBackwardInput (mixed dtypes)", mark,
                    TrainLinearOps.backwardInput(ctx, act, g.t, w));
        }
    }

    /** Opens or closes this GPU's DequantCache (a checkpointed layer's recompute keeps its weights for its backward). */
    @Override
    public void keepDequantizedWeights(boolean keep) {
        if (keep) ctx.dequantCache().open();
        else ctx.dequantCache().close();
    }

    /**
     * gradOut dequant(W): the weight dequantized to the activation dtype into a temporary (or the one a checkpointed
     * recompute kept, DequantCache), then one GEMM.
     */
    @Override
    public Tensor linearQuantizedBackwardInput(Tensor gradOut, QuantizedWeight w) {
        int mark = profBegin();
        KernelTypes.requireRank(gradOut, 2, "linearQuantizedBackwardInput gradOut");
        if (gradOut.dim(1) != w.outFeatures()) {
            throw new IllegalArgumentException("linearQuantizedBackwardInput: gradOut " + KernelTypes.shape(gradOut)
                    + " does not match the weight [" + w.outFeatures() + ", " + w.inFeatures() + "] (need [n, "
                    + w.outFeatures() + "])");
        }
        DequantCache.Entry kept = ctx.dequantCache().get(w, act);
        if (kept != null && kept.ld() == w.inFeatures() && kept.row() == 0) {   // the recompute's dequantized weight (a LoRA fold's has its own path)
            try (Owned g = activation(gradOut, "linearQuantizedBackwardInput gradOut")) {
                return profEnd("linearQuantizedBackwardInput", mark, TrainLinearOps.backwardInput(ctx, act, g.t, kept.buffer()));
            }
        }
        try (Owned g = activation(gradOut, "linearQuantizedBackwardInput gradOut");
             Tensor dense = timedDequantize(w)) {
            return profEnd("linearQuantizedBackwardInput", mark, TrainLinearOps.backwardInput(ctx, act, g.t, dense));
        }
    }

    @Override
    public void linearBackwardWeight(Tensor gradOut, Tensor x, Tensor gradW) {
        int mark = profBegin();
        KernelTypes.requireRank(gradOut, 2, "linearBackwardWeight gradOut");
        KernelTypes.requireRank(x, 2, "linearBackwardWeight x");
        KernelTypes.requireRank(gradW, 2, "linearBackwardWeight gradW");
        requireF32Accumulator(gradW, "linearBackwardWeight gradW");
        int n = gradOut.dim(0), m = gradOut.dim(1), k = x.dim(1);
        if (x.dim(0) != n || gradW.dim(0) != m || gradW.dim(1) != k) {
            throw new IllegalArgumentException("linearBackwardWeight: gradOut " + KernelTypes.shape(gradOut) + ", x "
                    + KernelTypes.shape(x) + " and gradW " + KernelTypes.shape(gradW) + " must be [n, m], [n, k] and [m, k]");
        }
        try (Owned g = activation(gradOut, "linearBackwardWeight gradOut"); Owned xa = activation(x, "linearBackwardWeight x")) {
            TrainLinearOps.backwardWeight(ctx, g.t, xa.t, gradW);
            profEnd("linearBackwardWeight", mark);
        }
    }

    @Override
    public void sumRowsInto(Tensor gradOut, Tensor gradB) {
        int mark = profBegin();
        KernelTypes.requireRank(gradOut, 2, "sumRowsInto gradOut");
        KernelTypes.requireRank(gradB, 1, "sumRowsInto gradB");
        requireF32Accumulator(gradB, "sumRowsInto gradB");
        if (gradB.dim(0) != gradOut.dim(1)) {
            throw new IllegalArgumentException("sumRowsInto: gradB " + KernelTypes.shape(gradB)
                    + " must have one value per column of gradOut " + KernelTypes.shape(gradOut));
        }
        try (Owned g = activation(gradOut, "sumRowsInto gradOut")) {
            TrainKernels.sumRowsInto(ctx, act, g.t, gradB);
            profEnd("sumRowsInto", mark);
        }
    }

    @Override
    public Tensor rmsNormBackward(Tensor x, Tensor weight, float eps, Tensor gradOut, Tensor gradWeight) {
        return rmsNormBackwardAdd(x, weight, eps, gradOut, gradWeight, null);
    }

    /**
     * -Dqlora4j.cuda.fusedNormBackwardAdd=false: {@link #rmsNormBackwardAdd} as two launches (backward, then add), for
     * A/B runs; the same bits either way.
     */
    public static final String FUSED_NORM_BACKWARD_ADD_PROPERTY = "qlora4j.cuda.fusedNormBackwardAdd";

    /**
     * One launch: the addend is added where grad_x is stored (native/norm_bwd.cu), the same bits as the two calls.
     * gradOut may be wider than x ([n, ld], ld >= h, 16-bit activations): its first h columns are the gradient, read
     * with row stride ld (a joined input gradient with its LoRA products beside it, CudaJoinedInputGrad#intoWide).
     */
    @Override
    public Tensor rmsNormBackwardAdd(Tensor x, Tensor weight, float eps, Tensor gradOut, Tensor gradWeight, Tensor addend) {
        if (addend != null && !Switches.on(FUSED_NORM_BACKWARD_ADD_PROPERTY, true)) {
            return Backend.super.rmsNormBackwardAdd(x, weight, eps, gradOut, gradWeight, addend);
        }
        int mark = profBegin();
        KernelTypes.requireRank(x, 2, "rmsNormBackward x");
        if (gradOut.rank() != 2 || gradOut.dim(0) != x.dim(0) || gradOut.dim(1) < x.dim(1)
                || (gradOut.dim(1) != x.dim(1) && (gradOut.dim(1) % 8 != 0 || gradOut.dtype() != act || act == DType.F32))) {
            KernelTypes.requireSameShape(x, gradOut, "rmsNormBackward x and gradOut");   // the message for a mismatch
            throw new IllegalArgumentException("rmsNormBackward: a gradOut wider than x " + KernelTypes.shape(x)
                    + " must be in the 16-bit activation dtype " + act + " with a multiple of 8 columns, got " + gradOut);
        }
        if (addend != null) KernelTypes.requireSameShape(x, addend, "rmsNormBackward x and the addend");
        KernelTypes.requireDevice(weight, "rmsNormBackward weight");
        if (weight.rank() != 1 || weight.dim(0) != x.dim(1)) {
            throw new IllegalArgumentException("rmsNormBackward: x " + KernelTypes.shape(x) + " and weight "
                    + KernelTypes.shape(weight) + " disagree on the hidden size");
        }
        if (gradWeight != null) {
            requireF32Accumulator(gradWeight, "rmsNormBackward gradWeight");
            if (gradWeight.rank() != 1 || gradWeight.dim(0) != x.dim(1)) {
                throw new IllegalArgumentException("rmsNormBackward: gradWeight " + KernelTypes.shape(gradWeight)
                        + " must be [" + x.dim(1) + "] like the weight");
            }
        }
        try (Owned xa = activation(x, "rmsNormBackward x"); Owned g = activation(gradOut, "rmsNormBackward gradOut");
             Owned ad = addend == null ? null : activation(addend, "rmsNormBackward addend")) {
            return profEnd(addend == null ? "rmsNormBackward" : "rmsNormBackwardAdd", mark,
                    TrainKernels.rmsNormBackward(ctx, act, xa.t, weight, eps, g.t, gradWeight, ad == null ? null : ad.t));
        }
    }

    @Override
    public Tensor[] siluMulBackward(Tensor gate, Tensor up, Tensor gradOut) {
        int mark = profBegin();
        KernelTypes.requireSameShape(gate, up, "siluMulBackward gate and up");
        KernelTypes.requireSameShape(gate, gradOut, "siluMulBackward gate and gradOut");
        try (Owned ga = activation(gate, "siluMulBackward gate"); Owned u = activation(up, "siluMulBackward up");
             Owned g = activation(gradOut, "siluMulBackward gradOut")) {
            return profEnd("siluMulBackward", mark, TrainKernels.siluMulBackward(ctx, act, ga.t, u.t, g.t));
        }
    }

    @Override
    public long deviceMemoryBytes() { return ctx.properties().totalMemoryBytes(); }

    @Override
    public Tensor hostMappedCopy(Tensor t) {
        KernelTypes.requireDevice(t, "hostMappedCopy");
        return ctx.hostMappedCopy(t);
    }

    /** Writes the gradients over gate and up when they are in the activation dtype (else as the default). */
    @Override
    public Tensor[] siluMulBackwardInPlace(Tensor gate, Tensor up, Tensor gradOut) {
        if (gate.dtype() != act || up.dtype() != act || gate == up) return Backend.super.siluMulBackwardInPlace(gate, up, gradOut);
        int mark = profBegin();
        try {
            KernelTypes.requireDevice(gate, "siluMulBackward gate");
            KernelTypes.requireDevice(up, "siluMulBackward up");
            KernelTypes.requireSameShape(gate, up, "siluMulBackward gate and up");
            KernelTypes.requireSameShape(gate, gradOut, "siluMulBackward gate and gradOut");
            try (Owned g = activation(gradOut, "siluMulBackward gradOut")) {
                TrainKernels.siluMulBackwardInto(ctx, act, gate, up, g.t, gate, up);
            }
        } catch (RuntimeException e) {
            gate.close();   // this owns them now
            up.close();
            throw e;
        }
        return profEnd("siluMulBackward", mark, new Tensor[] {gate, up});
    }

    @Override
    public Tensor siluMulHalvesBackwardInPlace(Tensor gateUp, Tensor gradOut) {
        int mark = profBegin();
        try {
            requireHalves(gateUp, "siluMulHalvesBackward");
            if (gradOut.rank() != 2 || gradOut.dim(0) != gateUp.dim(0) || gradOut.dim(1) * 2 != gateUp.dim(1)) {
                throw new IllegalArgumentException("siluMulHalvesBackward: gradOut must be [" + gateUp.dim(0) + ", "
                        + gateUp.dim(1) / 2 + "] for gateUp " + KernelTypes.shape(gateUp) + ", got " + KernelTypes.shape(gradOut));
            }
            try (Owned g = activation(gradOut, "siluMulHalvesBackward gradOut")) {
                TrainKernels.siluMulHalvesBackwardInPlace(ctx, act, gateUp, g.t);
            }
        } catch (RuntimeException e) {
            gateUp.close();   // this owns it until it returns
            throw e;
        }
        return profEnd("siluMulBackward", mark, gateUp);
    }

    @Override
    public void ropeBackwardInPlace(Tensor grad, Tensor positions, Tensor invFreq, int heads, int headDim,
                                    float attentionScaling) {
        int mark = profBegin();
        KernelTypes.requireRank(grad, 2, "rope backward grad");
        KernelTypes.requireDevice(grad, "rope backward grad");
        if (grad.dtype() != act) {
            throw new IllegalArgumentException("rope backward grad must be " + act
                    + " (the CUDA backend's activation dtype), got " + grad);
        }
        KernelTypes.requireIndices(positions, "rope backward positions");
        KernelTypes.requireDevice(invFreq, "rope backward invFreq");
        if (heads < 1 || headDim < 2 || headDim % 2 != 0) {
            throw new IllegalArgumentException("rope backward: heads must be >= 1 and headDim even, got heads=" + heads
                    + " headDim=" + headDim);
        }
        if (grad.dim(1) != heads * headDim || positions.dim(0) != grad.dim(0) || invFreq.numel() != headDim / 2) {
            throw new IllegalArgumentException("rope backward: grad " + KernelTypes.shape(grad) + ", positions "
                    + KernelTypes.shape(positions) + " and invFreq " + KernelTypes.shape(invFreq) + " must be [n, " + heads
                    + "*" + headDim + "], [n] and [" + headDim / 2 + "]");
        }
        try (Owned f = f32(invFreq, "rope backward invFreq")) {
            TrainKernels.ropeBackward(ctx, act, grad, positions, f.t, heads, headDim, attentionScaling);
            profEnd("ropeBackward", mark);
        }
    }

    @Override
    public void ropeQkBackwardInPlace(Tensor gradQ, Tensor gradK, Tensor positions, Tensor invFreq, int heads, int kvHeads,
                                      int headDim, float attentionScaling) {
        int mark = profBegin();
        KernelTypes.requireDevice(gradQ, "rope backward grad q");
        KernelTypes.requireDevice(gradK, "rope backward grad k");
        KernelTypes.requireDevice(invFreq, "rope backward invFreq");
        try (Owned f = f32(invFreq, "rope backward invFreq")) {
            FusedKernels.ropeQkBackward(ctx, act, gradQ, gradK, positions, f.t, heads, kvHeads, headDim, attentionScaling);
            profEnd("ropeQkBackward", mark);
        }
    }

    /** Ids outside gradTable are reported at the next synchronize / toHost (as the forward embedding's). */
    @Override
    public void embeddingBackward(Tensor ids, Tensor gradOut, Tensor gradTable) {
        int mark = profBegin();
        KernelTypes.requireIndices(ids, "embeddingBackward ids");
        KernelTypes.requireRank(gradOut, 2, "embeddingBackward gradOut");
        KernelTypes.requireRank(gradTable, 2, "embeddingBackward gradTable");
        requireF32Accumulator(gradTable, "embeddingBackward gradTable");
        if (gradOut.dim(0) != ids.dim(0) || gradOut.dim(1) != gradTable.dim(1)) {
            throw new IllegalArgumentException("embeddingBackward: gradOut " + KernelTypes.shape(gradOut) + " must be ["
                    + ids.dim(0) + ", " + gradTable.dim(1) + "] (one row per id, gradTable " + KernelTypes.shape(gradTable) + ")");
        }
        try (Owned g = activation(gradOut, "embeddingBackward gradOut")) {
            TrainKernels.embeddingBackward(ctx, act, ids, g.t, gradTable, status);
            profEnd("embeddingBackward", mark);
        }
    }

    @Override
    public AttentionResult attentionTrain(Tensor q, Tensor k, Tensor v, Tensor segments, int batch, int heads,
                                          int kvHeads, int headDim, float scale, int window) {
        int mark = profBegin();
        checkTrainAttention(q, k, v, segments, batch, heads, kvHeads, headDim, "attentionTrain");
        try (Owned qa = activation(q, "attentionTrain q"); Owned ka = activation(k, "attentionTrain k");
             Owned va = activation(v, "attentionTrain v")) {
            return profEnd("attentionTrain", mark, TrainAttentionKernels.forward(ctx, act, qa.t, ka.t, va.t, segments,
                    batch, heads, kvHeads, headDim, scale, window));
        }
    }

    @Override
    public Tensor[] attentionBackward(Tensor q, Tensor k, Tensor v, Tensor segments, AttentionResult fwd,
                                      Tensor gradOut, int batch, int heads, int kvHeads, int headDim,
                                      float scale, int window) {
        int mark = profBegin();
        checkAttentionBackward(q, k, v, segments, fwd, gradOut, batch, heads, kvHeads, headDim);
        try (Owned qa = activation(q, "attentionBackward q"); Owned ka = activation(k, "attentionBackward k");
             Owned va = activation(v, "attentionBackward v"); Owned o = activation(fwd.out(), "attentionBackward fwd.out");
             Owned g = activation(gradOut, "attentionBackward gradOut")) {
            return profEnd("attentionBackward", mark, TrainAttentionKernels.backward(ctx, act, qa.t, ka.t, va.t, segments,
                    o.t, fwd.lse(), g.t, batch, heads, kvHeads, headDim, scale, window));
        }
    }

    private void checkAttentionBackward(Tensor q, Tensor k, Tensor v, Tensor segments, AttentionResult fwd, Tensor gradOut,
                                        int batch, int heads, int kvHeads, int headDim) {
        checkTrainAttention(q, k, v, segments, batch, heads, kvHeads, headDim, "attentionBackward");
        KernelTypes.requireSameShape(q, fwd.out(), "attentionBackward q and fwd.out");
        KernelTypes.requireSameShape(q, gradOut, "attentionBackward q and gradOut");
        int tokens = q.dim(0) / batch;
        KernelTypes.requireDevice(fwd.lse(), "attentionBackward fwd.lse");
        if (fwd.lse().dtype() != DType.F32 || fwd.lse().numel() != (long) batch * heads * tokens) {
            throw new IllegalArgumentException("attentionBackward: fwd.lse " + fwd.lse() + " must be F32 [" + batch + ", "
                    + heads + ", " + tokens + "]; pass the AttentionResult attentionTrain returned for these inputs");
        }
    }

    /** The warp-specialized Hopper backward with the stored dS writes dQ / dK / dV into one buffer; null elsewhere. */
    @Override
    public Tensor attentionBackwardJoined(Tensor q, Tensor k, Tensor v, Tensor segments, AttentionResult fwd, Tensor gradOut,
                                          int batch, int heads, int kvHeads, int headDim, float scale, int window) {
        for (Tensor t : new Tensor[] {q, k, v, fwd.out(), gradOut}) if (t.dtype() != act) return null;   // no conversions here
        int mark = profBegin();
        checkAttentionBackward(q, k, v, segments, fwd, gradOut, batch, heads, kvHeads, headDim);
        Tensor g = TrainAttentionKernels.backwardJoined(ctx, act, q, k, v, segments, fwd.out(), fwd.lse(), gradOut, batch,
                heads, kvHeads, headDim, scale, window);
        return profEndUnlessDeclined("attentionBackward", mark, g);   // null: declined (the dS scratch did not fit)
    }

    @Override
    public void ropeQkBackwardJoinedInPlace(Tensor gradJoined, Tensor positions, Tensor invFreq, int heads, int kvHeads,
                                            int headDim, float attentionScaling) {
        int mark = profBegin();
        KernelTypes.requireDevice(gradJoined, "rope backward joined gradient");
        KernelTypes.requireDevice(invFreq, "rope backward invFreq");
        try (Owned f = f32(invFreq, "rope backward invFreq")) {
            FusedKernels.ropeQkBackwardJoined(ctx, act, gradJoined, positions, f.t, heads, kvHeads, headDim, attentionScaling);
            profEnd("ropeQkBackward", mark);
        }
    }

    @Override
    public AttentionResult prefixAttention(Tensor q, Tensor kPrefix, Tensor vPrefix, AttentionResult seq, int batch,
                                           int heads, int kvHeads, int headDim, float scale) {
        int mark = profBegin();
        dev.qlora4j.backend.PrefixAttentionShapes.check("prefixAttention", q, kPrefix, vPrefix, seq, batch, heads, kvHeads, headDim);
        KernelTypes.requireDevice(seq.lse(), "prefixAttention seq.lse");
        try (Owned qa = activation(q, "prefixAttention q"); Owned ka = activation(kPrefix, "prefixAttention kPrefix");
             Owned va = activation(vPrefix, "prefixAttention vPrefix"); Owned o = activation(seq.out(), "prefixAttention seq.out")) {
            return profEnd("prefixAttention", mark, PrefixAttentionKernels.forward(ctx, act, qa.t, ka.t, va.t,
                    new AttentionResult(o.t, seq.lse()), batch, heads, kvHeads, headDim, scale));
        }
    }

    @Override
    public void prefixAttentionBackward(Tensor q, Tensor kPrefix, Tensor vPrefix, AttentionResult merged, Tensor gradOut,
                                        Tensor gradQ, Tensor gradKPrefix, Tensor gradVPrefix, int batch, int heads,
                                        int kvHeads, int headDim, float scale) {
        int mark = profBegin();
        String op = "prefixAttentionBackward";
        dev.qlora4j.backend.PrefixAttentionShapes.check(op, q, kPrefix, vPrefix, merged, batch, heads, kvHeads, headDim);
        dev.qlora4j.backend.PrefixAttentionShapes.checkGradients(op, q, kPrefix, gradOut, gradQ, gradKPrefix, gradVPrefix);
        KernelTypes.requireDevice(merged.lse(), op + " lse");
        KernelTypes.requireDevice(gradQ, op + " gradQ");
        if (gradQ.dtype() != act) {
            throw new IllegalArgumentException(op + ": gradQ must be " + act + " (the activation dtype, as attentionBackward returns it), got " + gradQ);
        }
        requireF32Accumulator(gradKPrefix, op + " gradKPrefix");
        requireF32Accumulator(gradVPrefix, op + " gradVPrefix");
        try (Owned qa = activation(q, op + " q"); Owned ka = activation(kPrefix, op + " kPrefix");
             Owned va = activation(vPrefix, op + " vPrefix"); Owned o = activation(merged.out(), op + " out");
             Owned g = activation(gradOut, op + " gradOut")) {
            PrefixAttentionKernels.backward(ctx, act, qa.t, ka.t, va.t, o.t, merged.lse(), g.t, gradQ, gradKPrefix, gradVPrefix,
                    batch, heads, kvHeads, headDim, scale);
            profEnd(op, mark);
        }
    }

    private static void checkTrainAttention(Tensor q, Tensor k, Tensor v, Tensor segments, int batch, int heads,
                                            int kvHeads, int headDim, String op) {
        KernelTypes.requireRank(q, 2, op + " q");
        KernelTypes.requireRank(k, 2, op + " k");
        KernelTypes.requireSameShape(k, v, op + " k and v");
        if (heads < 1 || kvHeads < 1 || heads % kvHeads != 0 || headDim < 1) {
            throw new IllegalArgumentException(op + ": heads (" + heads + ") must be a positive multiple of kvHeads ("
                    + kvHeads + ") and headDim (" + headDim + ") positive");
        }
        if (q.dim(1) != heads * headDim || k.dim(1) != kvHeads * headDim) {
            throw new IllegalArgumentException(op + ": q " + KernelTypes.shape(q) + " and k " + KernelTypes.shape(k)
                    + " must be [B*T, " + heads + "*" + headDim + "] and [B*T, " + kvHeads + "*" + headDim + "]");
        }
        if (batch < 1 || q.dim(0) != k.dim(0) || q.dim(0) % batch != 0) {
            throw new IllegalArgumentException(op + ": q " + KernelTypes.shape(q) + " and k " + KernelTypes.shape(k)
                    + " must both have B*T rows with B = " + batch);
        }
        TrainAttentionKernels.dimsPerLane(headDim);
        if (segments != null) {
            KernelTypes.requireIndices(segments, op + " segments");
            if (segments.dim(0) != q.dim(0)) {
                throw new IllegalArgumentException(op + ": segments " + KernelTypes.shape(segments)
                        + " must have one id per token (" + q.dim(0) + ")");
            }
        }
    }

    @Override
    public Tensor[] crossEntropyWithGrad(Tensor logits, Tensor targets, float gradScale) {
        int mark = profBegin();
        KernelTypes.requireRank(logits, 2, "crossEntropyWithGrad logits");
        KernelTypes.requireIndices(targets, "crossEntropyWithGrad targets");
        if (targets.dim(0) != logits.dim(0)) {
            throw new IllegalArgumentException("crossEntropyWithGrad: logits " + KernelTypes.shape(logits) + " and targets "
                    + KernelTypes.shape(targets) + " disagree on the number of rows");
        }
        try (Owned l = activation(logits, "crossEntropyWithGrad logits")) {
            return profEnd("crossEntropyWithGrad", mark,
                    TrainKernels.crossEntropyWithGrad(ctx, act, l.t, targets, gradScale, status));
        }
    }

    /** Rows concatenated on the device (stream-ordered copies); parts share h and dtype. */
    @Override
    public Tensor concatRows(java.util.List<Tensor> parts) {
        int mark = profBegin();
        if (parts.isEmpty()) throw new IllegalArgumentException("concatRows: no parts to concatenate");
        Tensor first = parts.get(0);
        KernelTypes.requireRank(first, 2, "concatRows part 0");
        int h = first.dim(1), n = 0;
        for (int i = 0; i < parts.size(); i++) {
            Tensor p = parts.get(i);
            KernelTypes.requireDevice(p, "concatRows part " + i);
            if (p.rank() != 2 || p.dim(1) != h || p.dtype() != first.dtype()) {
                throw new IllegalArgumentException("concatRows: part " + i + " " + p + " must be [*, " + h + "] of "
                        + first.dtype() + " like part 0");
            }
            n = Math.addExact(n, p.dim(0));
        }
        Tensor out = ctx.empty(first.dtype(), n, h);
        long offset = 0;
        for (Tensor p : parts) {
            if (p.byteSize() > 0) {
                ctx.driver().memcpyDtoDAsync(CudaContext.ptr(out) + offset, CudaContext.ptr(p), p.byteSize(), ctx.stream());
            }
            offset += p.byteSize();
        }
        return profEnd("concatRows", mark, out);
    }

    /** Waits for queued work and reports errors kernels recorded. */
    @Override
    public void synchronize() {
        ctx.bind();
        status.check();
        if (profiler != null) profiler.resolve();
    }

    // ---- decode graphs ----

    @Override
    public boolean decodeGraphsEnabled() { return graphs && profiler == null; } // events cannot be timed in a capture

    @Override
    public DecodeGraph newDecodeGraph(int batch, DecodeGraph.Body body) {
        return new CudaDecodeGraph(this, batch, body);
    }

    @Override
    public TokenPicker newTokenPicker(int batch) {
        return Switches.on(CudaDecodeGraph.DEVICE_PICK_PROPERTY, true) ? new CudaTokenPicker(this, batch) : null;
    }

    /**
     * Turns decode graphs off for this backend (weight offload streams layers through host-side staging that a
     * captured graph would not replay).
     */
    public void disableDecodeGraphs() { graphs = false; }

    /** Set by CudaDecodeGraph around its direct first step and its capture; 0 restores by-value starts. */
    void useGraphStart(long devicePointer) { graphStartPointer = devicePointer; }

    DeviceStatus status() { return status; }

    @Override
    public void close() {
        try {
            ctx.synchronize();
            if (profiler != null) profiler.close();
            status.close();
        } finally {
            ctx.close();
        }
    }

    // ---- helpers ----

    /** Starts timing an op: a mark for profEnd, or -1 when profiling is off. */
    /** Every op starts here: binds the context (several GPUs in one process), then opens the op's profile mark. */
    private int profBegin() {
        ctx.bind();
        return profiler == null ? -1 : profiler.begin();
    }

    /** Ends timing the op begun at mark (nothing when -1) and passes its result through. */
    private <T> T profEnd(String op, int mark, T result) {
        if (mark >= 0) profiler.end(op, mark);
        return result;
    }

    private void profEnd(String op, int mark) {
        if (mark >= 0) profiler.end(op, mark);
    }

    /**
     * profEnd for an op that may decline (return null having run nothing): the mark is then cancelled, so that no
     * open mark holds the profiler's resolve off (which left the decode profile's table empty: the prefill declines
     * the joint gate / up GEMV).
     */
    private <T> T profEndUnlessDeclined(String op, int mark, T result) {
        if (mark >= 0) {
            if (result == null) profiler.cancel(mark);
            else profiler.end(op, mark);
        }
        return result;
    }

    /** The whole weight dequantized to the activation dtype (a part of linearQuantizedBackwardInput's time). */
    private Tensor timedDequantize(QuantizedWeight w) {
        int mark = profBegin();
        return profEnd("linearQuantizedBackwardInput/dequantize", mark, CudaQuantOps.dequantize(ctx, w, act));
    }

    /** A tensor in the activation dtype: t itself, or a cast copy closed with the holder. */
    private record Owned(Tensor t, boolean owned) implements AutoCloseable {
        @Override
        public void close() { if (owned) t.close(); }
    }

    /** t as F32 (cast copy when needed). */
    private Owned f32(Tensor t, String what) {
        KernelTypes.requireDevice(t, what);
        if (t.dtype() == DType.F32) return new Owned(t, false);
        if (!t.dtype().isFloating()) throw new IllegalArgumentException(what + " must be a floating-point tensor, got " + t);
        return new Owned(CastKernels.cast(ctx, t, DType.F32), true);
    }

    private static void requireF32Accumulator(Tensor t, String what) {
        KernelTypes.requireDevice(t, what);
        if (t.dtype() != DType.F32) {
            throw new IllegalArgumentException(what + " must be an F32 gradient accumulator on the GPU, got " + t);
        }
    }

    private Owned activation(Tensor t, String what) {
        KernelTypes.requireDevice(t, what);
        if (t.dtype() == act) return new Owned(t, false);
        if (!t.dtype().isFloating()) {
            throw new IllegalArgumentException(what + " must be a floating-point tensor, got " + t);
        }
        return new Owned(CastKernels.cast(ctx, t, act), true);
    }
}
