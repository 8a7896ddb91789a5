package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.Cublas;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/**
 * The dense linear layer y = x W^T + b through cuBLAS (float32 accumulation, CUBLAS_COMPUTE_32F; the
 * default math mode, so F32 operands use true float32 FMA, not TF32).
 *
 * <p>cuBLAS multiplies operands of one type, so mixed dtypes are brought together first:
 * <ul>
 *   <li>x and W of the same dtype (F32/F32, BF16/BF16): one GEMM, output in that dtype.</li>
 *   <li>F32 activations, 16-bit W: W is widened to F32 into a temporary (exact), so the product is the
 *       float32 product the CPU backend computes (what the golden tests need); this reads W three times
 *       over, which is why BF16 activations are the fast configuration.</li>
 *   <li>BF16 activations, F32 or F16 W: x is cast to W's dtype (BF16 -> F32 exact; BF16 -> F16 rounds),
 *       the GEMM writes F32 and the result is rounded once to BF16.</li>
 * </ul>
 * The bias is written into the output first (bias_rows kernel) and the GEMM runs with beta = 1, so it is
 * added inside cuBLAS' float32 epilogue and the output is rounded once.
 */
final class LinearOps {
    private LinearOps() {}

    /** x [n, k] in act, w [m, k], bias [m] or null -> [n, m] in act. */
    static Tensor linear(CudaContext ctx, DType act, Tensor x, Tensor w, Tensor bias) {
        int n = x.dim(0), k = x.dim(1), m = w.dim(0);
        DType wt = w.dtype();
        if (wt == act) return gemm(ctx, x, w, bias, act, n, m, k);
        if (act == DType.F32) {
            try (Tensor w32 = CastKernels.cast(ctx, w, DType.F32)) {
                return gemm(ctx, x, w32, bias, DType.F32, n, m, k);
            }
        }
        try (Tensor xw = CastKernels.cast(ctx, x, wt);
             Tensor y32 = gemm(ctx, xw, w, bias, DType.F32, n, m, k)) {
            return CastKernels.cast(ctx, y32, act);
        }
    }

    /** y [n, m] of yType = x [n, k] . w [m, k]^T (+ bias), x and w of one dtype. */
    private static Tensor gemm(CudaContext ctx, Tensor x, Tensor w, Tensor bias, DType yType, int n, int m, int k) {
        Tensor y = ctx.empty(yType, n, m);
        if (n == 0 || m == 0) return y;
        try {
            if (k == 0) {   // an empty sum: the bias alone, or zeros
                if (bias != null) ElementwiseKernels.biasRows(ctx, y, bias);
                else ctx.driver().memsetD8Async(CudaContext.ptr(y), (byte) 0, y.byteSize(), ctx.stream());
                return y;
            }
            float beta = 0f;
            if (bias != null) {
                ElementwiseKernels.biasRows(ctx, y, bias);
                beta = 1f;
            }
            Cublas.DataType ab = KernelTypes.cublas(x.dtype());
            ctx.cublas().gemmRowMajor(false, true, n, m, k, 1f, CudaContext.ptr(x), CudaContext.ptr(w), ab, beta,
                    CudaContext.ptr(y), KernelTypes.cublas(yType));
            return y;
        } catch (RuntimeException e) {
            y.close();
            throw e;
        }
    }
}
