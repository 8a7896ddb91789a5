package dev.qlora4j.backend.cuda;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.KvCache;
import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.cuda.CudaDriver;
import dev.qlora4j.quant.Int8Weight;
import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Device;
import dev.qlora4j.tensor.Tensor;

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
    private final boolean graphs;
    private final DeviceStatus status;
    /** Device address of the int a captured decode step reads its cache slot from; 0 outside graphs. */
    private long graphStartPointer;

    public CudaBackend(CudaContext ctx, DType activations, boolean decodeGraphs) {
        KernelTypes.act(activations); // F32 or BF16
        this.ctx = ctx;
        this.act = activations;
        this.graphs = decodeGraphs;
        this.status = new DeviceStatus(ctx);
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

    @Override public Device device() { return ctx.device(); }

    @Override public DType activationDType() { return act; }

    // ---- memory ----

    @Override
    public Tensor empty(DType dtype, int... shape) { return ctx.empty(dtype, shape); }

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
        return h;
    }

    @Override
    public Tensor cast(Tensor t, DType dtype) { return CastKernels.cast(ctx, t, dtype); }

    // ---- forward ops ----

    @Override
    public Tensor embedding(Tensor ids, Tensor table) {
        return EmbeddingKernels.embedding(ctx, act, ids, table, status);
    }

    @Override
    public Tensor rmsNorm(Tensor x, Tensor weight, float eps) {
        KernelTypes.requireRank(x, 2, "rmsNorm x");
        try (Owned xa = activation(x, "rmsNorm x")) {
            return RmsNormKernels.rmsNorm(ctx, act, xa.t, weight, eps);
        }
    }

    @Override
    public Tensor linear(Tensor x, Tensor w, Tensor bias) {
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
            return LinearOps.linear(ctx, act, xa.t, w, bias);
        }
    }

    @Override
    public Tensor add(Tensor a, Tensor b) {
        KernelTypes.requireSameShape(a, b, "add");
        try (Owned aa = activation(a, "add a"); Owned bb = activation(b, "add b")) {
            Tensor out = ctx.empty(act, a.shape());
            ElementwiseKernels.add(ctx, act, aa.t, bb.t, out);
            return out;
        }
    }

    @Override
    public Tensor addInPlace(Tensor a, Tensor b) {
        KernelTypes.requireSameShape(a, b, "addInPlace");
        KernelTypes.requireDevice(a, "addInPlace target a");
        if (a.dtype() != act) {
            throw new IllegalArgumentException("addInPlace target a must be " + act
                    + " (the CUDA backend's activation dtype), got " + a);
        }
        try (Owned bb = activation(b, "addInPlace b")) {
            ElementwiseKernels.add(ctx, act, a, bb.t, a);
            return a;
        }
    }

    @Override
    public Tensor siluMul(Tensor gate, Tensor up) {
        KernelTypes.requireSameShape(gate, up, "siluMul");
        try (Owned g = activation(gate, "siluMul gate"); Owned u = activation(up, "siluMul up")) {
            Tensor out = ctx.empty(act, gate.shape());
            ElementwiseKernels.siluMul(ctx, act, g.t, u.t, out);
            return out;
        }
    }

    @Override
    public void ropeInPlace(Tensor x, Tensor positions, Tensor invFreq, int heads, int headDim, float attentionScaling) {
        KernelTypes.requireDevice(x, "rope x");
        KernelTypes.requireDevice(invFreq, "rope invFreq");
        try (Owned f = invFreq.dtype() == DType.F32 ? new Owned(invFreq, false)
                : new Owned(CastKernels.cast(ctx, invFreq, DType.F32), true)) {
            RopeKernels.ropeInPlace(ctx, act, x, positions, f.t, heads, headDim, attentionScaling);
        }
    }

    @Override
    public KvCache newKvCache(int layers, int batch, int kvHeads, int capacity, int headDim) {
        return new CudaKvCache(ctx, act, layers, batch, kvHeads, capacity, headDim);
    }

    @Override
    public Tensor attention(Tensor q, Tensor k, Tensor v, KvCache cache, int layer, int start, Tensor padStart,
                            int heads, int kvHeads, int headDim, float scale, int window) {
        if (!(cache instanceof CudaKvCache c)) {
            throw new IllegalArgumentException("attention: the CUDA backend needs a KV cache from its own newKvCache, got "
                    + (cache == null ? "null" : cache.getClass().getName()));
        }
        try (Owned qa = activation(q, "attention q"); Owned ka = activation(k, "attention k");
             Owned va = activation(v, "attention v")) {
            AttentionKernels.Shape s = AttentionKernels.check(qa.t, ka.t, va.t, c, act, start, padStart, heads, kvHeads,
                    headDim);
            return AttentionKernels.attention(ctx, act, s, qa.t, ka.t, va.t, c, layer, start, graphStartPointer,
                    padStart, scale, window);
        }
    }

    @Override
    public Tensor gatherRows(Tensor x, Tensor rows) {
        KernelTypes.requireRank(x, 2, "gatherRows x");
        KernelTypes.requireIndices(rows, "gatherRows rows");
        try (Owned xa = activation(x, "gatherRows x")) {
            return ElementwiseKernels.gatherRows(ctx, act, xa.t, rows, status);
        }
    }

    @Override
    public Tensor crossEntropy(Tensor logits, Tensor targets) {
        KernelTypes.requireRank(logits, 2, "crossEntropy logits");
        KernelTypes.requireIndices(targets, "crossEntropy targets");
        if (targets.dim(0) != logits.dim(0)) {
            throw new IllegalArgumentException("crossEntropy: logits " + KernelTypes.shape(logits) + " and targets "
                    + KernelTypes.shape(targets) + " disagree on the number of rows");
        }
        try (Owned l = activation(logits, "crossEntropy logits")) {
            return XentKernels.crossEntropy(ctx, act, l.t, targets, status);
        }
    }

    // ---- quantized weights: CudaQuantOps (the quantized-kernel branch) ----

    @Override
    public QuantizedWeight quantize4bit(Tensor weight, dev.qlora4j.quant.QuantType type, int blocksize,
                                        boolean doubleQuant, DType computeDType) {
        boolean onDevice = weight.storage() instanceof CudaStorage;
        Tensor w = onDevice ? weight : ctx.upload(weight);
        try {
            return CudaQuantOps.quantize4bit(ctx, w, type, blocksize, doubleQuant, computeDType);
        } finally {
            if (!onDevice) w.close();
        }
    }

    @Override
    public QuantizedWeight prepare4bit(QuantState4bit weight, DType computeDType) {
        return CudaQuantOps.prepare4bit(ctx, weight, computeDType);
    }

    @Override
    public QuantizedWeight prepare8bit(Int8Weight weight, float threshold) {
        return CudaQuantOps.prepare8bit(ctx, weight, threshold);
    }

    @Override
    public Tensor linearQuantized(Tensor x, QuantizedWeight w, Tensor bias) {
        KernelTypes.requireRank(x, 2, "linearQuantized x");
        if (x.dim(1) != w.inFeatures()) {
            throw new IllegalArgumentException("linearQuantized: x " + KernelTypes.shape(x) + " does not match the weight ["
                    + w.outFeatures() + ", " + w.inFeatures() + "]");
        }
        try (Owned xa = activation(x, "linearQuantized x")) {
            Tensor y = CudaQuantOps.linear(ctx, xa.t, w, bias);
            if (y.dtype() == act) return y;
            try (y) {
                return CastKernels.cast(ctx, y, act);
            }
        }
    }

    @Override
    public Tensor dequantize(QuantizedWeight w, DType dtype) {
        return CudaQuantOps.dequantize(ctx, w, dtype);
    }

    /** Waits for queued work and reports errors kernels recorded. */
    @Override
    public void synchronize() {
        status.check();
    }

    // ---- decode graphs ----

    @Override
    public boolean decodeGraphsEnabled() { return graphs; }

    @Override
    public DecodeGraph newDecodeGraph(int batch, DecodeGraph.Body body) {
        return new CudaDecodeGraph(this, batch, body);
    }

    /** Set by CudaDecodeGraph around its direct first step and its capture; 0 restores by-value starts. */
    void useGraphStart(long devicePointer) { graphStartPointer = devicePointer; }

    DeviceStatus status() { return status; }

    @Override
    public void close() {
        try {
            ctx.synchronize();
            status.close();
        } finally {
            ctx.close();
        }
    }

    // ---- helpers ----

    /** A tensor in the activation dtype: t itself, or a cast copy closed with the holder. */
    private record Owned(Tensor t, boolean owned) implements AutoCloseable {
        @Override
        public void close() { if (owned) t.close(); }
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
