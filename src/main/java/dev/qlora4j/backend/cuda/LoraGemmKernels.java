package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.Cublas;
import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/**
 * Launcher of native/lora_gemm.cu: the LoRA products with one dimension of at most 64 (the rank r, or a group's
 * stacked ranks) on our own deterministic kernels, which stream the large BF16 operand once near copy bandwidth
 * (native/NOTES-lora-gemm.md). Call sites pass the row-major product they used to give cuBLAS; {@link #gemm} runs it
 * here when the switch is on and {@link LoraGemmPlan} takes the shape, else through cuBLAS with the same arguments,
 * so the numbers differ only by summation order (both: BF16 operands, f32 accumulation, alpha / beta in f32).
 *
 * <p>-Dqlora4j.cuda.loraGemm=false keeps every LoRA product on cuBLAS (for A/B timing; on by default).
 */
public final class LoraGemmKernels {
    public static final String PROPERTY = "qlora4j.cuda.loraGemm";
    static final String MODULE = "lora_gemm";

    private LoraGemmKernels() {}

    /** Whether LoRA products may run on lora_gemm.cu ({@link #PROPERTY}, default true). */
    public static boolean on() { return Switches.on(PROPERTY, true); }

    /**
     * Row-major C [m, n] = alpha op(A) op(B) + beta C with packed operands, as {@link Cublas#gemmRowMajor}: A [m, k]
     * (or [k, m] when transA), B [k, n] (or [n, k] when transB), C [m, n]; A and B BF16, C of type cType.
     */
    static void gemmRowMajor(CudaContext ctx, boolean transA, boolean transB, int m, int n, int k, float alpha, long a,
                             long b, float beta, long c, Cublas.DataType cType) {
        gemm(ctx, transA, transB, m, n, k, alpha, a, transA ? m : k, b, transB ? k : n, beta, c, n, cType);
    }

    /** As {@link CudaLora#gemm} (row strides lda, ldb, ldc in elements; A, B BF16): here when it applies, else cuBLAS. */
    static void gemm(CudaContext ctx, boolean transA, boolean transB, int m, int n, int k, float alpha, long a, int lda,
                     long b, int ldb, float beta, long c, int ldc, Cublas.DataType cType) {
        if (!on() || !tryLaunch(ctx, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, cType)) {
            CudaLora.gemm(ctx.cublas(), transA, transB, m, n, k, alpha, a, lda, b, ldb, CudaLora.BF, beta, c, ldc, cType);
        }
    }

    /** Launches the product on lora_gemm.cu when a plan takes it; false (nothing launched) otherwise. */
    static boolean tryLaunch(CudaContext ctx, boolean transA, boolean transB, int m, int n, int k, float alpha, long a,
                             int lda, long b, int ldb, float beta, long c, int ldc, Cublas.DataType cType) {
        if (cType != Cublas.DataType.F32 && cType != Cublas.DataType.BF16) return false;
        int cElem = cType == Cublas.DataType.F32 ? 4 : 2;
        boolean aligned = ((a | b) & 15) == 0 && (c & (cElem - 1)) == 0;
        LoraGemmPlan plan = LoraGemmPlan.of(transA, transB, m, n, k, lda, ldb, ldc, aligned, CudaContext.ARRIVAL_COUNTERS,
                ctx.properties().multiprocessorCount());
        if (plan == null) return false;
        launch(ctx, plan, plan.swapped() ? b : a, plan.swapped() ? ldb : lda, plan.swapped() ? a : b,
                plan.swapped() ? lda : ldb, c, cType == Cublas.DataType.F32, alpha, beta);
        return true;
    }

    /** One launch of a plan: operands A' (row stride lda) and B' (ldb) as the plan names them, C' through its strides. */
    static void launch(CudaContext ctx, LoraGemmPlan plan, long a, long lda, long b, long ldb, long c, boolean cF32,
                       float alpha, float beta) {
        long fn = ctx.function(MODULE, plan.kernel());
        ctx.allowSharedMemory(fn, plan.sharedBytes());
        long floats = plan.partialFloats();
        try (Tensor partials = floats == 0 ? null : ctx.empty(DType.F32, Math.toIntExact(floats))) {
            ctx.launch(fn, Dim3.of(plan.blocks()), Dim3.of(LoraGemmPlan.THREADS), plan.sharedBytes(), KernelArgs.of()
                    .ptr(a).i64(lda).ptr(b).i64(ldb).ptr(c).i64(plan.ldcM()).i64(plan.ldcN()).i32(cF32 ? 1 : 0)
                    .f32(alpha).f32(beta).i32(plan.rows()).i32(plan.cols()).i32(plan.depth()).i32(plan.splits())
                    .ptr(partials == null ? 0L : CudaContext.ptr(partials)).ptr(ctx.arrivalCounters()));
        }
    }
}
