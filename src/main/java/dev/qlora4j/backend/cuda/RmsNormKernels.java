package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/** Launcher of native/rmsnorm.cu: one block of 256 threads per row, 16-byte loads when the row allows. */
final class RmsNormKernels {
    private RmsNormKernels() {}

    static final int THREADS = 256;

    /** Rows from which the norm kernels run narrower blocks ({@link #rowThreads}). */
    static final int MANY_ROWS = 256;

    /**
     * Threads per row (one block each) for the row-wise norm kernels (rmsnorm_fwd, add_rmsnorm, rmsnorm_bwd) on rows
     * of h elements of act: {@link #THREADS} for a few rows (a decode step: eight warps finish one row soonest); for
     * {@link #MANY_ROWS} or more (training, prefill) a quarter of the row's 16-byte packs, rounded up to whole warps,
     * between 32 and THREADS, so each thread holds four packs (the register-held paths' limit). Why: those kernels take
     * 86-106 registers a thread, so at 256 threads two rows fit on an SM; at 128 (BF16, h 4,096) four do, and the SM
     * has twice the loads in flight (Llama-7B step, session 15). The block sums then add in another order: results
     * move by float32 rounding.
     */
    static int rowThreads(int n, int h, DType act) {
        if (n < MANY_ROWS) return THREADS;
        long packs = ((long) h * act.byteSize() + 15) / 16;
        long warps = (packs + 4 * 32 - 1) / (4 * 32);
        return (int) Math.max(32, Math.min(THREADS, 32 * warps));
    }

    /**
     * x [n, h] in act, weight [h] (F32/BF16/F16) -> the norm in act, in the first h columns of a new [n, width] tensor
     * (width >= h; width = h for the plain norm), the columns [h, width) zero: x's norm as the first block of a wider
     * buffer (the LoRA fold's [x | H]).
     */
    static Tensor rmsNorm(CudaContext ctx, DType act, Tensor x, Tensor weight, float eps, int width) {
        KernelTypes.requireRank(x, 2, "rmsNorm x");
        KernelTypes.requireDevice(weight, "rmsNorm weight");
        KernelTypes.requireRank(weight, 1, "rmsNorm weight");
        int n = x.dim(0), h = x.dim(1);
        if (weight.dim(0) != h) {
            throw new IllegalArgumentException("rmsNorm: x " + KernelTypes.shape(x) + " and weight "
                    + KernelTypes.shape(weight) + " disagree on the hidden size");
        }
        if (x.dtype() != act) throw new IllegalArgumentException("rmsNorm x must be " + act + ", got " + x.dtype());
        if (width < h) throw new IllegalArgumentException("rmsNorm: an output " + width + " wide cannot hold rows of " + h);
        String kernel = "rmsnorm_fwd_" + KernelTypes.act(act) + "_" + KernelTypes.weight(weight, "rmsNorm weight");
        Tensor out = ctx.empty(act, n, width);
        if (n == 0) return out;
        int pack = 16 / act.byteSize();
        int vec = h % pack == 0 && width % pack == 0 ? 1 : 0;
        ctx.launch(ctx.function("rmsnorm", kernel), Dim3.of(n), Dim3.of(rowThreads(n, h, act)), 0,
                KernelArgs.of().ptr(KernelTypes.aligned16(x)).ptr(CudaContext.ptr(weight)).ptr(KernelTypes.aligned16(out))
                        .i32(h).f32(eps).i32(vec).i64(width));
        return out;
    }
}
