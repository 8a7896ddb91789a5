package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.Tensor;

/**
 * The warp-specialized training-attention forward on Hopper (native/attention_fwd_ws.cuh, flash-attention 3's
 * structure: a producer warpgroup copies 128-key K and V tiles into a two-stage ring, two consumer warpgroups of 64
 * queries each run the products and the softmax). It computes what attn_wg_fwd computes, for causal attention
 * without a window or segment ids at head dim 128 (the training step of every Llama shape); other calls keep
 * attn_wg_fwd. Numerics: the running max moves once per 128 keys instead of 64, so O and lse agree with attn_wg_fwd
 * to rounding, not bit for bit.
 *
 * <p>Measured (H200, B 1, T 2,048, 32 heads of 128): 0.110-0.113 ms against attn_wg_fwd's 0.143 (cuDNN through
 * PyTorch: 0.083). {@code -Dqlora4j.attention.wsForward=false} keeps attn_wg_fwd everywhere (A/B runs), read at every
 * call.
 */
final class TrainAttentionWsForward {
    private TrainAttentionWsForward() {}

    static final String PROPERTY = "qlora4j.attention.wsForward";
    /** Queries per block and keys per ring stage (native/attention_fwd_ws.cuh, fws::ROWS). */
    static final int ROWS = 128;
    static final int HEAD_DIM = 128;
    /** Two consumer warpgroups and the producer warpgroup. */
    static final int THREADS = 384;
    /** fws::SMEM_BYTES: 1 KB of alignment slack, Q, two K and two V tiles of 128 x 128 16-bit values, 8 mbarriers. */
    static final int SHARED_BYTES = 1024 + 5 * ROWS * HEAD_DIM * 2 + 8 * 8;

    /**
     * Whether this call runs the warp-specialized forward: tcPrefix is the tensor-core family TrainAttentionKernels
     * chose ("attn_wg_" on Hopper's sm90a build).
     */
    static boolean applies(CudaContext ctx, String tcPrefix, int headDim, Tensor segments, int window) {
        return tcPrefix.equals("attn_wg_") && headDim == HEAD_DIM && segments == null && window <= 0
                && SHARED_BYTES <= ctx.properties().maxSharedMemoryPerBlockOptin() && Switches.on(PROPERTY, true);
    }

    /** Grid (heads x batch, query tiles): the heaviest tile of every head first, as TrainAttentionKernels.tcGrid. */
    static Dim3 grid(int heads, int batch, int tokens) {
        int tiles = (tokens + ROWS - 1) / ROWS;
        long x = (long) heads * batch;
        if (tiles > 65_535 || x > Integer.MAX_VALUE) {
            throw new IllegalArgumentException("attention over " + batch + " rows of " + tokens + " tokens and " + heads
                    + " heads is too large for one launch; split the batch or the sequence");
        }
        return new Dim3((int) x, tiles, 1);
    }

    /** out = softmax(q k^T scale, causal) v and lse, as attn_wg_fwd writes them; type is "bf16" or "f16". */
    static void launch(CudaContext ctx, String type, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,
                       int batch, int heads, int kvHeads, float scale) {
        int tokens = q.dim(0) / batch;
        long f = ctx.function("attention_tc", "attn_ws_fwd_" + type + "_d" + HEAD_DIM);
        ctx.allowSharedMemory(f, SHARED_BYTES);
        ctx.launch(f, grid(heads, batch, tokens), Dim3.of(THREADS), SHARED_BYTES, KernelArgs.of()
                .ptr(CudaContext.ptr(q)).ptr(CudaContext.ptr(k)).ptr(CudaContext.ptr(v)).ptr(CudaContext.ptr(out))
                .ptr(CudaContext.ptr(lse)).i32(tokens).i32(heads).i32(kvHeads).f32(scale));
    }
}
