package dev.qlora4j.peft;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.nn.Linear;
import dev.qlora4j.optim.Param;
import dev.qlora4j.tensor.Tensor;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * peft's ModulesToSaveWrapper for a linear module: the frozen original plus one trainable float32
 * copy per adapter; the active adapter's copy runs, or the original when adapters are disabled or
 * the active adapter has no copy here.
 */
public final class ModulesToSaveLinear implements Linear {
    private final String path;
    private final Linear original;
    private final boolean originalShared;   // the original's weight is the (tied) embedding
    private final Map<String, TrainableDense> copies = new LinkedHashMap<>();
    private String active;
    private boolean disabled;

    ModulesToSaveLinear(String path, Linear original, boolean originalShared) {
        this.path = path;
        this.original = original;
        this.originalShared = originalShared;
    }

    public String path() { return path; }

    public Linear original() { return original; }

    void put(String adapter, TrainableDense copy) {
        if (copy.inFeatures() != original.inFeatures() || copy.outFeatures() != original.outFeatures()) {
            throw new IllegalArgumentException(path + ": modules_to_save copy for '" + adapter + "' is [" + copy.outFeatures() + ", "
                    + copy.inFeatures() + "] but the module is [" + original.outFeatures() + ", " + original.inFeatures() + "]");
        }
        TrainableDense old = copies.put(adapter, copy);
        if (old != null) old.close();
    }

    public TrainableDense copy(String adapter) { return copies.get(adapter); }

    boolean has(String adapter) { return copies.containsKey(adapter); }

    void remove(String adapter) {
        TrainableDense c = copies.remove(adapter);
        if (c != null) c.close();
        if (adapter.equals(active)) active = null;
    }

    void setActive(String adapter) { this.active = adapter; }

    void setDisabled(boolean disabled) { this.disabled = disabled; }

    private Linear current() {
        if (disabled || active == null) return original;
        TrainableDense c = copies.get(active);
        return c == null ? original : c;
    }

    @Override public Tensor forward(Backend b, Tensor x) { return current().forward(b, x); }

    @Override public Tensor backward(Backend b, Tensor x, Tensor gradOut) { return current().backward(b, x, gradOut); }

    @Override public List<Param> trainableParameters() { return current().trainableParameters(); }

    long copiesNumel() {
        long n = 0;
        for (TrainableDense c : copies.values()) n += c.numel();
        return n;
    }

    void zeroGrad() { copies.values().forEach(TrainableDense::zeroGrad); }

    /** The active copy, detached from this wrapper (merge_and_unload), or the original when none is active. */
    Linear unload() {
        Linear keep = current();
        for (Map.Entry<String, TrainableDense> e : copies.entrySet()) if (e.getValue() != keep) e.getValue().close();
        copies.clear();
        if (keep != original && !originalShared) original.close();
        return keep;
    }

    @Override public int inFeatures() { return original.inFeatures(); }

    @Override public int outFeatures() { return original.outFeatures(); }

    @Override
    public long weightBytes() {
        long n = originalShared ? 0 : original.weightBytes();
        for (TrainableDense c : copies.values()) n += c.weightBytes();
        return n;
    }

    @Override
    public void close() {
        copies.values().forEach(TrainableDense::close);
        copies.clear();
        if (!originalShared) original.close();
    }
}
