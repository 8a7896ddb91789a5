package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/** Launcher of native/embedding.cu: one block of 256 threads per token row. */
final class EmbeddingKernels {
    private EmbeddingKernels() {}

    /** ids I32 [n], table [vocab, hidden] (F32/BF16/F16) -> [n, hidden] in act; bad ids go to status. */
    static Tensor embedding(CudaContext ctx, DType act, Tensor ids, Tensor table, DeviceStatus status) {
        KernelTypes.requireIndices(ids, "embedding ids");
        KernelTypes.requireDevice(table, "embedding table");
        KernelTypes.requireRank(table, 2, "embedding table");
        int n = ids.dim(0), vocab = table.dim(0), hidden = table.dim(1);
        String kernel = "embedding_fwd_" + KernelTypes.act(act) + "_" + KernelTypes.weight(table, "embedding table");
        Tensor out = ctx.empty(act, n, hidden);
        if (n == 0) return out;
        ctx.launch(ctx.function("embedding", kernel), Dim3.of(n), Dim3.of(256), 0,
                KernelArgs.of().ptr(CudaContext.ptr(ids)).ptr(CudaContext.ptr(table)).ptr(CudaContext.ptr(out))
                        .i32(vocab).i32(hidden).ptr(status.pointer()));
        return out;
    }
}
