package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/** Launcher of native/rmsnorm.cu: one block of 256 threads per row, 16-byte loads when the row allows. */
final class RmsNormKernels {
    private RmsNormKernels() {}

    static final int THREADS = 256;

    /** x [n, h] in act, weight [h] (F32/BF16/F16) -> [n, h] in act. */
    static Tensor rmsNorm(CudaContext ctx, DType act, Tensor x, Tensor weight, float eps) {
        KernelTypes.requireRank(x, 2, "rmsNorm x");
        KernelTypes.requireDevice(weight, "rmsNorm weight");
        KernelTypes.requireRank(weight, 1, "rmsNorm weight");
        int n = x.dim(0), h = x.dim(1);
        if (weight.dim(0) != h) {
            throw new IllegalArgumentException("rmsNorm: x " + KernelTypes.shape(x) + " and weight "
                    + KernelTypes.shape(weight) + " disagree on the hidden size");
        }
        if (x.dtype() != act) throw new IllegalArgumentException("rmsNorm x must be " + act + ", got " + x.dtype());
        String kernel = "rmsnorm_fwd_" + KernelTypes.act(act) + "_" + KernelTypes.weight(weight, "rmsNorm weight");
        Tensor out = ctx.empty(act, n, h);
        if (n == 0) return out;
        int pack = 16 / act.byteSize();
        int vec = h % pack == 0 ? 1 : 0;
        ctx.launch(ctx.function("rmsnorm", kernel), Dim3.of(n), Dim3.of(THREADS), 0,
                KernelArgs.of().ptr(KernelTypes.aligned16(x)).ptr(CudaContext.ptr(weight)).ptr(KernelTypes.aligned16(out))
                        .i32(h).f32(eps).i32(vec));
        return out;
    }
}
