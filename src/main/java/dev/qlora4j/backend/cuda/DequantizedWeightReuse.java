package dev.qlora4j.backend.cuda;

import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.Map;

/**
 * The dequantized 4-bit weights a checkpointed layer's recompute made, kept for that layer's backward
 * (CudaBackend.beginWeightReuse / endWeightReuse): the prefill path of {@link CudaQuantOps#linear} hands its
 * workspace wc [out, in] here instead of closing it (and a later forward of the same weight in the scope uses it),
 * and linearQuantizedBackwardInput takes it instead of dequantizing the same weight again.
 *
 * <p>Kept only when it is bit for bit what the backward's dequantize would make: wc in the activation dtype (the
 * backward dequantizes to it) and dequantized through float32 (mid F32: the value rounded once, as the backward
 * rounds it). A weight whose state dtype is a 16-bit type other than the compute dtype (mid = that type, a second
 * rounding) is not kept; neither is one whose compute dtype is not the activation dtype.
 *
 * <p>Keys are weight identities: a scope spans one layer's recompute and backward, during which its weights stay
 * the same objects (weight offload swaps them only outside). Not thread-safe (one model step at a time, as the
 * backend). Kept tensors are device memory in flight on the backend's one stream: closing them after the kernels
 * that read them were queued is as safe as closing any temporary.
 */
final class DequantizedWeightReuse {
    private final DType act;
    private final Map<QuantizedWeight, Tensor> kept = new IdentityHashMap<>(); // weight -> wc [out, in] in act
    private boolean open;
    private long reused;    // backward dequantizations saved since construction (tests read it)

    DequantizedWeightReuse(DType activations) {
        this.act = activations;
    }

    /** Opens a scope. A scope already open is a caller error (scopes do not nest): its tensors would be freed early. */
    void begin() {
        if (open) {
            throw new IllegalStateException("beginWeightReuse: a weight-reuse scope is already open on this backend; "
                    + "call endWeightReuse first (scopes do not nest)");
        }
        open = true;
    }

    /** Closes the scope and every tensor still kept. Harmless when no scope is open (finally blocks). */
    void end() {
        open = false;
        if (kept.isEmpty()) return;
        ArrayList<Tensor> ts = new ArrayList<>(kept.values());
        kept.clear();
        RuntimeException first = null;
        for (Tensor t : ts) {
            try {
                t.close();
            } catch (RuntimeException e) { // close the rest regardless
                if (first == null) first = e;
                else first.addSuppressed(e);
            }
        }
        if (first != null) throw first;
    }

    boolean isOpen() { return open; }

    /**
     * Whether the prefill linear of w should hand over its wc (dtype wcDType, dequantized through mid): a scope is
     * open, nothing is kept for w yet, and wc holds exactly the backward's dequantize ({@link #reusable}).
     */
    boolean wants(QuantizedWeight w, DType wcDType, DType mid) {
        return open && reusable(act, wcDType, mid) && !kept.containsKey(w);
    }

    /**
     * Whether a weight dequantized to wcDType through mid equals, bit for bit, the backward's dequantize to act
     * (through float32): the same dtype and no intermediate rounding.
     */
    static boolean reusable(DType act, DType wcDType, DType mid) {
        return wcDType == act && mid == DType.F32;
    }

    /**
     * The kept dequantized w, still owned by the scope, when a forward of w dequantizing to wcDType through mid would
     * make these very bits (a second forward of the weight in the scope: the LoRA backward's generic path re-runs its
     * base), else null.
     */
    Tensor peek(QuantizedWeight w, DType wcDType, DType mid) {
        return open && reusable(act, wcDType, mid) ? kept.get(w) : null;
    }

    /** Keeps wc [out, in] for w (after {@link #wants} said yes); from now on this scope owns (and closes) it. */
    void keep(QuantizedWeight w, Tensor wc) {
        if (!open || wc.dtype() != act || kept.containsKey(w)) {
            throw new IllegalStateException("keep: " + w + " is not wanted (no open scope, " + wc.dtype()
                    + " is not the activation dtype " + act + ", or it is kept already): call wants first");
        }
        kept.put(w, wc);
    }

    /**
     * The kept dequantized w, removed from the scope (the caller closes it: a weight's grad_x is computed once per
     * backward, and freeing it then lowers the backward's peak), or null when none is kept.
     */
    Tensor take(QuantizedWeight w) {
        Tensor t = kept.remove(w);
        if (t != null) reused++;
        return t;
    }

    /** Backward dequantizations replaced by kept tensors so far. */
    long reused() { return reused; }

    /** Tensors kept now (for tests). */
    int keptCount() { return kept.size(); }
}
