package dev.qlora4j.backend.cuda;

import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.backend.cuda.CudaLora.Held;
import dev.qlora4j.cuda.Cublas;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.ArrayList;
import java.util.List;

import static dev.qlora4j.backend.cuda.CudaLora.BF;
import static dev.qlora4j.backend.cuda.CudaLora.bf16;
import static dev.qlora4j.backend.cuda.CudaLora.gemm;

/**
 * The forward of 4-bit base layers that read the same x (q/k/v, gate/up) together with their LoRA adapters as one
 * GEMM per layer over a longer k (native/lora_fold.cu):
 * <pre>
 *   H   = x [A_0; A_1; ...]^T                           [n, R]  (one GEMM, R = sum r padded to 64)
 *   X'  = [x | H]                                       [n, in + R]
 *   W'_i = [dequant(W_i) | 0 .. s_i B_i .. 0]             [out_i, in + R]  (s_i B_i in layer i's columns of H)
 *   y_i = X' W'_i^T                                     (one GEMM: the base product and the adapter's together)
 * </pre>
 * Why: unfolded, each adapter's y_i += s_i H_i B_i^T is a skinny GEMM that reads and writes all of y_i again
 * (Llama-7B: 2 x 44 MB for gate and for up, 2 x 16 MB for q, k, v, per layer and forward), while the fold costs one
 * copy of x into X' (2 x 16 MB per group) and R more k columns in the base GEMMs (~1%).
 *
 * <p>Numerics: the base product and the adapter's are summed in the GEMM's float32 accumulator and rounded to BF16
 * once (unfolded: the base output is rounded, then the adapter's product added and rounded again); the adapter's
 * block holds s_i B_i rounded to BF16 from the F32 master (unfolded: B_i rounded, s_i applied in float32; the same
 * values when s_i is a power of two). H is the same BF16 h as unfolded. Results agree with the unfolded path to
 * the BF16 rounding of the outputs.
 *
 * <p>x may also arrive already laid out as X' (BF16 [n, in + R], its first in columns x and the rest zero: a norm
 * written straight into it, CudaBackend#rmsNormPadded and peft.LoraGroup#foldInputWidth); then the fold copies nothing
 * and writes H into that buffer's columns (the caller's x keeps them; only its first in columns are x).
 *
 * <p>Applies on the CUDA BF16 LoRA path to prefill/training shapes (more rows than the decode GEMV takes) of
 * bias-free 4-bit bases computing in BF16 with in_features a multiple of 8; -Dqlora4j.cuda.loraFold=false turns it
 * off (for A/B runs).
 */
public final class CudaLoraFold {
    public static final String PROPERTY = "qlora4j.cuda.loraFold";
    private static final String MODULE = "lora_fold";
    /**
     * H's columns are padded (with zeros) to a multiple of this, so that k = in + R stays a whole number of the GEMMs'
     * 64-wide k tiles and the rows of X' and W' stay 128-byte aligned: Llama-7B step 180.8 / 181.3 ms with 64 against
     * 183.5 / 182.2 ms with 8 (H200, same call), the extra zero columns costing less than a ragged last k tile.
     */
    static final int COLUMN_ALIGN = 64;

    /**
     * -Dqlora4j.cuda.foldFusedFill=false: W'_i by the dequantize and then lora_fold_b_bf16 (two launches) instead of
     * nf4.cu's q4_dequantize_fold_bf16 (one; the same bits), for A/B runs and the kernels' test.
     */
    static final String FUSED_FILL_PROPERTY = "qlora4j.cuda.foldFusedFill";

    private CudaLoraFold() {}

    /** The folded outputs y_i (BF16 [n, out_i]) and H (BF16 [n, R padded to 64], owned by the caller; null unless kept). */
    public record Result(Tensor[] outputs, Tensor hidden) {}

    /** Whether the fold is on ({@link #PROPERTY}, default true). */
    public static boolean on() { return Switches.on(PROPERTY, true); }

    /**
     * The bases as 4-bit weights when the fold takes them with this x, else null: the fold is on, x is [n, in] with
     * n above the decode GEMV's rows and in a multiple of 8, and every weight is a {@link CudaQuant4bit} computing in
     * BF16 with in_features in and no bias.
     */
    public static List<CudaQuant4bit> bases(Tensor x, List<? extends QuantizedWeight> ws, List<Tensor> biases) {
        if (!on() || x.rank() != 2 || x.dim(0) <= Quant4bitKernels.GEMV_MAX_ROWS || ws.isEmpty()) return null;
        int in = ws.getFirst().inFeatures();
        // x itself, or an [x | H] buffer already laid out for the fold (forward's x argument)
        if (in % 8 != 0 || (x.dim(1) != in && (x.dim(1) < in || (x.dim(1) - in) % COLUMN_ALIGN != 0))) return null;
        List<CudaQuant4bit> q = new ArrayList<>(ws.size());
        for (int i = 0; i < ws.size(); i++) {
            if (!(ws.get(i) instanceof CudaQuant4bit c) || biases.get(i) != null || c.computeDType() != DType.BF16
                    || c.inFeatures() != in) {
                return null;
            }
            q.add(c);
        }
        return q;
    }

    /**
     * y_i = x W_i^T + s_i (x A_i^T) B_i^T for every base i of {@link #bases}, as the class comment describes.
     *
     * @param aCat     BF16 [sum r, in]: the adapters' lora_A copies stacked in layer order
     * @param bMasters per layer lora_B's F32 master [out_i, r_i]
     * @param keepH    return H for the backward (its layer blocks at the same columns as in aCat's rows)
     */
    public static Result forward(CudaBackend b, Tensor x, List<CudaQuant4bit> ws, Tensor aCat, Tensor[] bMasters,
                                 float[] scalings, boolean keepH) {
        return fold(b, x, ws, aCat, bMasters, scalings, keepH, false);
    }

    /**
     * {@link #forward} with the layers' outputs joined: one BF16 [n, sum out_i] (layer i's columns after layer
     * i-1's), from ONE GEMM over the W'_i stacked in one buffer ([sum out_i, in + R]), so the result has a single
     * output and the group's GEMM runs as one launch (Llama-7B gate/up on an H200: ~6% faster than two; bench
     * RESULTS, session 17). Each output value is the same dot product as in {@link #forward}.
     */
    public static Result forwardJoined(CudaBackend b, Tensor x, List<CudaQuant4bit> ws, Tensor aCat, Tensor[] bMasters,
                                       float[] scalings, boolean keepH) {
        return fold(b, x, ws, aCat, bMasters, scalings, keepH, true);
    }

    private static Result fold(CudaBackend b, Tensor x, List<CudaQuant4bit> ws, Tensor aCat, Tensor[] bMasters,
                               float[] scalings, boolean keepH, boolean joined) {
        int n = x.dim(0), in = ws.getFirst().inFeatures(), layers = ws.size();
        int rank = checkArgs(in, ws, aCat, bMasters, scalings);
        int padded = paddedRank(rank), ld = in + padded;
        // x already written into the first in columns of X' (a norm's padded output, zeros in H's columns)?
        boolean inPlace = x.dim(1) == ld;
        if (!inPlace && x.dim(1) != in) {
            throw new IllegalArgumentException("LoRA fold: x must be [n, " + in + "] or the fold's [n, " + ld + "] [x | H] buffer, got " + x);
        }
        if (inPlace && x.dtype() != DType.BF16) throw new IllegalArgumentException("LoRA fold: an [x | H] buffer must be BF16, got " + x);
        int total = 0;
        for (CudaQuant4bit w : ws) total += w.outFeatures();
        CudaContext ctx = b.context();
        OpProfiler prof = b.profiler();
        int mark = prof == null ? -1 : prof.begin();
        Tensor[] ys = new Tensor[joined ? 1 : layers];
        Tensor h = null;
        try (Held xb = bf16(ctx, x);
             Held xhHeld = inPlace ? new Held(x, false) : new Held(ctx.empty(DType.BF16, n, ld), true)) {
            Tensor xh = xhHeld.t();
            Cublas cu = ctx.cublas();
            if (!inPlace) copyColumns(ctx, xh, ld, CudaContext.ptr(xb.t()), in, n, in, ld);   // x, and H's columns cleared
            gemm(cu, false, true, n, rank, in, 1f, CudaContext.ptr(xb.t()), xb.t().dim(1), CudaContext.ptr(aCat), in, BF, 0f,
                    CudaContext.ptr(xh) + 2L * in, ld, BF);
            // every layer's W'_i in one buffer, layer i's rows after layer i-1's: a checkpointed recompute keeps
            // it for the backward (DequantCache), where a joined group's input gradient reads it as one matrix
            Tensor stack = ctx.empty(DType.BF16, total, ld);
            boolean done = false;
            try {
                int row = 0, column = 0;
                for (int i = 0; i < layers; i++) {
                    foldedWeight(ctx, prof, "lora fold forward/dequantize", ws.get(i), CudaQuantOps.stateRounding(ws.get(i)),
                            CudaContext.ptr(stack) + 2L * row * ld, ld, in, padded, bMasters[i], column, scalings[i]);
                    row += ws.get(i).outFeatures();
                    column += bMasters[i].dim(1);
                }
                if (joined) {   // one GEMM for the group
                    ys[0] = ctx.empty(DType.BF16, n, total);
                    gemm(cu, false, true, n, total, ld, 1f, CudaContext.ptr(xh), ld, CudaContext.ptr(stack), ld, BF, 0f,
                            CudaContext.ptr(ys[0]), total, BF);
                } else {        // one per layer, each over its rows of the stack
                    row = 0;
                    for (int i = 0; i < layers; i++) {
                        int out = ws.get(i).outFeatures();
                        ys[i] = ctx.empty(DType.BF16, n, out);
                        gemm(cu, false, true, n, out, ld, 1f, CudaContext.ptr(xh), ld, CudaContext.ptr(stack) + 2L * row * ld,
                                ld, BF, 0f, CudaContext.ptr(ys[i]), out, BF);
                        row += out;
                    }
                }
                done = true;
            } finally {
                if (!done || !ctx.dequantCache().offerStack(ws, stack, ld, stackRounding(ws))) stack.close();
            }
            if (keepH) {
                h = ctx.empty(DType.BF16, n, padded);
                copyColumns(ctx, h, padded, CudaContext.ptr(xh) + 2L * in, ld, n, padded, padded);
            }
        } catch (RuntimeException e) {
            for (Tensor y : ys) if (y != null) y.close();
            if (h != null) h.close();
            throw e;
        }
        if (mark >= 0) prof.end("lora fold forward (base + LoRA GEMMs)", mark);
        return new Result(ys, h);
    }

    /**
     * W'_i into the out rows of stride ld from device address wf: the dequantized base weight (rounded to BF16
     * through the dtype rounding, see Quant4bitKernels#dequantizeRows) in columns [0, in),
     * s_i B_i in layer i's columns of H's block ([in + column, in + column + r)), zeros in the rest of the block.
     */
    static void foldedWeight(CudaContext ctx, OpProfiler prof, String label, CudaQuant4bit w, DType rounding, long wf,
                             int ld, int in, int padded, Tensor bMaster, int column, float scaling) {
        if ((wf & 15) != 0) throw new IllegalStateException("LoRA fold: a 16-byte aligned buffer is needed");
        int out = w.outFeatures();
        int dq = prof == null ? -1 : prof.begin();
        if (Switches.on(FUSED_FILL_PROPERTY, true)) {   // one launch: the dequantize fills the adapter's columns too
            Quant4bitKernels.dequantizeRowsFold(ctx, w, wf, ld, rounding, bMaster, column, scaling);
        } else {
            Quant4bitKernels.dequantizeRows(ctx, w, wf, ld, rounding);   // BF16: the fold only takes BF16-computing bases
            ctx.launch1d(ctx.function(MODULE, "lora_fold_b_bf16"), (long) out * (padded / 8), KernelArgs.of()
                    .ptr(wf).i64(ld).i32(out).i32(in).ptr(CudaContext.ptr(bMaster)).i32(column).i32(bMaster.dim(1)).f32(scaling));
        }
        if (dq >= 0) prof.end(label, dq);
    }

    /** H's width for adapters of total rank rank: rank padded with zero columns to a multiple of {@link #COLUMN_ALIGN}. */
    static int paddedRank(int rank) {
        return (rank + COLUMN_ALIGN - 1) / COLUMN_ALIGN * COLUMN_ALIGN;
    }

    /** The rounding the stacked weights went through: F32 when every one's is (what the cache keeps), else the first other. */
    private static DType stackRounding(List<CudaQuant4bit> ws) {
        for (CudaQuant4bit w : ws) if (CudaQuantOps.stateRounding(w) != DType.F32) return CudaQuantOps.stateRounding(w);
        return DType.F32;
    }

    /** dst [rows, ldDst] columns [0, cols) = src's (row stride ldSrc), [cols, zeroTo) = 0; all multiples of 8. */
    private static void copyColumns(CudaContext ctx, Tensor dst, int ldDst, long src, int ldSrc, int rows, int cols, int zeroTo) {
        copyColumns(ctx, CudaContext.ptr(dst), ldDst, src, ldSrc, rows, cols, zeroTo);
    }

    private static void copyColumns(CudaContext ctx, long dst, int ldDst, long src, int ldSrc, int rows, int cols, int zeroTo) {
        if ((cols | zeroTo | ldDst | ldSrc) % 8 != 0 || ((dst | src) & 15) != 0) {
            throw new IllegalStateException("LoRA fold: column copies need multiples of 8 columns and 16-byte aligned rows");
        }
        ctx.launch1d(ctx.function(MODULE, "copy_columns_bf16"), (long) rows * (zeroTo / 8), KernelArgs.of()
                .ptr(dst).i64(ldDst).ptr(src).i64(ldSrc).i32(rows).i32(cols).i32(zeroTo));
    }

    /** Checks the shapes; returns the sum of the ranks. */
    private static int checkArgs(int in, List<CudaQuant4bit> ws, Tensor aCat, Tensor[] bMasters, float[] scalings) {
        int layers = ws.size();
        if (bMasters.length != layers || scalings.length != layers) {
            throw new IllegalArgumentException("LoRA fold: " + layers + " bases need as many lora_B and scalings, got "
                    + bMasters.length + " and " + scalings.length);
        }
        KernelTypes.requireDevice(aCat, "LoRA fold lora_A copies");
        int rank = 0;
        for (int i = 0; i < layers; i++) {
            Tensor bm = bMasters[i];
            KernelTypes.requireDevice(bm, "LoRA fold lora_B");
            if (bm.dtype() != DType.F32 || bm.rank() != 2 || bm.dim(0) != ws.get(i).outFeatures()) {
                throw new IllegalArgumentException("LoRA fold: lora_B " + i + " must be the F32 master [" + ws.get(i).outFeatures()
                        + ", r], got " + bm);
            }
            if (ws.get(i).inFeatures() != in) {
                throw new IllegalArgumentException("LoRA fold: base " + i + " takes " + ws.get(i).inFeatures() + " features, base 0 " + in);
            }
            rank += bm.dim(1);
        }
        if (aCat.dtype() != DType.BF16 || aCat.rank() != 2 || aCat.dim(0) != rank || aCat.dim(1) != in) {
            throw new IllegalArgumentException("LoRA fold: the stacked lora_A must be BF16 [" + rank + ", " + in + "], got " + aCat);
        }
        return rank;
    }
}
