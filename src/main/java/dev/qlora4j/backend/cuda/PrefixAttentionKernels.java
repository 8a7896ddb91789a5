package dev.qlora4j.backend.cuda;

import dev.qlora4j.backend.AttentionResult;
import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/**
 * Launchers of native/prefix_attention.cu (prefix tuning's attention over learned keys/values, see
 * Backend.prefixAttention). Inputs are already checked and in the activation dtype; accumulators F32.
 */
final class PrefixAttentionKernels {
    private PrefixAttentionKernels() {}

    private static final String MODULE = "prefix_attention";
    /** Warps of 32 lanes per block of the per-(token, head) kernels. */
    static final int WARPS = 4;
    /** Dims per lane the per-(token, head) kernels hold in registers (PA_MAX_DPL). */
    static final int MAX_HEAD_DIM = 32 * 8;
    /** At most this many token chunks of partial prefix gradients (fixed by N alone: deterministic). */
    static final int MAX_CHUNKS = 64;
    static final int MIN_ROWS_PER_CHUNK = 64;

    static void requireHeadDim(int headDim) {
        if (headDim > MAX_HEAD_DIM) {
            throw new IllegalArgumentException("CUDA prefix attention supports head_dim up to " + MAX_HEAD_DIM + ", got " + headDim
                    + "; train prefix tuning for this model with --device cpu");
        }
    }

    private static int pairBlocks(long pairs) {
        return Math.toIntExact((pairs + WARPS - 1) / WARPS);
    }

    static AttentionResult forward(CudaContext ctx, DType act, Tensor q, Tensor kp, Tensor vp, AttentionResult seq, int batch,
                                   int heads, int kvHeads, int headDim, float scale) {
        requireHeadDim(headDim);
        int n = q.dim(0), tokens = n / batch, p = kp.dim(0);
        Tensor out = ctx.empty(act, q.shape());
        Tensor lse = ctx.empty(DType.F32, batch, heads, tokens);
        if (n == 0) return new AttentionResult(out, lse);
        ctx.launch(ctx.function(MODULE, "prefix_attn_fwd_" + KernelTypes.act(act)), Dim3.of(pairBlocks((long) n * heads)),
                Dim3.of(32 * WARPS), 0,
                KernelArgs.of().ptr(CudaContext.ptr(q)).ptr(CudaContext.ptr(kp)).ptr(CudaContext.ptr(vp))
                        .ptr(CudaContext.ptr(seq.out())).ptr(CudaContext.ptr(seq.lse())).ptr(CudaContext.ptr(out))
                        .ptr(CudaContext.ptr(lse)).i32(n).i32(tokens).i32(heads).i32(kvHeads).i32(headDim).i32(p).f32(scale));
        return new AttentionResult(out, lse);
    }

    static void backward(CudaContext ctx, DType act, Tensor q, Tensor kp, Tensor vp, Tensor out, Tensor lse, Tensor gradOut,
                         Tensor gradQ, Tensor gradK, Tensor gradV, int batch, int heads, int kvHeads, int headDim, float scale) {
        requireHeadDim(headDim);
        int n = q.dim(0), tokens = n / batch, p = kp.dim(0);
        if (n == 0) return;
        String t = KernelTypes.act(act);
        int rowsPerChunk = Math.max(MIN_ROWS_PER_CHUNK, (n + MAX_CHUNKS - 1) / MAX_CHUNKS);
        int chunks = (n + rowsPerChunk - 1) / rowsPerChunk;
        long count = (long) p * kvHeads * headDim;
        try (Tensor probs = ctx.empty(DType.F32, n, heads, p); Tensor dScores = ctx.empty(DType.F32, n, heads, p);
             Tensor partK = ctx.empty(DType.F32, chunks, p, kvHeads * headDim);
             Tensor partV = ctx.empty(DType.F32, chunks, p, kvHeads * headDim)) {
            ctx.launch(ctx.function(MODULE, "prefix_attn_bwd_q_" + t), Dim3.of(pairBlocks((long) n * heads)), Dim3.of(32 * WARPS), 0,
                    KernelArgs.of().ptr(CudaContext.ptr(q)).ptr(CudaContext.ptr(kp)).ptr(CudaContext.ptr(vp))
                            .ptr(CudaContext.ptr(out)).ptr(CudaContext.ptr(lse)).ptr(CudaContext.ptr(gradOut))
                            .ptr(CudaContext.ptr(gradQ)).ptr(CudaContext.ptr(probs)).ptr(CudaContext.ptr(dScores))
                            .i32(n).i32(tokens).i32(heads).i32(kvHeads).i32(headDim).i32(p).f32(scale));
            int threads = Math.min(256, (headDim + 31) / 32 * 32);
            ctx.launch(ctx.function(MODULE, "prefix_attn_bwd_kv_part_" + t), new Dim3(p * kvHeads, chunks, 1), Dim3.of(threads), 0,
                    KernelArgs.of().ptr(CudaContext.ptr(q)).ptr(CudaContext.ptr(gradOut)).ptr(CudaContext.ptr(probs))
                            .ptr(CudaContext.ptr(dScores)).ptr(CudaContext.ptr(partK)).ptr(CudaContext.ptr(partV))
                            .i32(n).i32(heads).i32(kvHeads).i32(headDim).i32(p).i32(rowsPerChunk));
            ctx.launch1d(ctx.function(MODULE, "prefix_attn_bwd_kv_sum"), count,
                    KernelArgs.of().ptr(CudaContext.ptr(partK)).ptr(CudaContext.ptr(partV)).ptr(CudaContext.ptr(gradK))
                            .ptr(CudaContext.ptr(gradV)).i64(count).i32(chunks));
        }
    }
}
