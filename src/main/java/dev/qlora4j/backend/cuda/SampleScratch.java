package dev.qlora4j.backend.cuda;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/**
 * Device memory of native/sampling.cu's sampling kernels for up to rows x vocab logits: each row's order keys
 * (I32 [rows, vocab]) and probabilities (F64 [rows, vocab]), overwritten by every launch, and the first pass's counts
 * of the keys' top bits (I32 [rows, BINS]) and largest key (I32 [rows]), which start at zero and which the kernels
 * leave at zero.
 */
final class SampleScratch implements AutoCloseable {
    /** native/sampling.cu's SAMPLE_BINS. */
    static final int BINS = 4096;

    final int rows;
    final int vocab;
    final Tensor keys;
    final Tensor masses;
    final Tensor hist;
    final Tensor maxKey;

    SampleScratch(CudaContext ctx, int rows, int vocab) {
        this.rows = rows;
        this.vocab = vocab;
        this.keys = ctx.empty(DType.I32, rows, vocab);
        this.masses = ctx.empty(DType.F64, rows, vocab);
        this.hist = ctx.empty(DType.I32, rows, BINS);
        this.maxKey = ctx.empty(DType.I32, rows);
        ctx.driver().memsetD8Async(CudaContext.ptr(hist), (byte) 0, hist.byteSize(), ctx.stream());
        ctx.driver().memsetD8Async(CudaContext.ptr(maxKey), (byte) 0, maxKey.byteSize(), ctx.stream());
    }

    @Override
    public void close() {
        keys.close();
        masses.close();
        hist.close();
        maxKey.close();
    }
}
