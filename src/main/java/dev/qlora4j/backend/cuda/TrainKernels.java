package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.lang.foreign.MemorySegment;

/**
 * Launchers of the training step's element-wise, per-row and reduction kernels: native/train_elementwise.cu,
 * norm_bwd.cu and xent_grad.cu. Tensors passed here are already on the device in the dtype the kernel name
 * says (the backend casts first); gradient accumulators are F32.
 */
final class TrainKernels {
    private TrainKernels() {}

    private static final String EW = "train_elementwise";
    /** Blocks of the float64 sum-of-squares partials: fixed, so the result does not depend on the GPU. */
    static final int SQUARES_BLOCKS = 256;

    /** out = a * s; out may be a (in place). a and out of dtype t (F32 or BF16). */
    static void scale(CudaContext ctx, Tensor a, float s, Tensor out) {
        long n = a.numel();
        if (n == 0) return;
        ctx.launch1d(ctx.function(EW, "scale_" + KernelTypes.act(a.dtype())), n,
                KernelArgs.of().ptr(CudaContext.ptr(a)).f32(s).ptr(CudaContext.ptr(out)).i64(n));
    }

    static void mul(CudaContext ctx, DType act, Tensor a, Tensor b, Tensor out) {
        long n = a.numel();
        if (n == 0) return;
        ctx.launch1d(ctx.function(EW, "mul_" + KernelTypes.act(act)), n,
                KernelArgs.of().ptr(CudaContext.ptr(a)).ptr(CudaContext.ptr(b)).ptr(CudaContext.ptr(out)).i64(n));
    }

    /** a += alpha * b, a and b of a's dtype (F32 or BF16). */
    static void axpy(CudaContext ctx, Tensor a, float alpha, Tensor b) {
        long n = a.numel();
        if (n == 0) return;
        ctx.launch1d(ctx.function(EW, "axpy_" + KernelTypes.act(a.dtype())), n,
                KernelArgs.of().ptr(CudaContext.ptr(a)).f32(alpha).ptr(CudaContext.ptr(b)).i64(n));
    }

    /** Queues the float64 partial sums of squares of a (F32 or BF16) into partials[SQUARES_BLOCKS] at the given slot. */
    static void sumOfSquaresPartials(CudaContext ctx, Tensor a, long partialsPointer) {
        long n = a.numel();
        ctx.launch(ctx.function(EW, "sum_squares_" + KernelTypes.act(a.dtype())), Dim3.of(SQUARES_BLOCKS),
                Dim3.of(256), 0, KernelArgs.of().ptr(CudaContext.ptr(a)).i64(n).ptr(partialsPointer));
    }

    /** The sums of squares of each tensor, in float64, with one download for all of them. */
    static double[] sumsOfSquares(CudaContext ctx, java.util.List<Tensor> tensors) {
        double[] out = new double[tensors.size()];
        if (tensors.isEmpty()) return out;
        try (Tensor partials = ctx.empty(DType.F64, tensors.size() * SQUARES_BLOCKS)) {
            long base = CudaContext.ptr(partials);
            for (int i = 0; i < tensors.size(); i++) sumOfSquaresPartials(ctx, tensors.get(i), base + 8L * i * SQUARES_BLOCKS);
            double[] host = new double[tensors.size() * SQUARES_BLOCKS];
            ctx.synchronize();
            ctx.driver().copyToHost(MemorySegment.ofArray(host), base);
            for (int i = 0; i < out.length; i++) {
                double s = 0;
                for (int j = 0; j < SQUARES_BLOCKS; j++) s += host[i * SQUARES_BLOCKS + j];
                out[i] = s;
            }
        }
        return out;
    }

    /** Dropout with the mask of backend/cpu/Dropout (threshold and scale computed here exactly as there). */
    static void dropout(CudaContext ctx, DType act, Tensor x, float p, long seed, Tensor out) {
        long n = x.numel();
        if (n == 0) return;
        int threshold = (int) (p * 16777216.0f);
        float scale = 1.0f / (1.0f - p);
        ctx.launch1d(ctx.function(EW, "dropout_" + KernelTypes.act(act)), n,
                KernelArgs.of().ptr(CudaContext.ptr(x)).ptr(CudaContext.ptr(out)).i64(n).i64(seed).i32(threshold).f32(scale));
    }

    static Tensor rowNorms(CudaContext ctx, DType act, Tensor x) {
        int n = x.dim(0), h = x.dim(1);
        Tensor out = ctx.empty(DType.F32, n);
        if (n == 0) return out;
        ctx.launch(ctx.function(EW, "row_norms_" + KernelTypes.act(act)), Dim3.of(n), Dim3.of(256), 0,
                KernelArgs.of().ptr(CudaContext.ptr(x)).ptr(CudaContext.ptr(out)).i32(h));
        return out;
    }

    /** x [n, m] (act) times s F32 [m] per column. */
    static Tensor scaleColumns(CudaContext ctx, DType act, Tensor x, Tensor s) {
        int n = x.dim(0), m = x.dim(1);
        Tensor out = ctx.empty(act, n, m);
        if (x.numel() == 0) return out;
        ctx.launch1d(ctx.function(EW, "scale_columns_" + KernelTypes.act(act)), x.numel(),
                KernelArgs.of().ptr(CudaContext.ptr(x)).ptr(CudaContext.ptr(s)).ptr(CudaContext.ptr(out)).i32(n).i32(m));
        return out;
    }

    /** x [n, m] (F32 or BF16) -> [m, n] of the same dtype. */
    static Tensor transpose(CudaContext ctx, Tensor x) {
        int n = x.dim(0), m = x.dim(1);
        Tensor out = ctx.empty(x.dtype(), m, n);
        if (x.numel() == 0) return out;
        ctx.launch(ctx.function(EW, "transpose_" + KernelTypes.act(x.dtype())), Dim3.of((m + 31) / 32, (n + 31) / 32),
                Dim3.of(32, 8), 0, KernelArgs.of().ptr(CudaContext.ptr(x)).ptr(CudaContext.ptr(out)).i32(n).i32(m));
        return out;
    }

    /** gb F32 [m] += column sums of g [n, m] (act). */
    static void sumRowsInto(CudaContext ctx, DType act, Tensor g, Tensor gb) {
        int n = g.dim(0), m = g.dim(1);
        if (m == 0 || n == 0) return;
        ctx.launch1d(ctx.function(EW, "sum_rows_" + KernelTypes.act(act)), m,
                KernelArgs.of().ptr(CudaContext.ptr(g)).ptr(CudaContext.ptr(gb)).i32(n).i32(m));
    }

    static Tensor[] siluMulBackward(CudaContext ctx, DType act, Tensor gate, Tensor up, Tensor g) {
        Tensor gg = ctx.empty(act, gate.shape()), gu = ctx.empty(act, gate.shape());
        siluMulBackwardInto(ctx, act, gate, up, g, gg, gu);
        return new Tensor[] {gg, gu};
    }

    /**
     * grad_gate, grad_up (act, gate's shape) from gate, up, g; the outputs may be gate and up themselves (each
     * element is read before it is written, by the same thread).
     */
    static void siluMulBackwardInto(CudaContext ctx, DType act, Tensor gate, Tensor up, Tensor g, Tensor gradGate,
                                    Tensor gradUp) {
        long n = gate.numel();
        if (n > 0) {
            ctx.launch1d(ctx.function(EW, "silu_mul_bwd_" + KernelTypes.act(act)), n,
                    KernelArgs.of().ptr(CudaContext.ptr(gate)).ptr(CudaContext.ptr(up)).ptr(CudaContext.ptr(g))
                            .ptr(CudaContext.ptr(gradGate)).ptr(CudaContext.ptr(gradUp)).i64(n)
                            .i32(allAligned16(gate, up, g, gradGate, gradUp) ? 1 : 0));
        }
    }

    /**
     * gu [rows, 2 cols] (gate's columns, then up's) := [grad_gate | grad_up] for g [rows, cols]: the gradients
     * {@link #siluMulBackwardInto} gives, element for element, written over the forward's values.
     */
    static void siluMulHalvesBackwardInPlace(CudaContext ctx, DType act, Tensor gu, Tensor g) {
        int rows = g.dim(0), cols = g.dim(1);
        if ((long) rows * cols == 0) return;
        ctx.launch1d(ctx.function(EW, "silu_mul_halves_bwd_" + KernelTypes.act(act)), (long) rows * cols,
                KernelArgs.of().ptr(CudaContext.ptr(gu)).ptr(CudaContext.ptr(g)).i64(rows).i32(cols)
                        .i32(ElementwiseKernels.halvesPacked(act, cols, gu, g) ? 1 : 0));
    }

    /** Whether every tensor starts at a 16-byte boundary (views into a larger buffer may not). */
    private static boolean allAligned16(Tensor... ts) {
        for (Tensor t : ts) if ((CudaContext.ptr(t) & 15) != 0) return false;
        return true;
    }

    /** grad [n, heads*headDim] of act, positions I32 [n], invFreq F32 [headDim/2]; in place. */
    static void ropeBackward(CudaContext ctx, DType act, Tensor grad, Tensor positions, Tensor invFreq, int heads,
                             int headDim, float scaling) {
        int n = grad.dim(0);
        long pairs = (long) n * (headDim / 2);
        if (pairs == 0) return;
        ctx.launch1d(ctx.function(EW, "rope_bwd_" + KernelTypes.act(act)), pairs,
                KernelArgs.of().ptr(CudaContext.ptr(grad)).ptr(CudaContext.ptr(positions)).ptr(CudaContext.ptr(invFreq))
                        .i32(n).i32(heads).i32(headDim).f32(scaling));
    }

    /** table F32 [vocab, h] += rows of g [n, h] (act) at ids I32 [n]; bad ids go to status. */
    static void embeddingBackward(CudaContext ctx, DType act, Tensor ids, Tensor g, Tensor table, DeviceStatus status) {
        int n = g.dim(0), h = g.dim(1), vocab = table.dim(0);
        if (g.numel() == 0) return;
        ctx.launch1d(ctx.function(EW, "embedding_bwd_" + KernelTypes.act(act)), g.numel(),
                KernelArgs.of().ptr(CudaContext.ptr(ids)).ptr(CudaContext.ptr(g)).ptr(CudaContext.ptr(table))
                        .i32(n).i32(h).i32(vocab).ptr(status.pointer()));
    }

    /**
     * RMSNorm backward; accumulates into gradWeight (F32 [h]) when not null; adds addend ([n, h] of act, or null) to
     * grad_x as it is stored (round(act, round(act, gx) + addend): the bits of a separate add). g may be wider than
     * x ([n, ldg], ldg >= h): its first h columns are the gradient (a joined input gradient's buffer).
     */
    static Tensor rmsNormBackward(CudaContext ctx, DType act, Tensor x, Tensor weight, float eps, Tensor g,
                                  Tensor gradWeight, Tensor addend) {
        int n = x.dim(0), h = x.dim(1);
        long ldg = g.dim(1);
        Tensor gx = ctx.empty(act, n, h);
        if (n == 0) return gx;
        Tensor inv = gradWeight == null ? null : ctx.empty(DType.F32, n);
        try {
            String kernel = "rmsnorm_bwd_" + KernelTypes.act(act) + "_" + KernelTypes.weight(weight, "rmsNormBackward weight");
            ctx.launch(ctx.function("norm_bwd", kernel), Dim3.of(n), Dim3.of(RmsNormKernels.rowThreads(n, h, act)), 0,
                    KernelArgs.of().ptr(CudaContext.ptr(x)).ptr(CudaContext.ptr(weight)).f32(eps).ptr(CudaContext.ptr(g))
                            .ptr(CudaContext.ptr(gx)).ptr(CudaContext.ptrOrNull(inv)).i32(h)
                            .ptr(CudaContext.ptrOrNull(addend)).i64(ldg));
            if (gradWeight != null) {
                ctx.launch1d(ctx.function("norm_bwd", "rmsnorm_bwd_weight_" + KernelTypes.act(act)), h,
                        KernelArgs.of().ptr(CudaContext.ptr(x)).ptr(CudaContext.ptr(g)).ptr(CudaContext.ptr(inv))
                                .ptr(CudaContext.ptr(gradWeight)).i32(n).i32(h).i64(ldg));
            }
        } finally {
            if (inv != null) inv.close();
        }
        return gx;
    }

    /** {losses F32 [n], grad [n, vocab] of act}. */
    static Tensor[] crossEntropyWithGrad(CudaContext ctx, DType act, Tensor logits, Tensor targets, float gradScale,
                                         DeviceStatus status) {
        int n = logits.dim(0), vocab = logits.dim(1);
        Tensor loss = ctx.empty(DType.F32, n), grad = ctx.empty(act, n, vocab);
        if (n > 0) {
            ctx.launch(ctx.function("xent_grad", "xent_grad_" + KernelTypes.act(act)), Dim3.of(n), Dim3.of(256), 0,
                    KernelArgs.of().ptr(CudaContext.ptr(logits)).ptr(CudaContext.ptr(targets)).ptr(CudaContext.ptr(loss))
                            .ptr(CudaContext.ptr(grad)).i32(vocab).f32(gradScale).ptr(status.pointer()));
        }
        return new Tensor[] {loss, grad};
    }
}
