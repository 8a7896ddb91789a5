package dev.qlora4j.backend.cuda;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.cuda.Cublas;
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
        int n = x.dim(0), in = x.dim(1), r = a.dim(0), out = bw.dim(0);
        checkShapes(result, x, a, bw, n, in, r, out, "forward");
        if (result.dtype() != DType.BF16) throw new IllegalArgumentException("LoRA forward: result must be BF16, got " + result);
        if (n == 0) return;
        CudaContext ctx = b.context();
        OpProfiler prof = b.profiler();
        int mark = prof == null ? -1 : prof.begin();
        try (Held xd = input(b, x, dropoutP, seed);
             Held ab = weight(ctx, a, aBf16, "lora_A");
             Held bb = weight(ctx, bw, bBf16, "lora_B");
             Tensor h = ctx.empty(DType.BF16, n, r)) {
            Cublas cu = ctx.cublas();
            cu.gemmRowMajor(false, true, n, r, in, 1f, CudaContext.ptr(xd.t), CudaContext.ptr(ab.t), Cublas.DataType.BF16,
                    0f, CudaContext.ptr(h), Cublas.DataType.BF16);
            cu.gemmRowMajor(false, true, n, out, r, scaling, CudaContext.ptr(h), CudaContext.ptr(bb.t), Cublas.DataType.BF16,
                    1f, CudaContext.ptr(result), Cublas.DataType.BF16);
        }
        if (mark >= 0) prof.end("lora forward (bf16 GEMMs)", mark);
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
        int n = x.dim(0), in = x.dim(1), r = a.dim(0), out = bw.dim(0);
        checkShapes(gradOut, x, a, bw, n, in, r, out, "backward gradOut");
        if (gx.dtype() != DType.BF16 || gx.rank() != 2 || gx.dim(0) != n || gx.dim(1) != in) {
            throw new IllegalArgumentException("LoRA backward: gx must be BF16 [" + n + ", " + in + "], got " + gx);
        }
        requireAccumulator(gradA, r, in, "gradA");
        requireAccumulator(gradB, out, r, "gradB");
        if (n == 0) return;
        CudaContext ctx = b.context();
        OpProfiler prof = b.profiler();
        int mark = prof == null ? -1 : prof.begin();
        Cublas.DataType bf = Cublas.DataType.BF16;
        try (Held xd = input(b, x, dropoutP, seed);
             Held gy = bf16(ctx, gradOut);
             Held abh = weight(ctx, a, aBf16, "lora_A");
             Held bbh = weight(ctx, bw, bBf16, "lora_B");
             Tensor gh = ctx.empty(DType.BF16, n, r)) {
            Tensor ab = abh.t, bb = bbh.t;
            Cublas cu = ctx.cublas();
            if (gradB != null) {
                try (Tensor h = ctx.empty(DType.BF16, n, r)) {   // the forward's h, recomputed (BF16 as the forward rounds it)
                    cu.gemmRowMajor(false, true, n, r, in, 1f, CudaContext.ptr(xd.t), CudaContext.ptr(ab), bf, 0f,
                            CudaContext.ptr(h), bf);
                    cu.gemmRowMajor(true, false, out, r, n, scaling, CudaContext.ptr(gy.t), CudaContext.ptr(h), bf, 1f,
                            CudaContext.ptr(gradB), Cublas.DataType.F32);
                }
            }
            cu.gemmRowMajor(false, false, n, r, out, scaling, CudaContext.ptr(gy.t), CudaContext.ptr(bb), bf, 0f,
                    CudaContext.ptr(gh), bf);
            if (gradA != null) {
                cu.gemmRowMajor(true, false, r, in, n, 1f, CudaContext.ptr(gh), CudaContext.ptr(xd.t), bf, 1f,
                        CudaContext.ptr(gradA), Cublas.DataType.F32);
            }
            if (dropoutP == 0f) {
                cu.gemmRowMajor(false, false, n, in, r, 1f, CudaContext.ptr(gh), CudaContext.ptr(ab), bf, 1f,
                        CudaContext.ptr(gx), bf);
            } else {
                try (Tensor gxd = ctx.empty(DType.BF16, n, in)) {
                    cu.gemmRowMajor(false, false, n, in, r, 1f, CudaContext.ptr(gh), CudaContext.ptr(ab), bf, 0f,
                            CudaContext.ptr(gxd), bf);
                    try (Tensor masked = b.dropout(gxd, dropoutP, seed)) {   // the forward's mask and 1/(1-p)
                        b.addInPlace(gx, masked);
                    }
                }
            }
        }
        if (mark >= 0) prof.end("lora backward (bf16 GEMMs)", mark);
    }

    /** A tensor and whether this code owns (closes) it. */
    private record Held(Tensor t, boolean owned) implements AutoCloseable {
        @Override
        public void close() { if (owned) t.close(); }
    }

    /** x in BF16, with the dropout mask applied when p > 0. */
    private static Held input(CudaBackend b, Tensor x, float p, long seed) {
        if (p > 0f) return new Held(b.dropout(x, p, seed), true);   // BF16 out: the backend's activation dtype
        return bf16(b.context(), x);
    }

    /** The BF16 copy of an F32 master weight: the caller's (checked for shape, not owned) or a fresh cast. */
    private static Held weight(CudaContext ctx, Tensor master, Tensor copy, String what) {
        if (copy == null) return new Held(CastKernels.cast(ctx, master, DType.BF16), true);
        KernelTypes.requireDevice(copy, what + " BF16 copy");
        if (copy.dtype() != DType.BF16 || !java.util.Arrays.equals(copy.shape(), master.shape())) {
            throw new IllegalArgumentException("LoRA: the BF16 copy of " + what + " must be BF16 " + KernelTypes.shape(master)
                    + ", got " + copy);
        }
        return new Held(copy, false);
    }

    private static Held bf16(CudaContext ctx, Tensor t) {
        KernelTypes.requireDevice(t, "LoRA operand");
        return t.dtype() == DType.BF16 ? new Held(t, false) : new Held(CastKernels.cast(ctx, t, DType.BF16), true);
    }

    private static void checkShapes(Tensor y, Tensor x, Tensor a, Tensor bw, int n, int in, int r, int out, String what) {
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

    private static void requireAccumulator(Tensor g, int rows, int cols, String what) {
        if (g == null) return;
        KernelTypes.requireDevice(g, what);
        if (g.dtype() != DType.F32 || g.numel() != (long) rows * cols) {
            throw new IllegalArgumentException("LoRA backward: " + what + " must be an F32 [" + rows + ", " + cols
                    + "] accumulator, got " + g);
        }
    }
}
