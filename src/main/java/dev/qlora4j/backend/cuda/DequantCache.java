package dev.qlora4j.backend.cuda;

import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Collections;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * 4-bit weights dequantized by a checkpointed layer's recompute, kept for that layer's backward: under gradient
 * checkpointing the recompute forward of layer i and the backward of layer i follow each other, and both dequantize
 * every base weight of the layer (the forward for x W^T, the backward for gy W). While the cache is open (the model
 * opens it around one layer's recompute and backward: Backend#keepDequantizedWeights, unless
 * TransformerLM.setCheckpointKeepDequantized(false) / --no-checkpoint-keep-dequantized) the forward's dequantized
 * buffers are kept here instead of freed, and the backward multiplies with them: one dequantize per weight instead
 * of two (down_proj excepted: the recompute does not run it). Llama-7B, seq 2048, H200: 192 fewer dequantizes per
 * step, 181.3 / 181.8 ms instead of 185.9 / 186.5, peak 5.89 GiB instead of 5.64 (~0.4 GiB: one layer's weights in
 * BF16). At most {@link #budgetBytes} more device memory; closing frees them (stream-ordered, like every temporary).
 *
 * <p>An entry is the weight's values as a row-major matrix in the first in columns of rows of stride ld (the LoRA
 * fold's buffers carry the adapter's columns after them), from a first row on (a joined group's weights share one
 * buffer, one block of rows each), rounded to dtype through float32 only (the forward's state-dtype rounding must
 * be the backward's: a weight rounded through another dtype is not kept).
 */
final class DequantCache {
    /** -Dqlora4j.cuda.dequantCacheMiB: the most memory the kept weights of one layer may take (default 512; 0 turns it off). */
    static final String BUDGET_PROPERTY = "qlora4j.cuda.dequantCacheMiB";

    /** A kept weight: rows [row, row + out) of buffer [rows, ld] of dtype, the weight in columns [0, in). */
    record Entry(Tensor buffer, int ld, int row) {
        /** The device address of the weight's first value. */
        long pointer() { return CudaContext.ptr(buffer) + (long) row * ld * buffer.dtype().byteSize(); }
    }

    private final Map<QuantizedWeight, Entry> entries = new IdentityHashMap<>();
    private boolean open;
    private long bytes;

    /** The budget in bytes (read at each offer, so tests and A/B runs may change it). */
    static long budgetBytes() {
        long mib = Long.getLong(BUDGET_PROPERTY, 512L);
        if (mib < 0) throw new IllegalArgumentException("-D" + BUDGET_PROPERTY + "=" + mib + ": use a size in MiB, 0 to turn it off");
        return mib << 20;
    }

    /** Starts keeping (no-op when already open). */
    void open() { open = true; }

    /** Stops keeping and frees every kept buffer (a shared one once). */
    void close() {
        open = false;
        Set<Tensor> buffers = Collections.newSetFromMap(new IdentityHashMap<>());
        for (Entry e : entries.values()) if (buffers.add(e.buffer())) e.buffer().close();
        entries.clear();
        bytes = 0;
    }

    boolean isOpen() { return open; }

    /**
     * Keeps buffer (ownership passes here) as w's dequantized values when the cache is open, the values went through
     * float32 only (rounding F32: what the backward's own dequantize gives), the weight is not kept yet and the budget
     * allows; else returns false and the caller still owns (and closes) it.
     */
    boolean offer(QuantizedWeight w, Tensor buffer, int ld, DType rounding) {
        return offerStack(List.of(w), buffer, ld, rounding);
    }

    /**
     * {@link #offer} for weights stacked in one buffer in list order (ws.get(0)'s rows first, each block
     * out_features rows): all of them kept, or none (false: the caller still owns the buffer).
     */
    boolean offerStack(List<? extends QuantizedWeight> ws, Tensor buffer, int ld, DType rounding) {
        if (!open || rounding != DType.F32 || bytes + buffer.byteSize() > budgetBytes()) return false;
        for (QuantizedWeight w : ws) if (entries.containsKey(w)) return false;
        int row = 0;
        for (QuantizedWeight w : ws) {
            entries.put(w, new Entry(buffer, ld, row));
            row += w.outFeatures();
        }
        bytes += buffer.byteSize();
        return true;
    }

    /** w's kept values in dtype, or null. */
    Entry get(QuantizedWeight w, DType dtype) {
        Entry e = entries.get(w);
        return e != null && e.buffer().dtype() == dtype ? e : null;
    }

    /**
     * The kept entry of ws.get(0) when every weight of ws is kept in dtype in one buffer, stacked in list order
     * (one stride, each block right after the one before): the stack a joined product reads as one matrix; else null.
     */
    Entry getStack(List<? extends QuantizedWeight> ws, DType dtype) {
        Entry first = get(ws.get(0), dtype);
        if (first == null) return null;
        int row = first.row();
        for (QuantizedWeight w : ws) {
            Entry e = get(w, dtype);
            if (e == null || e.buffer() != first.buffer() || e.ld() != first.ld() || e.row() != row) return null;
            row += w.outFeatures();
        }
        return first;
    }

    /** Bytes held now. */
    long bytes() { return bytes; }
}
