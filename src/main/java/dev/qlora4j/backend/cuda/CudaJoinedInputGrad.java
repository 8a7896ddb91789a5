package dev.qlora4j.backend.cuda;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.List;

import static dev.qlora4j.backend.cuda.CudaLora.BF;
import static dev.qlora4j.backend.cuda.CudaLora.gemm;
import static dev.qlora4j.backend.cuda.CudaLora.requireGx;

/**
 * The input gradient of 4-bit base layers that read the same x, for output gradients held as one buffer
 * G [n, sum out_i] (layer i's columns after layer i-1's: {@link CudaLoraFold#forwardJoined}'s layout):
 * <pre>
 *   gx (+)= G [W_0; W_1; ...]      ONE GEMM with k = sum out_i
 * </pre>
 * The stacked weight is the one a checkpointed recompute kept ({@link DequantCache#getStack}: the fold's buffer,
 * rows of stride in + R) or is dequantized here, each layer into its block of rows of one temporary [sum out_i, in].
 * Why: one GEMM per layer accumulating onto gx reads and writes gx once more per layer and runs a launch's tail per
 * layer; the joined one measured 2% (gate/up) and 6.6% (q/k/v) faster on Llama-7B shapes (H200, bench/RESULTS.md,
 * session 17).
 *
 * <p>Numerics: every layer's products summed in the GEMM's float32 accumulator and rounded to BF16 once (per layer:
 * rounded after each layer's GEMM, then added onto by the next).
 */
public final class CudaJoinedInputGrad {
    private CudaJoinedInputGrad() {}

    /** gx [n, in] BF16 (+)= g [n, sum out_i] BF16 [W_0; W_1; ...] for the BF16-computing 4-bit weights ws (all in_features in). */
    public static void into(CudaBackend b, Tensor gx, boolean accumulate, Tensor g, List<CudaQuant4bit> ws) {
        int n = g.dim(0), total = 0, in = gx.dim(1);
        for (CudaQuant4bit w : ws) {
            if (w.inFeatures() != in || w.computeDType() != DType.BF16) {
                throw new IllegalArgumentException("joined input gradient: every weight must compute in BF16 and take "
                        + in + " features, got " + w.inFeatures() + " in " + w.computeDType());
            }
            total += w.outFeatures();
        }
        KernelTypes.requireDevice(g, "joined input gradient G");
        if (g.dtype() != DType.BF16 || g.rank() != 2 || g.dim(1) != total) {
            throw new IllegalArgumentException("joined input gradient: G must be BF16 [n, " + total + "] (the layers' output "
                    + "gradients side by side), got " + g);
        }
        requireGx(gx, n, in);
        if (n == 0) return;
        // the recompute's joined fold buffer at any stride (the weights are the first in columns of its rows)
        stackedProduct(b, gx, accumulate ? 1f : 0f, g, ws, total, true, (ctx, prof, stack) -> {
            int row = 0;
            for (CudaQuant4bit w : ws) {
                int dq = prof == null ? -1 : prof.begin();
                // float32 only between the code and BF16: the values of the per-layer backward's dequantize
                Quant4bitKernels.dequantizeRows(ctx, w, stack + 2L * row * in, in, DType.F32);
                if (dq >= 0) prof.end("linearQuantizedBackwardInput/dequantize", dq);
                row += w.outFeatures();
            }
        });
    }

    /**
     * -Dqlora4j.cuda.ghInGemm=false: the joined group's backward forms GH by its own skinny GEMMs (CudaLoraGroupBackward
     * on the side stream) and grad_x by {@link #into}, not {@link #intoWide}; for A/B runs.
     */
    public static final String WIDE_PROPERTY = "qlora4j.cuda.ghInGemm";

    /** Whether {@link #intoWide} is on ({@link #WIDE_PROPERTY}, default true). */
    public static boolean wideOn() { return Switches.on(WIDE_PROPERTY, true); }

    /** The width of {@link #intoWide}'s result for x's in features and adapters of total rank: in + the fold's padded H width. */
    public static int wideColumns(int in, int rank) { return in + CudaLoraFold.paddedRank(rank); }

    /**
     * The bases' input gradient and the adapters' GH from ONE GEMM over the fold's weights W'_i = [W_i | 0 .. s_i B_i
     * .. 0] ({@link CudaLoraFold}'s layout, s_i B_i in layer i's block of the padded H columns):
     * <pre>
     *   wide [n, in + P] = g [n, sum out_i] [W'_0; W'_1; ...]
     *   columns [0, in):                   sum_i g_i W_i                    (the bases' grad_x)
     *   columns [in + c_i, in + c_i + r_i): g_i s_i B_i = GH_i              (c_i: layer i's first H column)
     * </pre>
     * Why: GH_i = s_i g_i B_i on its own is a skinny GEMM that reads all of g_i again (Llama-7B: 48 MB for q/k/v, 90 MB
     * for gate/up per layer); here it costs P more output columns of a GEMM that reads g anyway (probe,
     * native/bench/gh_in_gemm_probe.cu: 26-35 us a layer and group on an H200, bench RESULTS session 18). The
     * weights are the checkpointed recompute's kept fold buffer when there is one, else dequantized and filled here.
     *
     * <p>Numerics: GH_i uses s_i B_i rounded to BF16 from the F32 master, as the fold's forward (the separate GEMM
     * applies s_i in float32 to B_i's BF16 copy: the same values when s_i is a power of two).
     *
     * @param wide     BF16 [n, {@link #wideColumns}(in, sum r_i)], written (all columns)
     * @param bMasters per layer lora_B's F32 master [out_i, r_i]
     */
    public static void intoWide(CudaBackend b, Tensor wide, Tensor g, List<CudaQuant4bit> ws, Tensor[] bMasters,
                                float[] scalings) {
        int n = g.dim(0), total = 0, rank = 0;
        if (bMasters.length != ws.size() || scalings.length != ws.size()) {
            throw new IllegalArgumentException("joined input gradient: " + ws.size() + " bases need as many lora_B and scalings");
        }
        for (int i = 0; i < ws.size(); i++) {
            total += ws.get(i).outFeatures();
            rank += bMasters[i].dim(1);
        }
        int in = ws.getFirst().inFeatures(), padded = CudaLoraFold.paddedRank(rank), ld = in + padded;
        KernelTypes.requireDevice(wide, "joined input gradient output");
        if (wide.dtype() != DType.BF16 || wide.rank() != 2 || wide.dim(0) != n || wide.dim(1) != ld) {
            throw new IllegalArgumentException("joined input gradient: the output must be BF16 [" + n + ", " + ld
                    + "] (grad_x and the adapters' GH side by side), got " + wide);
        }
        if (g.dtype() != DType.BF16 || g.rank() != 2 || g.dim(1) != total) {
            throw new IllegalArgumentException("joined input gradient: G must be BF16 [n, " + total + "], got " + g);
        }
        if (n == 0) return;
        // the recompute's fold buffer only when it is exactly W' (its stride is in + P)
        stackedProduct(b, wide, 0f, g, ws, total, false, (ctx, prof, stack) -> {
            int row = 0, column = 0;
            for (int i = 0; i < ws.size(); i++) {
                // float32 only between the code and BF16, as into's (the kept buffer is only ever rounded so)
                CudaLoraFold.foldedWeight(ctx, prof, "linearQuantizedBackwardInput/dequantize", ws.get(i), DType.F32,
                        stack + 2L * row * ld, ld, in, padded, bMasters[i], column, scalings[i]);
                row += ws.get(i).outFeatures();
                column += bMasters[i].dim(1);
            }
        });
    }

    /** Fills a fresh stack of the weights [total, out's width] at device address stack (rows of out's width). */
    private interface StackFill {
        void fill(CudaContext ctx, OpProfiler prof, long stack);
    }

    /**
     * out [n, cols] = g [n, total] S + beta out, where S is the first cols columns of the weights stacked in layer
     * order: the checkpointed recompute's kept stack (DequantCache#getStack) when there is one and, unless
     * keptAnyStride, its rows are exactly cols wide; else a fresh [total, cols] stack that fill writes. One GEMM,
     * profiled as the bases' input gradient.
     */
    private static void stackedProduct(CudaBackend b, Tensor out, float beta, Tensor g, List<CudaQuant4bit> ws, int total,
                                       boolean keptAnyStride, StackFill fill) {
        int n = g.dim(0), cols = out.dim(1);
        CudaContext ctx = b.context();
        OpProfiler prof = b.profiler();
        int mark = prof == null ? -1 : prof.begin();
        DequantCache.Entry kept = ctx.dequantCache().getStack(ws, DType.BF16);
        if (kept != null && (keptAnyStride || kept.ld() == cols)) {
            gemm(ctx.cublas(), false, false, n, cols, total, 1f, CudaContext.ptr(g), total, kept.pointer(), kept.ld(), BF,
                    beta, CudaContext.ptr(out), cols, BF);
            if (mark >= 0) prof.end("linearQuantizedBackwardInput (kept weight)", mark);
            return;
        }
        try (Tensor stack = ctx.empty(DType.BF16, total, cols)) {
            fill.fill(ctx, prof, CudaContext.ptr(stack));
            gemm(ctx.cublas(), false, false, n, cols, total, 1f, CudaContext.ptr(g), total, CudaContext.ptr(stack), cols, BF,
                    beta, CudaContext.ptr(out), cols, BF);
        }
        if (mark >= 0) prof.end("linearQuantizedBackwardInput", mark);
    }
}
