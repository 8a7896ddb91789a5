package dev.qlora4j.backend.cuda;

import dev.qlora4j.backend.AttentionResult;
import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/**
 * Launchers of native/attention_train.cu: training attention (no KV cache) forward with saved log-sum-exp, and
 * its backward (delta = dO . O, then dQ per query tile and dK, dV per key tile). Inputs are already checked
 * (shapes as {@code Backend.attentionTrain} says) and in the activation dtype.
 */
final class TrainAttentionKernels {
    private TrainAttentionKernels() {}

    static final int TILE = 32;
    static final int THREADS = 256;
    /** The largest head dim the kernels hold in registers (8 floats per lane). */
    static final int MAX_HEAD_DIM = 256;

    /** Dims per lane of the kernel variant: 2, 4 or 8 (headDim <= 64, 128, 256). */
    static int dimsPerLane(int headDim) {
        if (headDim % 4 != 0 || headDim > MAX_HEAD_DIM) {
            throw new IllegalArgumentException("CUDA training attention needs headDim a multiple of 4 and at most "
                    + MAX_HEAD_DIM + ", got " + headDim + "; train this model with --device cpu");
        }
        return headDim <= 64 ? 2 : headDim <= 128 ? 4 : 8;
    }

    private static int tileBytes(int tiles, int headDim, int extraInts) {
        return (tiles * TILE * (headDim + 4) + extraInts) * 4;
    }

    static AttentionResult forward(CudaContext ctx, DType act, Tensor q, Tensor k, Tensor v, Tensor segments, int batch,
                                   int heads, int kvHeads, int headDim, float scale, int window) {
        int tokens = q.dim(0) / batch;
        int dpl = dimsPerLane(headDim);
        Tensor out = ctx.empty(act, q.shape());
        Tensor lse = ctx.empty(DType.F32, batch, heads, tokens);
        if (tokens == 0) return new AttentionResult(out, lse);
        long f = ctx.function("attention_train", "attn_train_fwd_" + KernelTypes.act(act) + "_d" + dpl);
        int smem = tileBytes(3, headDim, 2 * TILE);
        ctx.allowSharedMemory(f, smem);
        ctx.launch(f, new Dim3((tokens + TILE - 1) / TILE, heads, batch), Dim3.of(THREADS), smem,
                KernelArgs.of().ptr(CudaContext.ptr(q)).ptr(CudaContext.ptr(k)).ptr(CudaContext.ptr(v))
                        .ptr(CudaContext.ptrOrNull(segments)).ptr(CudaContext.ptr(out)).ptr(CudaContext.ptr(lse))
                        .i32(tokens).i32(heads).i32(kvHeads).i32(headDim).f32(scale).i32(window));
        return new AttentionResult(out, lse);
    }

    /** {dQ, dK, dV} shaped like q, k, v, in act. */
    static Tensor[] backward(CudaContext ctx, DType act, Tensor q, Tensor k, Tensor v, Tensor segments, Tensor out,
                             Tensor lse, Tensor gradOut, int batch, int heads, int kvHeads, int headDim, float scale,
                             int window) {
        int tokens = q.dim(0) / batch;
        int dpl = dimsPerLane(headDim);
        String t = KernelTypes.act(act);
        Tensor dq = ctx.empty(act, q.shape()), dk = ctx.empty(act, k.shape()), dv = ctx.empty(act, v.shape());
        if (tokens == 0) return new Tensor[] {dq, dk, dv};
        try (Tensor delta = ctx.empty(DType.F32, batch, heads, tokens)) {
            long warps = (long) batch * tokens * heads;
            ctx.launch1d(ctx.function("attention_train", "attn_bwd_delta_" + t), warps * 32,
                    KernelArgs.of().ptr(CudaContext.ptr(out)).ptr(CudaContext.ptr(gradOut)).ptr(CudaContext.ptr(delta))
                            .i32(batch).i32(tokens).i32(heads).i32(headDim));
            int tiles = (tokens + TILE - 1) / TILE;
            long fq = ctx.function("attention_train", "attn_bwd_dq_" + t + "_d" + dpl);
            int smemQ = tileBytes(4, headDim, 2 * TILE);
            ctx.allowSharedMemory(fq, smemQ);
            ctx.launch(fq, new Dim3(tiles, heads, batch), Dim3.of(THREADS), smemQ,
                    KernelArgs.of().ptr(CudaContext.ptr(q)).ptr(CudaContext.ptr(k)).ptr(CudaContext.ptr(v))
                            .ptr(CudaContext.ptrOrNull(segments)).ptr(CudaContext.ptr(gradOut)).ptr(CudaContext.ptr(lse))
                            .ptr(CudaContext.ptr(delta)).ptr(CudaContext.ptr(dq))
                            .i32(tokens).i32(heads).i32(kvHeads).i32(headDim).f32(scale).i32(window));
            long fkv = ctx.function("attention_train", "attn_bwd_dkv_" + t + "_d" + dpl);
            int smemKv = tileBytes(4, headDim, 4 * TILE);
            ctx.allowSharedMemory(fkv, smemKv);
            ctx.launch(fkv, new Dim3(tiles, kvHeads, batch), Dim3.of(THREADS), smemKv,
                    KernelArgs.of().ptr(CudaContext.ptr(q)).ptr(CudaContext.ptr(k)).ptr(CudaContext.ptr(v))
                            .ptr(CudaContext.ptrOrNull(segments)).ptr(CudaContext.ptr(gradOut)).ptr(CudaContext.ptr(lse))
                            .ptr(CudaContext.ptr(delta)).ptr(CudaContext.ptr(dk)).ptr(CudaContext.ptr(dv))
                            .i32(tokens).i32(heads).i32(kvHeads).i32(headDim).f32(scale).i32(window));
        } catch (RuntimeException e) {
            dq.close(); dk.close(); dv.close();
            throw e;
        }
        return new Tensor[] {dq, dk, dv};
    }
}
