package dev.qlora4j.backend.cuda;

import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Objects;

/**
 * A bitsandbytes 4-bit weight [out, in] resident on the GPU: the packed codes and the statistics exactly
 * as {@link QuantState4bit} holds them (nothing is expanded), plus the 16 dequantize factors of the type
 * and the dtype its matmul computes in.
 *
 * <p>Device tensors: packed U8 [(n+1)/2] in the {@link Q4Layout} {@link #layout()} (bitsandbytes' row order, or
 * regrouped into 16-row tiles for the decode GEMV; {@link #toHostState} always gives the row order); absmax F32
 * [blocks], or U8 [blocks] when nested; nestedAbsmax F32 [ceil(blocks / nestedBlocksize)] and nestedCode F32 [256]
 * when nested (else null); code16 F32 [16] ({@link QuantType#dequantValue}). Closing releases them all.
 */
public final class CudaQuant4bit implements QuantizedWeight {
    private final Tensor packed;
    private final Tensor absmax;
    private final Tensor nestedAbsmax;
    private final Tensor nestedCode;
    private final Tensor code16;
    private final float[] nestedCodeHost;   // state2.code, for toHostState
    private final int outFeatures;
    private final int inFeatures;
    private final int blocksize;
    private final int nestedBlocksize;
    private final QuantType quantType;
    private final DType stateDType;
    private final DType computeDType;
    private final float offset;
    private final Q4Layout layout;
    private boolean closed;

    CudaQuant4bit(Tensor packed, Tensor absmax, Tensor nestedAbsmax, Tensor nestedCode, float[] nestedCodeHost,
                  Tensor code16, int outFeatures, int inFeatures, int blocksize, int nestedBlocksize,
                  QuantType quantType, DType stateDType, DType computeDType, float offset) {
        this(packed, absmax, nestedAbsmax, nestedCode, nestedCodeHost, code16, outFeatures, inFeatures, blocksize,
                nestedBlocksize, quantType, stateDType, computeDType, offset, Q4Layout.ROWS);
    }

    CudaQuant4bit(Tensor packed, Tensor absmax, Tensor nestedAbsmax, Tensor nestedCode, float[] nestedCodeHost,
                  Tensor code16, int outFeatures, int inFeatures, int blocksize, int nestedBlocksize,
                  QuantType quantType, DType stateDType, DType computeDType, float offset, Q4Layout layout) {
        if (layout == Q4Layout.TILES && !Q4Layout.tilesApply(outFeatures, inFeatures, blocksize,
                nestedAbsmax != null, nestedBlocksize, computeDType)) {
            throw new IllegalArgumentException("a 4-bit weight [" + outFeatures + ", " + inFeatures + "] cannot have the tile layout");
        }
        this.layout = layout;
        this.packed = Objects.requireNonNull(packed);
        this.absmax = Objects.requireNonNull(absmax);
        this.nestedAbsmax = nestedAbsmax;
        this.nestedCode = nestedCode;
        this.nestedCodeHost = nestedCodeHost;
        this.code16 = Objects.requireNonNull(code16);
        this.outFeatures = outFeatures;
        this.inFeatures = inFeatures;
        this.blocksize = blocksize;
        this.nestedBlocksize = nestedBlocksize;
        this.quantType = quantType;
        this.stateDType = stateDType;
        this.computeDType = computeDType;
        this.offset = nestedAbsmax == null ? 0f : offset;
    }

    @Override public int outFeatures() { return outFeatures; }

    @Override public int inFeatures() { return inFeatures; }

    public long numel() { return (long) outFeatures * inFeatures; }

    public int blocks() { return (int) ((numel() + blocksize - 1) / blocksize); }

    public int blocksize() { return blocksize; }

    public QuantType quantType() { return quantType; }

    /** The dtype the weight had before quantization (QuantState.dtype). */
    public DType stateDType() { return stateDType; }

    /** The dtype its matmul multiplies in (bnb_4bit_compute_dtype). */
    public DType computeDType() { return computeDType; }

    public boolean nested() { return nestedAbsmax != null; }

    public float offset() { return offset; }

    float[] nestedCodeHost() { return nestedCodeHost; }

    /** The order of the packed bytes on the device. */
    public Q4Layout layout() { return layout; }

    /**
     * This weight with its packed bytes replaced by packed (in layout), the statistics moved over: this object is
     * closed afterwards without releasing them, its old packed bytes are released.
     */
    synchronized CudaQuant4bit withPacked(Tensor newPacked, Q4Layout newLayout) {
        live(packed);
        CudaQuant4bit moved = new CudaQuant4bit(newPacked, absmax, nestedAbsmax, nestedCode, nestedCodeHost, code16,
                outFeatures, inFeatures, blocksize, nestedBlocksize, quantType, stateDType, computeDType, offset, newLayout);
        closed = true;
        packed.close();
        return moved;
    }

    public int nestedBlocksize() { return nestedBlocksize; }

    Tensor packed() { return live(packed); }

    Tensor absmax() { return live(absmax); }

    Tensor nestedAbsmax() { return nestedAbsmax == null ? null : live(nestedAbsmax); }

    Tensor nestedCode() { return nestedCode == null ? null : live(nestedCode); }

    Tensor code16() { return live(code16); }

    @Override
    public long deviceBytes() {
        long n = packed.byteSize() + absmax.byteSize() + code16.byteSize();
        if (nestedAbsmax != null) n += nestedAbsmax.byteSize() + nestedCode.byteSize();
        return n;
    }

    /** A host copy as bitsandbytes' QuantState (for checkpoints and for comparing with the CPU reference). */
    public QuantState4bit toHostState(CudaContext ctx) {
        Tensor hostPacked;
        if (layout == Q4Layout.TILES) {
            try (Tensor rows = ctx.empty(DType.U8, Math.toIntExact(packed().numel()))) {
                Quant4bitKernels.tileLayout(ctx, packed, rows, outFeatures, inFeatures, false);
                hostPacked = ctx.download(rows).reshape(Math.toIntExact(packed.numel()), 1);
            }
        } else {
            hostPacked = ctx.download(packed()).reshape(Math.toIntExact(packed.numel()), 1);
        }
        Tensor hostAbsmax = ctx.download(absmax());
        QuantState4bit.Nested state2 = null;
        if (nested()) {
            state2 = new QuantState4bit.Nested(ctx.download(nestedAbsmax()), nestedCodeHost, nestedBlocksize, DType.F32);
        }
        return new QuantState4bit(hostPacked, hostAbsmax, new int[] {outFeatures, inFeatures}, quantType.quantMap(),
                stateDType, blocksize, quantType, offset, state2);
    }

    private Tensor live(Tensor t) {
        if (closed) throw new IllegalStateException("4-bit weight [" + outFeatures + ", " + inFeatures + "] was closed");
        return t;
    }

    @Override
    public synchronized void close() {
        if (closed) return;
        closed = true;
        packed.close();
        absmax.close();
        code16.close();
        if (nestedAbsmax != null) nestedAbsmax.close();
        if (nestedCode != null) nestedCode.close();
    }

    @Override
    public String toString() {
        return "CudaQuant4bit[" + outFeatures + ", " + inFeatures + ", " + quantType.bnbName() + ", blocksize " + blocksize
                + (nested() ? ", nested" : "") + ", " + stateDType + " -> " + computeDType
                + (layout == Q4Layout.TILES ? ", tiles" : "") + "]";
    }
}
