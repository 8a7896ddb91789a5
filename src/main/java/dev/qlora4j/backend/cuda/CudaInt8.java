package dev.qlora4j.backend.cuda;

import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.tensor.Tensor;

import java.util.Objects;

/**
 * An LLM.int8 weight resident on the GPU, as bitsandbytes' Linear8bitLt keeps it: CB I8 [out, in]
 * (row-major) and SCB F32 [out], with the outlier threshold of its matmul (0 = pure int8).
 */
public final class CudaInt8 implements QuantizedWeight {
    private final Tensor cb;
    private final Tensor scb;
    private final float threshold;
    private boolean closed;

    CudaInt8(Tensor cb, Tensor scb, float threshold) {
        this.cb = Objects.requireNonNull(cb);
        this.scb = Objects.requireNonNull(scb);
        this.threshold = threshold;
    }

    @Override public int outFeatures() { return cb.dim(0); }

    @Override public int inFeatures() { return cb.dim(1); }

    public float threshold() { return threshold; }

    Tensor cb() { return live(cb); }

    Tensor scb() { return live(scb); }

    @Override public long deviceBytes() { return cb.byteSize() + scb.byteSize(); }

    private Tensor live(Tensor t) {
        if (closed) throw new IllegalStateException("int8 weight [" + outFeatures() + ", " + inFeatures() + "] was closed");
        return t;
    }

    @Override
    public synchronized void close() {
        if (closed) return;
        closed = true;
        cb.close();
        scb.close();
    }

    @Override
    public String toString() {
        return "CudaInt8[" + outFeatures() + ", " + inFeatures() + ", threshold " + threshold + "]";
    }
}
