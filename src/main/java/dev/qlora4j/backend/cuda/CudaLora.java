package dev.qlora4j.backend.cuda;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.cuda.Cublas;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.cuda.RowMajorGemm;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Locale;

/**
 * The plain-LoRA products of peft's lora.Linear on BF16 tensor cores (what peft computes under bf16 autocast):
 * the F32 master weights A [r, in] and B [out, r] are used as BF16 copies (passed in by the caller, who caches
 * them between changes of the masters: peft.TrainableTensor#castCopy; else cast here per call), every GEMM reads BF16 and accumulates in float32, and the
 * products that end in an activation-sized tensor are accumulated into it by cuBLAS (beta = 1, the scaling
 * folded into alpha): no F32 widening of [tokens, hidden] tensors, no separate axpy / add.
 *
 * <pre>
 *   forward:   h = drop(x) A^T (BF16 [n, r]);  result += s * h B^T                    (2 GEMMs)
 *   backward:  dB += s * gy^T h;  gh = s * gy B (BF16 [n, r]);  dA += gh^T drop(x)       (F32 accumulators)
 *              gx += gh A                     without dropout: accumulated by the GEMM
 *              gx += drop_mask(gh A)          with dropout: GEMM into a temporary, the mask, an add
 * </pre>
 * Rounding differs from the F32 path only by the BF16 roundings of A, B, h and gh (relative ~2^-9 each) and of
 * the results (which are BF16 activations anyway): results agree with the F32 reference to about 1e-2 of their
 * largest magnitude. DoRA keeps the generic path (LoraLinear).
 *
 * <p>Used when the backend is CUDA with BF16 activations, unless {@code -Dqlora4j.cuda.lora=legacy} selects
 * the generic ops (F32 products, cast, axpy) for comparison.
 */
public final class CudaLora {
    public static final String PROPERTY = "qlora4j.cuda.lora";
    static final Cublas.DataType BF = Cublas.DataType.BF16;

    private CudaLora() {}

    /** Whether the BF16 path applies on backend b (a CUDA backend with BF16 activations, not turned off). */
    public static boolean applies(Backend b) {
        if (!(b instanceof CudaBackend cb) || cb.activationDType() != DType.BF16) return false;
        String mode = System.getProperty(PROPERTY, "bf16").trim().toLowerCase(Locale.ROOT);
        return switch (mode) {
            case "bf16", "fused", "" -> true;
            case "legacy", "f32", "off" -> false;
            default -> throw new IllegalArgumentException("-D" + PROPERTY + "=" + mode
                    + " is not a LoRA path: use bf16 (default, tensor cores) or legacy (F32 products)");
        };
    }

    /**
     * result [n, out] (BF16, updated in place) += scaling * drop(x) A^T B^T.
     *
     * @param x        [n, in] on the device (cast to BF16 when it is not)
     * @param a        lora_A F32 [r, in]
     * @param bw       lora_B F32 [out, r]
     * @param dropoutP 0 for no dropout; else the mask of Backend.dropout(x, p, seed)
     */
    public static void forwardInto(CudaBackend b, Tensor result, Tensor x, Tensor a, Tensor bw, float scaling,
                                   float dropoutP, long seed) {
        forwardInto(b, result, x, a, bw, null, null, scaling, dropoutP, seed);
    }

    /**
     * {@link #forwardInto(CudaBackend, Tensor, Tensor, Tensor, Tensor, float, float, long)} with the BF16 copies
     * of A and B given (both, or both null to cast them here): aBf16 [r, in], bBf16 [out, r], the values of a and
     * bw rounded to BF16. Only their shapes are checked: keeping them current is the caller's business.
     */
    public static void forwardInto(CudaBackend b, Tensor result, Tensor x, Tensor a, Tensor bw, Tensor aBf16, Tensor bBf16,
                                   float scaling, float dropoutP, long seed) {
        Tensor h = forwardInto(b, result, x, a, bw, aBf16, bBf16, scaling, dropoutP, seed, false);
        if (h != null) h.close();
    }

    /**
     * The forward as above; with keepH it returns h = drop(x) A^T (BF16 [n, r], owned by the caller) for the
     * backward to reuse ({@link Hidden}) instead of reading x again, else null. n == 0 returns null.
     */
    public static Tensor forwardInto(CudaBackend b, Tensor result, Tensor x, Tensor a, Tensor bw, Tensor aBf16, Tensor bBf16,
                                     float scaling, float dropoutP, long seed, boolean keepH) {
        int n = x.dim(0), in = x.dim(1), r = a.dim(0), out = bw.dim(0);
        checkShapes(result, x, a, bw, n, in, r, out, "forward");
        if (result.dtype() != DType.BF16) throw new IllegalArgumentException("LoRA forward: result must be BF16, got " + result);
        if (n == 0) return null;
        CudaContext ctx = b.context();
        OpProfiler prof = b.profiler();
        int mark = prof == null ? -1 : prof.begin();
        Tensor h = ctx.empty(DType.BF16, n, r);
        try (Held xd = input(b, x, dropoutP, seed);
             Held ab = weight(ctx, a, aBf16, "lora_A");
             Held bb = weight(ctx, bw, bBf16, "lora_B")) {
            Cublas cu = ctx.cublas();
            cu.gemmRowMajor(false, true, n, r, in, 1f, CudaContext.ptr(xd.t), CudaContext.ptr(ab.t), BF, 0f,
                    CudaContext.ptr(h), BF);
            cu.gemmRowMajor(false, true, n, out, r, scaling, CudaContext.ptr(h), CudaContext.ptr(bb.t), BF,
                    1f, CudaContext.ptr(result), BF);
        } catch (RuntimeException e) {
            h.close();
            throw e;
        }
        if (mark >= 0) prof.end("lora forward (bf16 GEMMs)", mark);
        if (keepH) return h;
        h.close();
        return null;
    }

    /**
     * A kept h = drop(x) A^T of one adapter: the columns [column, column + width) of a BF16 [n, ld] buffer (its own
     * [n, r] tensor, or its block of a group's [n, sum r]). Whether it still belongs to the x and A at hand is the
     * keeper's business (peft.KeptHidden); here only the shape is checked.
     */
    public record Hidden(Tensor buffer, int column, int width) {
        long pointer() { return CudaContext.ptr(buffer) + (long) column * DType.BF16.byteSize(); }

        int ld() { return buffer.dim(1); }

        void check(int n, int r) {
            if (buffer.dtype() != DType.BF16 || buffer.rank() != 2 || buffer.dim(0) != n || width != r || column < 0
                    || column + width > buffer.dim(1)) {
                throw new IllegalArgumentException("LoRA backward: the kept h must be " + r + " BF16 columns of an [" + n
                        + ", ld] buffer, got columns [" + column + ", " + (column + width) + ") of " + buffer);
            }
            KernelTypes.requireDevice(buffer, "kept LoRA h");
        }
    }

    /**
     * One plain adapter's backward: gradA [r, in] += ..., gradB [out, r] += ... (F32 accumulators; null when the
     * adapter is frozen) and gx [n, in] (BF16, the base layer's grad_x, updated in place) += its input gradient.
     *
     * @param gradOut d loss / d output [n, out] on the device
     */
    public static void backwardInto(CudaBackend b, Tensor gx, Tensor x, Tensor gradOut, Tensor a, Tensor bw, float scaling,
                                    float dropoutP, long seed, Tensor gradA, Tensor gradB) {
        backwardInto(b, gx, x, gradOut, a, bw, null, null, scaling, dropoutP, seed, gradA, gradB);
    }

    /** {@link #backwardInto(CudaBackend, Tensor, Tensor, Tensor, Tensor, Tensor, float, float, long, Tensor, Tensor)} with the BF16 copies of A and B given (as in forwardInto). */
    public static void backwardInto(CudaBackend b, Tensor gx, Tensor x, Tensor gradOut, Tensor a, Tensor bw, Tensor aBf16,
                                    Tensor bBf16, float scaling, float dropoutP, long seed, Tensor gradA, Tensor gradB) {
        backwardInto(b, gx, true, x, gradOut, a, bw, aBf16, bBf16, scaling, dropoutP, seed, gradA, gradB, null);
    }

    /**
     * The backward as above, with two more choices: accumulate false writes gx (its old contents, e.g. an
     * uninitialized buffer, are ignored: the adapter's input gradient is the first term of gx, and the base layer's
     * GEMM can accumulate onto it, {@link #baseInputGradInto}); kept, when not null, is the forward's h of this x
     * and A (then x is read once less: only dA reads it).
     */
    public static void backwardInto(CudaBackend b, Tensor gx, boolean accumulate, Tensor x, Tensor gradOut, Tensor a,
                                    Tensor bw, Tensor aBf16, Tensor bBf16, float scaling, float dropoutP, long seed,
                                    Tensor gradA, Tensor gradB, Hidden kept) {
        int n = x.dim(0), in = x.dim(1), r = a.dim(0), out = bw.dim(0);
        checkShapes(gradOut, x, a, bw, n, in, r, out, "backward gradOut");
        requireGx(gx, n, in);
        requireAccumulator(gradA, r, in, "gradA");
        requireAccumulator(gradB, out, r, "gradB");
        if (kept != null) kept.check(n, r);
        if (n == 0) return;
        CudaContext ctx = b.context();
        OpProfiler prof = b.profiler();
        int mark = prof == null ? -1 : prof.begin();
        // x (with its dropout mask) is needed for dA, and for h when none was kept
        boolean needX = gradA != null || (gradB != null && kept == null);
        try (Held xd = needX ? input(b, x, dropoutP, seed) : null;
             Held gy = bf16(ctx, gradOut);
             Held abh = weight(ctx, a, aBf16, "lora_A");
             Held bbh = weight(ctx, bw, bBf16, "lora_B");
             Tensor gh = ctx.empty(DType.BF16, n, r);
             Tensor h = gradB != null && kept == null ? ctx.empty(DType.BF16, n, r) : null) {
            Tensor ab = abh.t, bb = bbh.t;
            Cublas cu = ctx.cublas();
            if (h != null) {   // the forward's h, recomputed (BF16 as the forward rounds it)
                cu.gemmRowMajor(false, true, n, r, in, 1f, CudaContext.ptr(xd.t), CudaContext.ptr(ab), BF, 0f,
                        CudaContext.ptr(h), BF);
            }
            // dB on the side stream (when on) while gh, dA and gx run here: everything dB touches exists already
            SideStream side = gradB != null && SideStream.on(b) ? ctx.side() : null;
            if (side != null) side.fork(ctx.stream());
            try {
                int sub = prof == null ? -1 : prof.begin();
                if (gradB != null) {
                    long hp = kept != null ? kept.pointer() : CudaContext.ptr(h);
                    gemm(side != null ? side.cublas() : cu, true, false, out, r, n, scaling, CudaContext.ptr(gy.t), out, hp,
                            kept != null ? kept.ld() : r, BF, 1f, CudaContext.ptr(gradB), r, Cublas.DataType.F32);
                }
                if (sub >= 0) prof.end("lora backward/dB", sub);
                sub = prof == null ? -1 : prof.begin();
                cu.gemmRowMajor(false, false, n, r, out, scaling, CudaContext.ptr(gy.t), CudaContext.ptr(bb), BF, 0f,
                        CudaContext.ptr(gh), BF);
                if (sub >= 0) prof.end("lora backward/gh", sub);
                sub = prof == null ? -1 : prof.begin();
                if (gradA != null) {
                    cu.gemmRowMajor(true, false, r, in, n, 1f, CudaContext.ptr(gh), CudaContext.ptr(xd.t), BF, 1f,
                            CudaContext.ptr(gradA), Cublas.DataType.F32);
                }
                if (sub >= 0) prof.end("lora backward/dA", sub);
                sub = prof == null ? -1 : prof.begin();
                inputGradInto(b, gx, accumulate, gh, ab, n, in, r, dropoutP, seed);
                if (sub >= 0) prof.end("lora backward/gx", sub);
            } finally {
                if (side != null) side.join(ctx.stream());
            }
        }
        if (mark >= 0) prof.end("lora backward (bf16 GEMMs)", mark);
    }

    /**
     * gx (+)= drop_mask(gh A): without dropout one GEMM (beta = 1 accumulates); with dropout the product goes to
     * a temporary, gets the forward's mask and 1/(1-p), and is added (or copied when not accumulating).
     */
    static void inputGradInto(CudaBackend b, Tensor gx, boolean accumulate, Tensor gh, Tensor ab, int n, int in,
                                      int r, float dropoutP, long seed) {
        CudaContext ctx = b.context();
        Cublas cu = ctx.cublas();
        if (dropoutP == 0f) {
            cu.gemmRowMajor(false, false, n, in, r, 1f, CudaContext.ptr(gh), CudaContext.ptr(ab), BF, accumulate ? 1f : 0f,
                    CudaContext.ptr(gx), BF);
            return;
        }
        try (Tensor gxd = ctx.empty(DType.BF16, n, in)) {
            cu.gemmRowMajor(false, false, n, in, r, 1f, CudaContext.ptr(gh), CudaContext.ptr(ab), BF, 0f,
                    CudaContext.ptr(gxd), BF);
            try (Tensor masked = b.dropout(gxd, dropoutP, seed)) {   // the forward's mask and 1/(1-p)
                if (accumulate) b.addInPlace(gx, masked);
                else ctx.driver().memcpyDtoDAsync(CudaContext.ptr(gx), CudaContext.ptr(masked), gx.byteSize(), ctx.stream());
            }
        }
    }

    // ---- the base layer's input gradient accumulated by its own GEMM ----

    /**
     * Whether {@link #baseInputGradInto(CudaBackend, Tensor, boolean, Tensor, Tensor)} takes a dense base weight:
     * BF16 (the activation dtype, so the product is the base layer's own backward GEMM). F32 / F16 weights keep the
     * base layer's backward (it widens the operands first).
     */
    public static boolean denseBaseApplies(Tensor weight) { return weight.dtype() == DType.BF16; }

    /**
     * gx [n, in] (BF16) (+)= gradOut [n, out] W for the frozen base weight W [out, in] (BF16, see
     * {@link #denseBaseApplies}): the base layer's backward GEMM, with beta = 1 when accumulating, so the LoRA terms
     * already in gx cost no extra pass over it.
     */
    public static void baseInputGradInto(CudaBackend b, Tensor gx, boolean accumulate, Tensor gradOut, Tensor weight) {
        if (!denseBaseApplies(weight) || weight.rank() != 2) {
            throw new IllegalArgumentException("LoRA: the base weight must be BF16 [out, in] here, got " + weight);
        }
        OpProfiler prof = b.profiler();
        int mark = prof == null ? -1 : prof.begin();
        baseProduct(b, gx, accumulate, gradOut, weight);
        if (mark >= 0) prof.end("linearBackwardInput", mark);
    }

    /**
     * gx [n, in] (BF16) (+)= gradOut [n, out] dequant(W): the weight dequantized to BF16 into a temporary (as the
     * backend's linearQuantizedBackwardInput does), then one GEMM, with beta = 1 when accumulating.
     */
    public static void baseInputGradInto(CudaBackend b, Tensor gx, boolean accumulate, Tensor gradOut, QuantizedWeight w) {
        baseInputGradInto(b, gx, accumulate, gradOut, w, () -> {});
    }

    /**
     * {@link #baseInputGradInto(CudaBackend, Tensor, boolean, Tensor, QuantizedWeight)} with beforeProduct run between
     * the dequantize and the GEMM (e.g. to order the GEMM after another stream's work on gx while the dequantize
     * runs beside that work).
     */
    public static void baseInputGradInto(CudaBackend b, Tensor gx, boolean accumulate, Tensor gradOut, QuantizedWeight w,
                                         Runnable beforeProduct) {
        OpProfiler prof = b.profiler();
        int mark = prof == null ? -1 : prof.begin();
        DequantCache.Entry kept = b.context().dequantCache().get(w, DType.BF16);
        if (kept != null) {   // the recompute's dequantized weight: rows of stride ld, the weight in the first in columns
            beforeProduct.run();
            baseProduct(b, gx, accumulate, gradOut, kept.pointer(), w.outFeatures(), w.inFeatures(), kept.ld());
            if (mark >= 0) prof.end("linearQuantizedBackwardInput (kept weight)", mark);
            return;
        }
        int dq = prof == null ? -1 : prof.begin();
        try (Tensor dense = CudaQuantOps.dequantize(b.context(), w, DType.BF16)) {
            if (dq >= 0) prof.end("linearQuantizedBackwardInput/dequantize", dq);
            beforeProduct.run();
            baseProduct(b, gx, accumulate, gradOut, dense);
        }
        if (mark >= 0) prof.end("linearQuantizedBackwardInput", mark);
    }

    private static void baseProduct(CudaBackend b, Tensor gx, boolean accumulate, Tensor gradOut, Tensor w) {
        baseProduct(b, gx, accumulate, gradOut, CudaContext.ptr(w), w.dim(0), w.dim(1), w.dim(1));
    }

    /** gx (+)= gradOut W for W [out, in] stored in the first in columns of rows of stride ld from device address w. */
    private static void baseProduct(CudaBackend b, Tensor gx, boolean accumulate, Tensor gradOut, long w, int out, int in, int ld) {
        int n = gradOut.dim(0);
        KernelTypes.requireDevice(gradOut, "base gradOut");
        if (gradOut.rank() != 2 || gradOut.dim(1) != out) {
            throw new IllegalArgumentException("LoRA base backward: gradOut " + KernelTypes.shape(gradOut) + " does not match the weight ["
                    + out + ", " + in + "]");
        }
        requireGx(gx, n, in);
        if (n == 0) return;
        CudaContext ctx = b.context();
        try (Held gy = bf16(ctx, gradOut)) {
            gemm(ctx.cublas(), false, false, n, in, out, 1f, CudaContext.ptr(gy.t), out, w, ld, BF,
                    accumulate ? 1f : 0f, CudaContext.ptr(gx), in, BF);
        }
    }

    /**
     * Row-major C[m,n] = alpha op(A)[m,k] op(B)[k,n] + beta C where each stored matrix has its own row stride (in
     * elements): A stored [m,k] (or [k,m] when transA) with row stride lda, likewise B with ldb and C [m,n] with
     * ldc. The operands go to cuBLAS swapped, as {@link dev.qlora4j.cuda.RowMajorGemm} explains; a column block of a
     * wider buffer is its pointer advanced to the block and the buffer's width as the stride.
     */
    static void gemm(Cublas cu, boolean transA, boolean transB, int m, int n, int k, float alpha, long a, int lda, long bp,
                     int ldb, Cublas.DataType ab, float beta, long c, int ldc, Cublas.DataType ct) {
        cu.gemmEx(transB ? RowMajorGemm.OP_T : RowMajorGemm.OP_N, transA ? RowMajorGemm.OP_T : RowMajorGemm.OP_N, n, m, k,
                alpha, bp, ab, ldb, a, lda, beta, c, ct, ldc);
    }

    static void requireGx(Tensor gx, int n, int in) {
        KernelTypes.requireDevice(gx, "LoRA grad_x");
        if (gx.dtype() != DType.BF16 || gx.rank() != 2 || gx.dim(0) != n || gx.dim(1) != in) {
            throw new IllegalArgumentException("LoRA backward: gx must be BF16 [" + n + ", " + in + "], got " + gx);
        }
    }

    /** A tensor and whether this code owns (closes) it. */
    record Held(Tensor t, boolean owned) implements AutoCloseable {
        @Override
        public void close() { if (owned) t.close(); }
    }

    /** x in BF16, with the dropout mask applied when p > 0. */
    static Held input(CudaBackend b, Tensor x, float p, long seed) {
        if (p > 0f) return new Held(b.dropout(x, p, seed), true);   // BF16 out: the backend's activation dtype
        return bf16(b.context(), x);
    }

    /** The BF16 copy of an F32 master weight: the caller's (checked for shape, not owned) or a fresh cast. */
    static Held weight(CudaContext ctx, Tensor master, Tensor copy, String what) {
        if (copy == null) return new Held(CastKernels.cast(ctx, master, DType.BF16), true);
        KernelTypes.requireDevice(copy, what + " BF16 copy");
        if (copy.dtype() != DType.BF16 || !java.util.Arrays.equals(copy.shape(), master.shape())) {
            throw new IllegalArgumentException("LoRA: the BF16 copy of " + what + " must be BF16 " + KernelTypes.shape(master)
                    + ", got " + copy);
        }
        return new Held(copy, false);
    }

    static Held bf16(CudaContext ctx, Tensor t) {
        KernelTypes.requireDevice(t, "LoRA operand");
        return t.dtype() == DType.BF16 ? new Held(t, false) : new Held(CastKernels.cast(ctx, t, DType.BF16), true);
    }

    static void checkShapes(Tensor y, Tensor x, Tensor a, Tensor bw, int n, int in, int r, int out, String what) {
        if (x.rank() != 2 || a.rank() != 2 || bw.rank() != 2 || y.rank() != 2) {
            throw new IllegalArgumentException("LoRA " + what + ": x, A, B and the output must be 2-D");
        }
        if (a.dim(1) != in || bw.dim(1) != r || y.dim(0) != n || y.dim(1) != out) {
            throw new IllegalArgumentException("LoRA " + what + ": x " + KernelTypes.shape(x) + ", A " + KernelTypes.shape(a)
                    + ", B " + KernelTypes.shape(bw) + " and " + KernelTypes.shape(y) + " must be [n, in], [r, in], [out, r], [n, out]");
        }
        if (a.dtype() != DType.F32 || bw.dtype() != DType.F32) {
            throw new IllegalArgumentException("LoRA " + what + ": A and B are the F32 master weights, got " + a + " and " + bw);
        }
        KernelTypes.requireDevice(a, "lora_A");
        KernelTypes.requireDevice(bw, "lora_B");
        KernelTypes.requireDevice(y, "LoRA output");
    }

    static void requireAccumulator(Tensor g, int rows, int cols, String what) {
        if (g == null) return;
        KernelTypes.requireDevice(g, what);
        if (g.dtype() != DType.F32 || g.numel() != (long) rows * cols) {
            throw new IllegalArgumentException("LoRA backward: " + what + " must be an F32 [" + rows + ", " + cols
                    + "] accumulator, got " + g);
        }
    }
}
