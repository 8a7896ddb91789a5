package dev.qlora4j.backend.cuda;

import static dev.qlora4j.backend.cuda.Quant4bitKernels.dtypeCode;
import static dev.qlora4j.backend.cuda.Quant4bitKernels.strideGrid;

import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Half;
import dev.qlora4j.tensor.Tensor;

/**
 * Launchers of native/int8.cu (module "int8"): the LLM.int8 forward of {@link dev.qlora4j.quant.Int8Matmul}
 * as a sequence of kernels on the context's stream.
 */
final class Int8Kernels {
    static final String MODULE = "int8";
    static final int GEMM_TILE = 64;

    private Int8Kernels() {}

    /**
     * y [n, out] in x's dtype = LLM.int8 linear of x [n, in] (F32/BF16/F16) with w, bias [out] or null.
     * Temporaries come from the caching allocator and are closed before returning (stream-ordered reuse).
     */
    static Tensor linear(CudaContext ctx, Tensor x, CudaInt8 w, Tensor bias) {
        int n = x.dim(0);
        int k = w.inFeatures();
        int m = w.outFeatures();
        DType in = x.dtype();
        int inCode = dtypeCode(in, "x");
        float threshold = w.threshold();
        boolean sparse = threshold > 0f;
        float t16 = Half.roundF16(threshold);
        Tensor y = ctx.empty(in, n, m);
        Tensor flags = null, cols = null, count = null;
        try (Tensor ca = ctx.empty(DType.I8, n, k); Tensor sca = ctx.empty(DType.F32, n); Tensor acc = ctx.empty(DType.I32, n, m)) {
            if (sparse) {
                flags = ctx.empty(DType.U8, k);
                cols = ctx.empty(DType.I32, k);
                count = ctx.empty(DType.I32, 1);
                ctx.driver().memsetD8Async(CudaContext.ptr(flags), (byte) 0, k, ctx.stream());
                ctx.launch(ctx.function(MODULE, "i8_outlier_flags"), strideGrid(ctx, (long) n * k, 256), Dim3.of(256), 0,
                        KernelArgs.of().ptr(CudaContext.ptr(x)).i32(inCode).i64(n).i32(k).f32(t16).ptr(CudaContext.ptr(flags)));
                ctx.launch(ctx.function(MODULE, "i8_compact_columns"), Dim3.of(1), Dim3.of(1024), 0,
                        KernelArgs.of().ptr(CudaContext.ptr(flags)).i32(k).ptr(CudaContext.ptr(cols)).ptr(CudaContext.ptr(count)));
            }
            ctx.launch(ctx.function(MODULE, "i8_quantize_rows"),
                    Dim3.of((int) Math.min(n, 32L * ctx.properties().multiprocessorCount())), Dim3.of(256), 0,
                    KernelArgs.of().ptr(CudaContext.ptr(x)).i32(inCode).i64(n).i32(k).f32(threshold).f32(t16)
                            .i32(sparse ? 1 : 0).ptr(sparse ? CudaContext.ptr(flags) : 0L)
                            .ptr(CudaContext.ptr(ca)).ptr(CudaContext.ptr(sca)));
            ctx.launch(ctx.function(MODULE, "i8_gemm_dp4a"),
                    Dim3.of((m + GEMM_TILE - 1) / GEMM_TILE, (n + GEMM_TILE - 1) / GEMM_TILE), Dim3.of(256), 0,
                    KernelArgs.of().ptr(CudaContext.ptr(ca)).ptr(CudaContext.ptr(w.cb())).ptr(CudaContext.ptr(acc))
                            .i32(n).i32(m).i32(k));
            ctx.launch(ctx.function(MODULE, "i8_dequant"), strideGrid(ctx, (long) n * m, 256), Dim3.of(256), 0,
                    KernelArgs.of().ptr(CudaContext.ptr(acc)).ptr(CudaContext.ptr(sca)).ptr(CudaContext.ptr(w.scb()))
                            .ptr(bias == null ? 0L : CudaContext.ptr(bias)).i32(bias == null ? 0 : dtypeCode(bias.dtype(), "bias"))
                            .i32(inCode).ptr(CudaContext.ptr(y)).i64(n).i32(m));
            if (sparse) {
                ctx.launch(ctx.function(MODULE, "i8_outlier_add"), strideGrid(ctx, (long) n * m, 256), Dim3.of(256), 0,
                        KernelArgs.of().ptr(CudaContext.ptr(x)).i32(inCode).ptr(CudaContext.ptr(cols)).ptr(CudaContext.ptr(count))
                                .ptr(CudaContext.ptr(w.cb())).ptr(CudaContext.ptr(w.scb())).ptr(CudaContext.ptr(y))
                                .i64(n).i32(m).i32(k));
            }
        } finally {
            if (flags != null) flags.close();
            if (cols != null) cols.close();
            if (count != null) count.close();
        }
        return y;
    }

    /** w [out, in] in dtype = (CB * SCB) * (1/127), rounded to dtype. */
    static Tensor dequantize(CudaContext ctx, CudaInt8 w, DType dtype) {
        Tensor y = ctx.empty(dtype, w.outFeatures(), w.inFeatures());
        long total = (long) w.outFeatures() * w.inFeatures();
        ctx.launch(ctx.function(MODULE, "i8_dequantize_weight"), strideGrid(ctx, total, 256), Dim3.of(256), 0,
                KernelArgs.of().ptr(CudaContext.ptr(w.cb())).ptr(CudaContext.ptr(w.scb())).ptr(CudaContext.ptr(y))
                        .i32(dtypeCode(dtype, "dtype")).i64(w.outFeatures()).i32(w.inFeatures()));
        return y;
    }
}
