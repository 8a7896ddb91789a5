package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.Cublas;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/**
 * The GEMMs of the linear layer's backward through cuBLAS (CUBLAS_COMPUTE_32F, no TF32):
 * grad_x = gradOut W and gradW += gradOut^T x (beta = 1 into the F32 accumulator).
 *
 * <p>cuBLAS multiplies operands of one dtype. When the two operands differ (F32 LoRA weights with BF16
 * activations, a BF16 weight with F32 activations), the 16-bit one is widened to F32 first (exact) and the
 * product is computed in float32, then rounded once to the activation dtype.
 */
final class TrainLinearOps {
    private TrainLinearOps() {}

    /** gradOut [n, m], w [m, k] -> [n, k] in act. */
    static Tensor backwardInput(CudaContext ctx, DType act, Tensor gradOut, Tensor w) {
        int n = gradOut.dim(0), m = gradOut.dim(1), k = w.dim(1);
        return product(ctx, act, gradOut, w, false, n, k, m);
    }

    /** gradW F32 [m, k] += gradOut [n, m]^T x [n, k]. */
    static void backwardWeight(CudaContext ctx, Tensor gradOut, Tensor x, Tensor gradW) {
        int n = gradOut.dim(0), m = gradOut.dim(1), k = x.dim(1);
        if (n == 0 || m == 0 || k == 0) return;
        DType common = gradOut.dtype() == x.dtype() ? x.dtype() : DType.F32;
        try (Tensor a = widenedOrNull(ctx, gradOut, common); Tensor b = widenedOrNull(ctx, x, common)) {
            long pa = CudaContext.ptr(a == null ? gradOut : a), pb = CudaContext.ptr(b == null ? x : b);
            ctx.cublas().gemmRowMajor(true, false, m, k, n, 1f, pa, pb, KernelTypes.cublas(common), 1f,
                    CudaContext.ptr(gradW), Cublas.DataType.F32);
        }
    }

    /** a [n, inner] . op(b) with b stored [inner, cols] (or [cols, inner] when transB) -> [n, cols] in act. */
    static Tensor product(CudaContext ctx, DType act, Tensor a, Tensor b, boolean transB, int n, int cols, int inner) {
        DType common = a.dtype() == b.dtype() ? a.dtype() : DType.F32;
        // cuBLAS writes the operands' dtype or F32: act directly when the operands are in act, else F32 then a cast.
        DType yType = common == act ? act : DType.F32;
        Tensor y = ctx.empty(yType, n, cols);
        try {
            if (n == 0 || cols == 0) return y;
            if (inner == 0) {
                ctx.driver().memsetD8Async(CudaContext.ptr(y), (byte) 0, y.byteSize(), ctx.stream());
            } else {
                try (Tensor wa = widenedOrNull(ctx, a, common); Tensor wb = widenedOrNull(ctx, b, common)) {
                    ctx.cublas().gemmRowMajor(false, transB, n, cols, inner, 1f, CudaContext.ptr(wa == null ? a : wa),
                            CudaContext.ptr(wb == null ? b : wb), KernelTypes.cublas(common), 0f, CudaContext.ptr(y),
                            KernelTypes.cublas(yType));
                }
            }
            if (yType == act) return y;
            try (y) {
                return CastKernels.cast(ctx, y, act);
            }
        } catch (RuntimeException e) {
            y.close();
            throw e;
        }
    }

    /** t cast to dtype, or null when it already is (the caller then uses t). */
    private static Tensor widenedOrNull(CudaContext ctx, Tensor t, DType dtype) {
        return t.dtype() == dtype ? null : CastKernels.cast(ctx, t, dtype);
    }
}
