package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/** Launcher of native/xent.cu: one block of 256 threads per row of logits. */
final class XentKernels {
    private XentKernels() {}

    /** logits [n, vocab] (act), targets I32 [n] -> F32 [n]; targets outside the vocabulary go to status. */
    static Tensor crossEntropy(CudaContext ctx, DType act, Tensor logits, Tensor targets, DeviceStatus status) {
        int n = logits.dim(0), vocab = logits.dim(1);
        Tensor loss = ctx.empty(DType.F32, n);
        if (n == 0) return loss;
        ctx.launch(ctx.function("xent", "xent_fwd_" + KernelTypes.act(act)), Dim3.of(n), Dim3.of(256), 0,
                KernelArgs.of().ptr(CudaContext.ptr(logits)).ptr(CudaContext.ptr(targets)).ptr(CudaContext.ptr(loss))
                        .i32(vocab).ptr(status.pointer()));
        return loss;
    }
}
