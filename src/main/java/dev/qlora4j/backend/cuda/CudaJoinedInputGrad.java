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
        CudaContext ctx = b.context();
        OpProfiler prof = b.profiler();
        int mark = prof == null ? -1 : prof.begin();
        DequantCache.Entry kept = ctx.dequantCache().getStack(ws, DType.BF16);
        if (kept != null) {   // the recompute's joined fold buffer: the weights in the first in columns of its rows
            gemm(ctx.cublas(), false, false, n, in, total, 1f, CudaContext.ptr(g), total, kept.pointer(), kept.ld(), BF,
                    accumulate ? 1f : 0f, CudaContext.ptr(gx), in, BF);
            if (mark >= 0) prof.end("linearQuantizedBackwardInput (kept weight)", mark);
            return;
        }
        try (Tensor stack = ctx.empty(DType.BF16, total, in)) {
            int row = 0;
            for (CudaQuant4bit w : ws) {
                int dq = prof == null ? -1 : prof.begin();
                // float32 only between the code and BF16: the values of the per-layer backward's dequantize
                Quant4bitKernels.dequantizeRows(ctx, w, CudaContext.ptr(stack) + 2L * row * in, in, DType.F32);
                if (dq >= 0) prof.end("linearQuantizedBackwardInput/dequantize", dq);
                row += w.outFeatures();
            }
            gemm(ctx.cublas(), false, false, n, in, total, 1f, CudaContext.ptr(g), total, CudaContext.ptr(stack), in, BF,
                    accumulate ? 1f : 0f, CudaContext.ptr(gx), in, BF);
        }
        if (mark >= 0) prof.end("linearQuantizedBackwardInput", mark);
    }
}
