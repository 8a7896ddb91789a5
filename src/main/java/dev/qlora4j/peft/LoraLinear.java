package dev.qlora4j.peft;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.cuda.CudaBackend;
import dev.qlora4j.backend.cuda.CudaLora;
import dev.qlora4j.backend.cuda.CudaLoraGroup;
import dev.qlora4j.nn.DenseLinear;
import dev.qlora4j.nn.Linear;
import dev.qlora4j.nn.QuantizedBaseLinear;
import dev.qlora4j.nn.QuantizedLinear;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.config.InitLoraWeights;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.ArrayList;
import java.util.Collections;
import java.util.IdentityHashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * peft's lora.Linear: a frozen base linear layer (dense, 4-bit or 8-bit; never modified) plus
 * named LoRA adapters. With active adapters a_1..a_k (in activation order) the output is built as
 * peft builds it:
 *
 * <pre>
 *   R = base(x)
 *   plain LoRA:  R += s * B A drop(x)
 *   DoRA:        c = m / ||W + s B A||_row (norm detached), y = B A drop(x)
 *                R += (c - 1) * (R - bias) + c * s * y        without dropout (or in eval mode)
 *                R += (c - 1) * (drop(x) W^T) + c * s * y     with dropout while training
 * </pre>
 *
 * (DoRA's "R - bias" is the running result, so an adapter activated earlier feeds a later DoRA
 * adapter's base term, exactly as in peft's DoraLinearVariant.) W is the dense base weight or
 * the dequantized quantized one. Dropout masks are re-derived in backward from a seed built from
 * {@link #setStep(long)}'s step seed, the module path and the adapter name.
 *
 * <p>Merging ({@link #merge}) builds a merged copy of the weight and forwards through it;
 * {@link #unmerge} drops the copy, so the base is restored exactly (the base weight may be a
 * read-only memory-mapped view or shared with the embedding, so it is never written).
 */
public final class LoraLinear implements QuantizedBaseLinear {
    private static final System.Logger LOG = System.getLogger(LoraLinear.class.getName());

    private final String path;
    private Linear base;                // frozen; replaced only by PiSSA's residual
    private final boolean baseShared;   // true when base's weight belongs to someone else (tied lm_head)
    private final Map<String, LoraAdapter> adapters = new LinkedHashMap<>();
    private List<String> active = new ArrayList<>();
    private boolean disabled;
    private boolean training;
    private long stepSeed;
    private final List<String> mergedAdapters = new ArrayList<>();
    private Tensor mergedWeight;        // [out, in] in the base weight dtype, owned; null when nothing is merged
    private DenseLinear merged;         // forwards through mergedWeight and the base bias
    // CUDA BF16 path: each adapter's h = drop(x) A^T from its last forward, for the backward of the same x
    private final Map<LoraAdapter, KeptHidden> kept = new IdentityHashMap<>();
    private StackedA stackedA;          // a LoraGroup led by this layer: the group's lora_A copies stacked

    /**
     * @param path       the module path, e.g. "model.layers.0.self_attn.q_proj" (parameter names and seeds)
     * @param baseShared true when closing this layer must not close the base (its weight is shared)
     */
    public LoraLinear(String path, Linear base, boolean baseShared) {
        if (base instanceof LoraLinear) throw new IllegalArgumentException(path + " is already a LoRA layer");
        this.path = path;
        this.base = base;
        this.baseShared = baseShared;
    }

    public String path() { return path; }

    /** The frozen base layer (PiSSA's residual once a PiSSA adapter was added). */
    public Linear base() { return base; }

    @Override public int inFeatures() { return base.inFeatures(); }

    @Override public int outFeatures() { return base.outFeatures(); }

    // ---- adapters ----

    /**
     * Adds a freshly initialized adapter (peft's update_layer). The adapter is not activated.
     *
     * @param dora DoRA: the magnitude vector starts as ||W + s B A|| per output row
     */
    public LoraAdapter addAdapter(Backend b, String name, int rank, double alpha, double scaling, double dropout,
                                  boolean dora, InitLoraWeights init, long seed) {
        checkNewName(name);
        int out = outFeatures(), in = inFeatures();
        float[] baseWeight = null;
        if (LoraInit.needsBaseWeight(init)) {
            if (!(base instanceof DenseLinear d)) {
                throw new IllegalArgumentException(path + ": init_lora_weights=\"" + init.toJsonValue() + "\" needs a 16/32-bit base "
                        + "weight but the layer is " + base.getClass().getSimpleName() + " (peft refuses too): load the base "
                        + "unquantized, initialize PiSSA, save the residual model, and quantize that");
            }
            baseWeight = b.toHost(d.weight()).toFloatArray();
        }
        LoraInit.Values v = LoraInit.init(init, out, in, rank, scaling, seed, baseWeight);
        if (v.residual() != null) replaceBaseWeight(b, (DenseLinear) base, v.residual());
        LoraAdapter adapter = new LoraAdapter(name, rank, alpha, scaling, dropout,
                TrainableTensor.of(b, v.a(), rank, in), TrainableTensor.of(b, v.b(), out, rank), null, true);
        if (dora) {
            LoraAdapter withMagnitude = new LoraAdapter(name, rank, alpha, scaling, dropout, adapter.a(), adapter.b(),
                    TrainableTensor.of(b, doraWeightNorm(b, adapter), out), true);
            adapter = withMagnitude;
        }
        adapters.put(name, adapter);
        return adapter;
    }

    /** Adds an adapter built elsewhere (loaded from a file, or combined by add_weighted_adapter). */
    public void putAdapter(LoraAdapter adapter) {
        checkNewName(adapter.name());
        if (adapter.a().shape()[1] != inFeatures() || adapter.b().shape()[0] != outFeatures()
                || (adapter.magnitude() != null && adapter.magnitude().shape()[0] != outFeatures())) {
            throw new IllegalArgumentException(path + ": adapter '" + adapter.name() + "' does not fit a ["
                    + outFeatures() + ", " + inFeatures() + "] layer");
        }
        adapters.put(adapter.name(), adapter);
    }

    private void checkNewName(String name) {
        if (name == null || name.isEmpty() || name.contains(".")) {
            throw new IllegalArgumentException("adapter name must be non-empty and without dots, got '" + name + "'");
        }
        if (adapters.containsKey(name)) throw new IllegalArgumentException(path + " already has an adapter named '" + name + "'");
    }

    private void replaceBaseWeight(Backend b, DenseLinear d, float[] values) {
        DType dtype = d.weight().dtype();
        Tensor w = b.upload(Tensor.fromFloats(values, dtype, outFeatures(), inFeatures()));
        Tensor old = d.weight();
        base = new DenseLinear(w, d.bias());
        if (!baseShared) old.close();
    }

    public LoraAdapter adapter(String name) {
        LoraAdapter a = adapters.get(name);
        if (a == null) throw new IllegalArgumentException(path + " has no adapter '" + name + "'; it has " + adapters.keySet());
        return a;
    }

    public boolean hasAdapter(String name) { return adapters.containsKey(name); }

    public List<String> adapterNames() { return List.copyOf(adapters.keySet()); }

    /** Removes and closes an adapter; it leaves the active list too. Unmerges first if it is merged. */
    public void deleteAdapter(Backend b, String name) {
        LoraAdapter a = adapter(name);
        if (mergedAdapters.contains(name)) unmerge(b);
        adapters.remove(name);
        active.remove(name);
        dropKept(a);
        a.close();
    }

    /** Sets the active adapters (names this layer lacks are skipped, as in peft). */
    public void setActiveAdapters(List<String> names) { active = new ArrayList<>(names); }

    public List<String> activeAdapters() { return Collections.unmodifiableList(active); }

    /** Disabled: forward and backward use the base layer only (unmerging first, as peft does). */
    public void setDisabled(boolean disabled) { this.disabled = disabled; }

    public boolean disabled() { return disabled; }

    /** Training mode turns on lora_dropout (nn.Dropout is the identity in eval mode). */
    public void setTraining(boolean training) { this.training = training; }

    /** The step seed the dropout masks derive from; set it before each forward/backward pair. */
    public void setStep(long seed) { this.stepSeed = seed; }

    public boolean merged() { return !mergedAdapters.isEmpty(); }

    public List<String> mergedAdapters() { return List.copyOf(mergedAdapters); }

    private List<LoraAdapter> chain() {
        List<LoraAdapter> out = new ArrayList<>();
        for (String n : active) {
            LoraAdapter a = adapters.get(n);
            if (a != null) out.add(a);
        }
        return out;
    }

    long dropoutSeed(LoraAdapter a) { return Seeds.derive(stepSeed, path, a.name()); }

    private boolean dropoutOn(LoraAdapter a) { return training && a.dropout() > 0; }

    /** The dropout probability the adapter's input gets now (0 in eval mode). */
    float effectiveDropout(LoraAdapter a) { return dropoutOn(a) ? (float) a.dropout() : 0f; }

    // ---- the CUDA BF16 path's kept h (KeptHidden) ----

    /**
     * Whether a forward keeps adapter a's h for the backward: in training mode (a backward follows; eval forwards,
     * generation and its CUDA-graph decode steps keep nothing beyond the call) and for a trainable adapter (a
     * frozen one has no dB to compute).
     */
    boolean keepsHidden(LoraAdapter a) { return training && a.trainable(); }

    /** Keeps k as adapter a's h (replacing and releasing the one before). */
    void keep(LoraAdapter a, KeptHidden k) {
        KeptHidden old = kept.put(a, k);
        if (old != null && old != k) old.release();
    }

    /** Releases adapter a's kept h, if any. */
    void dropKept(LoraAdapter a) {
        KeptHidden old = kept.remove(a);
        if (old != null) old.release();
    }

    /** Keeps h (owned: kept or closed) as the h of adapter a's forward on x now. */
    void keepOwn(LoraAdapter a, Tensor h, Tensor x) {
        if (h == null) {
            dropKept(a);
            return;
        }
        keep(a, KeptHidden.own(h, x, stepSeed, effectiveDropout(a), a.a()));
    }

    /** A kept h for a group's column block of the shared buffer. */
    KeptHidden keptBlock(KeptHidden.Shared shared, int column, LoraAdapter a, Tensor x) {
        return new KeptHidden(shared, column, a.rank(), x, stepSeed, effectiveDropout(a), a.a());
    }

    /**
     * Adapter a's kept h when it is the h of x now (see KeptHidden), else null; either way it leaves this layer,
     * so the caller releases the returned one after its backward (a second backward recomputes).
     */
    KeptHidden takeKept(LoraAdapter a, Tensor x) {
        KeptHidden k = kept.remove(a);
        if (k == null) return null;
        if (k.matches(x, stepSeed, effectiveDropout(a), a.a())) return k;
        k.release();
        return null;
    }

    /** Whether adapter a holds a kept h that is the h of x now (tests; nothing is taken). */
    boolean holdsKept(LoraAdapter a, Tensor x) {
        KeptHidden k = kept.get(a);
        return k != null && k.matches(x, stepSeed, effectiveDropout(a), a.a());
    }

    private void releaseAllKept() {
        for (KeptHidden k : kept.values()) k.release();
        kept.clear();
    }

    /**
     * The adapter of this layer in a LoraGroup now, or null when the layer must run on its own: grouped are layers
     * on the CUDA BF16 path, not disabled or merged, with exactly one active plain adapter without dropout in
     * effect (dropout masks differ per layer, so the inputs would differ).
     */
    LoraAdapter groupAdapter(Backend b) {
        if (disabled || merged()) return null;
        List<LoraAdapter> chain = chain();
        if (chain.size() != 1 || !bf16Path(b, chain)) return null;
        LoraAdapter a = chain.getFirst();
        return effectiveDropout(a) == 0f ? a : null;
    }

    /** The stacked BF16 lora_A copies [sum r, in] of a group this layer leads (cached; owned by this layer, or the adapter's own copy for a group of one). */
    Tensor stackedA(CudaBackend b, LoraAdapter[] group) {
        Tensor[] copies = new Tensor[group.length];
        for (int i = 0; i < group.length; i++) copies[i] = group[i].a().castCopy(b, DType.BF16);
        if (group.length == 1) return copies[0];   // a group of one (LoraGroup#backwardAlone): the copy itself
        if (stackedA != null && stackedA.matches(group)) return stackedA.tensor();
        if (stackedA != null) stackedA.close();
        stackedA = null;
        stackedA = StackedA.of(group, CudaLoraGroup.concatRows(b, copies));
        return stackedA.tensor();
    }

    /**
     * Whether {@link #baseInputGradInto} takes this layer's base: a quantized one, or a dense BF16 weight (the
     * activation dtype), on the CUDA BF16 path.
     */
    boolean baseInputGradIntoApplies() {
        return switch (base) {
            case QuantizedLinear q -> true;
            case DenseLinear d -> CudaLora.denseBaseApplies(d.weight());
            default -> false;
        };
    }

    /**
     * {@link #baseInputGradInto(CudaBackend, Tensor, boolean, Tensor)} with beforeProduct run right before the GEMM
     * (after a 4-bit base's dequantize).
     */
    void baseInputGradInto(CudaBackend b, Tensor gx, boolean accumulate, Tensor gradOut, Runnable beforeProduct) {
        switch (base) {
            case QuantizedLinear q -> CudaLora.baseInputGradInto(b, gx, accumulate, gradOut, q.weight(), beforeProduct);
            case DenseLinear d -> {
                beforeProduct.run();
                CudaLora.baseInputGradInto(b, gx, accumulate, gradOut, d.weight());
            }
            default -> throw new IllegalStateException(path + ": the base " + base.getClass().getSimpleName()
                    + " has no accumulating backward; check baseInputGradIntoApplies first");
        }
    }

    /** gx (+)= the base layer's grad_x for gradOut, by the base's own GEMM (beta = 1 when accumulating). */
    void baseInputGradInto(CudaBackend b, Tensor gx, boolean accumulate, Tensor gradOut) {
        baseInputGradInto(b, gx, accumulate, gradOut, () -> {});
    }

    // ---- forward / backward ----

    @Override
    public Tensor forward(Backend b, Tensor x) {
        if (disabled && merged()) unmerge(b);
        if (merged()) return merged.forward(b, x);
        return forwardFromBase(b, x, base.forward(b, x));
    }

    /** The quantized base while forward starts from its output (not merged; a quantized base never is), else null. */
    @Override
    public QuantizedLinear quantizedBase() {
        return !merged() && base instanceof QuantizedLinear q ? q : null;
    }

    /**
     * forward given result = base.forward(b, x) (owned: returned or closed): unchanged when disabled or without
     * active adapters, else the active adapters' terms added in activation order. Never for a merged layer.
     */
    @Override
    public Tensor forwardFromBase(Backend b, Tensor x, Tensor result) {
        if (merged()) {
            result.close();
            throw new IllegalStateException(path + ": merged, its forward is the merged weight's, not the base's plus adapters");
        }
        if (disabled) return result;
        List<LoraAdapter> chain = chain();
        if (chain.isEmpty()) return result;
        try {
            if (!bf16Path(b, chain)) return addAdapters(b, x, result, chain, null);
            for (LoraAdapter a : chain) {
                Tensor h = CudaLora.forwardInto((CudaBackend) b, result, x, a.a().value(), a.b().value(),
                        a.a().castCopy(b, DType.BF16), a.b().castCopy(b, DType.BF16), (float) a.scaling(),
                        effectiveDropout(a), dropoutSeed(a), keepsHidden(a));
                keepOwn(a, h, x);
            }
        } catch (RuntimeException e) {
            result.close();
            throw e;
        }
        return result;
    }

    /**
     * The CUDA backend's BF16 LoRA products (CudaLora) for a chain of plain adapters; DoRA chains take the
     * generic path. Plain adapters only add to the output, so their backward needs neither the base output
     * nor the running result: the base forward is not recomputed there.
     */
    private static boolean bf16Path(Backend b, List<LoraAdapter> chain) {
        if (!CudaLora.applies(b)) return false;
        for (LoraAdapter a : chain) if (a.useDora()) return false;
        return true;
    }

    /** What backward needs from one adapter's forward, recomputed from x. */
    private record Step(LoraAdapter adapter, Tensor xd, Tensor h, Tensor y, boolean dropped,
                        Tensor baseNoBias, Tensor cMinus1, Tensor cTimesS, Tensor invNorm) {}

    /** The forward chain; with trace != null the intermediates are kept for backward. */
    private Tensor run(Backend b, Tensor x, List<LoraAdapter> chain, List<Step> trace) {
        return addAdapters(b, x, base.forward(b, x), chain, trace);
    }

    /** The chain's terms added to result = base.forward(b, x) (in place; returned); trace as in {@link #run}. */
    private Tensor addAdapters(Backend b, Tensor x, Tensor result, List<LoraAdapter> chain, List<Step> trace) {
        Tensor w = null;
        boolean ownW = false;
        try {
            for (LoraAdapter a : chain) {
                boolean drop = dropoutOn(a);
                Tensor xd = drop ? b.dropout(x, (float) a.dropout(), dropoutSeed(a)) : x;
                Tensor h = b.linear(xd, a.a().value(), null);   // [n, r]
                Tensor y = b.linear(h, a.b().value(), null);    // [n, out]
                if (!a.useDora()) {
                    b.axpyInPlace(result, (float) a.scaling(), y);
                    if (trace != null) {
                        trace.add(new Step(a, xd, h, y, drop, null, null, null, null));
                    } else {
                        close(xd != x ? xd : null, h, y);
                    }
                    continue;
                }
                if (w == null) {
                    ownW = !(base instanceof DenseLinear);
                    w = doraBaseWeight(b);
                }
                float[] norm = weightNorm(b, w, a);
                float[] m = a.magnitude().hostValues(b);
                int out = norm.length;
                float[] cm1 = new float[out], cs = new float[out], inv = new float[out];
                for (int j = 0; j < out; j++) {
                    float c = m[j] / norm[j];
                    cm1[j] = c - 1;
                    cs[j] = c * (float) a.scaling();
                    inv[j] = 1 / norm[j];
                }
                Tensor baseNoBias = drop ? b.linear(xd, w, null) : minusBias(b, result);
                Tensor cm1T = b.upload(Tensor.of(cm1, out)), csT = b.upload(Tensor.of(cs, out));
                Tensor d1 = b.scaleColumns(baseNoBias, cm1T), d2 = b.scaleColumns(y, csT);
                b.addInPlace(result, d1);
                b.addInPlace(result, d2);
                close(d1, d2);
                if (trace != null) {
                    trace.add(new Step(a, xd, h, y, drop, baseNoBias, cm1T, csT, b.upload(Tensor.of(inv, out))));
                } else {
                    close(xd != x ? xd : null, h, y, baseNoBias, cm1T, csT);
                }
            }
        } finally {
            if (ownW && w != null) w.close();
        }
        return result;
    }

    @Override
    public Tensor backward(Backend b, Tensor x, Tensor gradOut) {
        if (disabled) return base.backward(b, x, gradOut);
        if (merged()) return merged.backward(b, x, gradOut);
        List<LoraAdapter> chain = chain();
        if (chain.isEmpty()) return base.backward(b, x, gradOut);
        if (bf16Path(b, chain)) {
            Tensor alone = LoraGroup.backwardAlone(b, x, gradOut, this);   // its LoRA products beside the base GEMM
            if (alone != null) return alone;
            CudaBackend cb = (CudaBackend) b;
            boolean into = baseInputGradIntoApplies();
            Tensor gx = into ? cb.context().empty(DType.BF16, x.dim(0), inFeatures()) : base.backward(b, x, gradOut);
            try {
                backwardBf16Into(cb, x, gradOut, gx, !into, !into);
            } catch (RuntimeException e) {
                gx.close();
                throw e;
            }
            return gx;
        }
        List<Step> trace = new ArrayList<>();
        run(b, x, chain, trace).close();
        Tensor w = null;
        boolean ownW = false;
        Tensor gR = gradOut;   // d loss / d (running result after the adapters processed so far, from the end)
        Tensor gx = null;
        try {
            for (int i = trace.size() - 1; i >= 0; i--) {
                Step s = trace.get(i);
                LoraAdapter a = s.adapter();
                Tensor gy = a.useDora() ? b.scaleColumns(gR, s.cTimesS()) : b.scale(gR, (float) a.scaling());
                if (a.trainable()) b.linearBackwardWeight(gy, s.h(), a.b().gradForAccumulation(b));
                Tensor gh = b.linearBackwardInput(gy, a.b().value());
                if (a.trainable()) b.linearBackwardWeight(gh, s.xd(), a.a().gradForAccumulation(b));
                Tensor gxd = b.linearBackwardInput(gh, a.a().value());
                close(gy, gh);
                if (a.useDora()) {
                    if (a.trainable()) {
                        // d out / d m_j = (baseNoBias + s y)_j / norm_j  (the norm is a constant)
                        Tensor sy = b.scale(s.y(), (float) a.scaling());
                        Tensor t = b.add(s.baseNoBias(), sy);
                        Tensor gt = b.mul(gR, t);
                        Tensor scaled = b.scaleColumns(gt, s.invNorm());
                        b.sumRowsInto(scaled, a.magnitude().gradForAccumulation(b));
                        close(sy, t, gt, scaled);
                    }
                    Tensor gBase = b.scaleColumns(gR, s.cMinus1());
                    if (s.dropped()) {
                        if (w == null) {
                            ownW = !(base instanceof DenseLinear);
                            w = doraBaseWeight(b);
                        }
                        Tensor extra = b.linearBackwardInput(gBase, w);
                        b.addInPlace(gxd, extra);
                        close(extra, gBase);
                    } else {
                        Tensor next = b.add(gR, gBase);
                        close(gBase);
                        if (gR != gradOut) gR.close();
                        gR = next;
                    }
                }
                Tensor gxi = s.dropped() ? b.dropout(gxd, (float) a.dropout(), dropoutSeed(a)) : gxd;
                if (gxi != gxd) gxd.close();
                if (gx == null) {
                    gx = gxi;
                } else {
                    b.addInPlace(gx, gxi);
                    gxi.close();
                }
            }
            Tensor gBaseX = base.backward(b, x, gR);
            b.addInPlace(gBaseX, gx);
            return gBaseX;
        } finally {
            if (gR != gradOut) gR.close();
            if (gx != null) gx.close();
            if (ownW && w != null) w.close();
            for (Step s : trace) {
                close(s.xd() != x ? s.xd() : null, s.h(), s.y(), s.baseNoBias(), s.cMinus1(), s.cTimesS(), s.invNorm());
            }
        }
    }

    /**
     * On the CUDA BF16 path (plain adapters only, {@link #backwardOnBf16Path}): gx [n, in] (BF16) (+)= this layer's
     * grad_x, and the adapters' gradients accumulated. accumulate false: gx's contents are ignored (overwritten);
     * true: gx holds other terms to add to. baseDone: the base's grad_x is already in gx (a base without an
     * accumulating form, {@link #baseInputGradIntoApplies}, was run by its own backward); else it goes in by its own
     * GEMM here.
     *
     * <p>Order, so that cuBLAS does the sums: the adapters without dropout first (the first one writes gx when
     * nothing is in it yet, each GEMM adds with beta = 1), then the base GEMM (beta = 1 onto them), then the
     * adapters with dropout (their masked term needs a temporary and an add anyway). Each adapter uses its kept h
     * when it is the one of this x (KeptHidden), else recomputes it.
     */
    void backwardBf16Into(CudaBackend b, Tensor x, Tensor gradOut, Tensor gx, boolean accumulate, boolean baseDone) {
        List<LoraAdapter> chain = chain();
        boolean written = accumulate;
        for (LoraAdapter a : chain) {
            if (effectiveDropout(a) > 0f) continue;
            adapterBackwardBf16(b, a, x, gradOut, gx, written);
            written = true;
        }
        if (!baseDone) {
            baseInputGradInto(b, gx, written, gradOut);
            written = true;
        }
        for (LoraAdapter a : chain) {
            if (effectiveDropout(a) == 0f) continue;
            adapterBackwardBf16(b, a, x, gradOut, gx, written);
            written = true;
        }
    }

    private void adapterBackwardBf16(CudaBackend b, LoraAdapter a, Tensor x, Tensor gradOut, Tensor gx, boolean accumulate) {
        KeptHidden k = a.trainable() ? takeKept(a, x) : null;
        try {
            CudaLora.backwardInto(b, gx, accumulate, x, gradOut, a.a().value(), a.b().value(),
                    a.a().castCopy(b, DType.BF16), a.b().castCopy(b, DType.BF16), (float) a.scaling(),
                    effectiveDropout(a), dropoutSeed(a),
                    a.trainable() ? a.a().gradForAccumulation(b) : null,
                    a.trainable() ? a.b().gradForAccumulation(b) : null,
                    k == null ? null : k.hidden());
        } finally {
            if (k != null) k.release();
        }
    }

    /** Whether backward runs on the CUDA BF16 path now (plain adapters, not disabled or merged, some active). */
    boolean backwardOnBf16Path(Backend b) {
        if (disabled || merged()) return false;
        List<LoraAdapter> chain = chain();
        return !chain.isEmpty() && bf16Path(b, chain);
    }

    /** The base weight DoRA needs: the dense weight itself, or the quantized one dequantized (caller closes it then). */
    private Tensor doraBaseWeight(Backend b) {
        return switch (base) {
            case DenseLinear d -> d.weight();
            case QuantizedLinear q -> b.dequantize(q.weight(), b.activationDType());
            default -> throw new IllegalStateException(path + ": DoRA needs a dense or bitsandbytes-quantized base layer, got "
                    + base.getClass().getSimpleName());
        };
    }

    private Tensor baseBias() {
        return switch (base) {
            case DenseLinear d -> d.bias();
            case QuantizedLinear q -> q.bias();
            default -> null;
        };
    }

    /** A copy of r [n, out] minus the base bias in every row (the bias broadcast as ones [n,1] x bias^T). */
    private Tensor minusBias(Backend b, Tensor r) {
        Tensor copy = b.cast(r, r.dtype());
        Tensor bias = baseBias();
        if (bias == null) return copy;
        int n = r.dim(0);
        float[] ones = new float[n];
        java.util.Arrays.fill(ones, 1f);
        Tensor onesT = b.upload(Tensor.of(ones, n, 1));
        Tensor rows = b.linear(onesT, bias.reshape(bias.dim(0), 1), null);
        b.axpyInPlace(copy, -1f, rows);
        close(onesT, rows);
        return copy;
    }

    /** ||W + s B A|| per output row, float32, on the host (peft's get_weight_norm). */
    private float[] weightNorm(Backend b, Tensor w, LoraAdapter a) {
        Tensor at = b.transpose(a.a().value());              // [in, r]
        Tensor ba = b.linear(a.b().value(), at, null);       // B A [out, in]
        Tensor sum = b.cast(w, DType.F32);
        b.axpyInPlace(sum, (float) a.scaling(), ba);
        Tensor norms = b.rowNorms(sum);
        float[] out = b.toHost(norms).toFloatArray();
        close(at, ba, sum, norms);
        return out;
    }

    /** DoRA's initial magnitude for an adapter not yet stored here. */
    private float[] doraWeightNorm(Backend b, LoraAdapter a) {
        boolean own = !(base instanceof DenseLinear);
        Tensor w = doraBaseWeight(b);
        try {
            return weightNorm(b, w, a);
        } finally {
            if (own) w.close();
        }
    }

    // ---- merging ----

    /** scaling * B A as a host [out, in] matrix in float64. */
    public double[] deltaWeight(Backend b, String adapterName) {
        LoraAdapter a = adapter(adapterName);
        float[] av = a.a().hostValues(b), bv = a.b().hostValues(b);
        int out = outFeatures(), in = inFeatures(), r = a.rank();
        double[] d = new double[out * in];
        for (int i = 0; i < out; i++) {
            for (int t = 0; t < r; t++) {
                double bs = bv[i * r + t] * a.scaling();
                if (bs == 0) continue;
                for (int j = 0; j < in; j++) d[i * in + j] += bs * av[t * in + j];
            }
        }
        return d;
    }

    /** The dense base weight as float32 on the host (dequantized for a quantized base). */
    float[] hostBaseWeight(Backend b) {
        return switch (base) {
            case DenseLinear d -> b.toHost(d.weight()).toFloatArray();
            case QuantizedLinear q -> {
                try (Tensor w = b.dequantize(q.weight(), DType.F32)) {
                    yield b.toHost(w).toFloatArray();
                }
            }
            default -> throw new IllegalStateException(path + ": cannot read the weight of a " + base.getClass().getSimpleName());
        };
    }

    /** w [out*in] with the adapters merged in order (peft's merge; DoRA scales rows by m / ||W + delta||). */
    private float[] mergeInto(Backend b, float[] w, List<String> names) {
        int out = outFeatures(), in = inFeatures();
        for (String n : names) {
            LoraAdapter a = adapter(n);
            double[] d = deltaWeight(b, n);
            if (!a.useDora()) {
                for (int i = 0; i < w.length; i++) w[i] = w[i] + (float) d[i];
                continue;
            }
            float[] m = a.magnitude().hostValues(b);
            for (int i = 0; i < out; i++) {
                double ss = 0;
                for (int j = 0; j < in; j++) {
                    double v = w[i * in + j] + (float) d[i * in + j];
                    ss += v * v;
                }
                float factor = m[i] / (float) Math.sqrt(ss);
                for (int j = 0; j < in; j++) w[i * in + j] = factor * (w[i * in + j] + (float) d[i * in + j]);
            }
        }
        return w;
    }

    /**
     * Merges adapters into a copy of the dense base weight (null: the active ones). Forward then
     * uses the copy until {@link #unmerge}. A quantized base cannot be merged in place: use
     * PeftModel.mergeAndUnload, which produces a dense layer.
     */
    public void merge(Backend b, List<String> names) {
        List<String> todo = new ArrayList<>();
        for (String n : names == null ? active : names) {
            if (adapters.containsKey(n) && !mergedAdapters.contains(n)) todo.add(n);
        }
        if (todo.isEmpty()) return;
        if (!(base instanceof DenseLinear d)) {
            throw new UnsupportedOperationException(path + ": merging into a " + base.getClass().getSimpleName()
                    + " base would need re-quantization (lossy); use PeftModel.mergeAndUnload() to get a dense merged model");
        }
        float[] w = merged() ? b.toHost(mergedWeight).toFloatArray() : b.toHost(d.weight()).toFloatArray();
        mergeInto(b, w, todo);
        for (float v : w) {
            if (!Float.isFinite(v)) {
                throw new IllegalStateException("NaNs detected in the merged weights of " + path + ": the adapter(s) " + todo + " seem to be broken");
            }
        }
        Tensor nw = b.upload(Tensor.fromFloats(w, d.weight().dtype(), outFeatures(), inFeatures()));
        if (mergedWeight != null) mergedWeight.close();
        mergedWeight = nw;
        merged = new DenseLinear(nw, d.bias());
        mergedAdapters.addAll(todo);
    }

    /** Drops the merged copy: forward uses the untouched base and the adapters again. */
    public void unmerge(Backend b) {
        if (!merged()) {
            LOG.log(System.Logger.Level.WARNING, path + ": already unmerged, nothing to do");
            return;
        }
        mergedWeight.close();
        mergedWeight = null;
        merged = null;
        mergedAdapters.clear();
    }

    /**
     * The base with the active adapters merged, as a new dense layer (peft's merge_and_unload for
     * this module), and closes this layer's adapters and replaced weights. A quantized base is
     * dequantized first and the result is dense in {@code quantizedDType}.
     */
    Linear unloadMerged(Backend b, DType quantizedDType) {
        List<String> names = new ArrayList<>();
        for (String n : active) if (adapters.containsKey(n)) names.add(n);
        Linear result = base;
        if (!names.isEmpty()) {
            float[] w = mergeInto(b, hostBaseWeight(b), names);
            DType dtype = base instanceof DenseLinear d ? d.weight().dtype() : quantizedDType;
            Tensor nw = b.upload(Tensor.fromFloats(w, dtype, outFeatures(), inFeatures()));
            result = new DenseLinear(nw, baseBias());
            if (!baseShared) {
                switch (base) {
                    case DenseLinear d -> d.weight().close();
                    case QuantizedLinear q -> q.weight().close();
                    default -> { }
                }
            }
        }
        if (mergedWeight != null) mergedWeight.close();
        mergedWeight = null;
        merged = null;
        releaseAllKept();
        closeStackedA();
        for (LoraAdapter a : adapters.values()) a.close();
        adapters.clear();
        return result;
    }

    // ---- parameters ----

    /** Parameters of the active, trainable adapters, under peft's in-memory names. */
    @Override
    public List<Param> trainableParameters() {
        List<Param> out = new ArrayList<>();
        for (LoraAdapter a : chain()) if (a.trainable()) out.addAll(a.parameters(path));
        return out;
    }

    long adapterNumel() {
        long n = 0;
        for (LoraAdapter a : adapters.values()) n += a.numel();
        return n;
    }

    public void zeroGrad() {
        for (LoraAdapter a : adapters.values()) a.zeroGrad();
    }

    @Override
    public long weightBytes() {
        long n = base.weightBytes() + (mergedWeight == null ? 0 : mergedWeight.byteSize());
        for (LoraAdapter a : adapters.values()) n += a.numel() * 4;
        return n;
    }

    @Override
    public void close() {
        releaseAllKept();
        closeStackedA();
        for (LoraAdapter a : adapters.values()) a.close();
        adapters.clear();
        if (mergedWeight != null) mergedWeight.close();
        if (!baseShared) base.close();
    }

    private void closeStackedA() {
        if (stackedA != null) stackedA.close();
        stackedA = null;
    }

    private static void close(Tensor... ts) {
        for (Tensor t : ts) if (t != null) t.close();
    }

    @Override
    public String toString() {
        return "LoraLinear(" + path + ", [" + outFeatures() + ", " + inFeatures() + "], adapters=" + adapters.keySet()
                + ", active=" + active + (disabled ? ", disabled" : "") + (merged() ? ", merged=" + mergedAdapters : "") + ")";
    }
}
