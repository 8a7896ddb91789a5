package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.Tensor;

/**
 * The warp-specialized dK/dV backward on Hopper (native/attention_bwd_ws.cuh, flash-attention 3's structure: a
 * producer warpgroup copies the Q and dO tiles of every query tile that sees the block's 128 keys into a three-stage
 * ring, two consumer warpgroups of 64 keys each run attn_wg_dkv's tile work on them). It replaces attn_wg_dkv (dS
 * recomputed by attn_wg_dq) and attn_wg_dkvs (dS stored for attn_wg_dqs) for the cases the warp-specialized forward
 * takes: causal attention without a window or segment ids at head dim 128. Same bits as the kernels it replaces (the
 * same tile products in the same order), so which one ran never shows.
 *
 * <p>{@code -Dqlora4j.attention.wsBackward=false} keeps attn_wg_dkv(s) everywhere (A/B runs), read at every call.
 */
final class TrainAttentionWsBackward {
    private TrainAttentionWsBackward() {}

    static final String PROPERTY = "qlora4j.attention.wsBackward";
    static final int HEAD_DIM = 128;
    /** Two consumer warpgroups and the producer warpgroup. */
    static final int THREADS = 384;
    private static final int TILE_BYTES = 64 * HEAD_DIM * 2;
    private static final int STAGES = 3;
    /**
     * bws::SMEM_BYTES: 1 KB of alignment slack, K and V (two 64-row tiles each), per stage a Q and a dO tile and 64
     * lse + 64 delta floats, and two mbarriers per stage.
     */
    static final int SHARED_BYTES = 1024 + 4 * TILE_BYTES + STAGES * (2 * TILE_BYTES + 128 * 4) + 2 * STAGES * 8;

    /** Whether this backward call runs the warp-specialized dK/dV kernel (tcPrefix as for the forward). */
    static boolean applies(CudaContext ctx, String tcPrefix, int headDim, Tensor segments, int window) {
        return tcPrefix.equals("attn_wg_") && headDim == HEAD_DIM && segments == null && window <= 0
                && SHARED_BYTES <= ctx.properties().maxSharedMemoryPerBlockOptin() && Switches.on(PROPERTY, true);
    }

    /** Grid (kv heads x batch, key blocks of 128 = bws::KEYS): the block every query tile sees first. */
    static Dim3 grid(int kvHeads, int batch, int tokens) {
        return TrainAttentionWsForward.grid(kvHeads, batch, tokens);   // the same shape: 128-row tiles x (heads, rows)
    }

    /**
     * dK and dV (and, when ds is not null, every dS tile into ds for attn_wg_dqs) from q, k, v, the output gradient,
     * lse and delta; type is "bf16" or "f16".
     */
    static void launch(CudaContext ctx, String type, Tensor q, Tensor k, Tensor v, Tensor gradOut, Tensor lse,
                       Tensor delta, Tensor dk, Tensor dv, Tensor ds, int batch, int heads, int kvHeads, float scale) {
        launch(ctx, type, q, k, v, gradOut, lse, delta, CudaContext.ptr(dk), CudaContext.ptr(dv), kvHeads * HEAD_DIM, ds,
                batch, heads, kvHeads, scale);
    }

    /** The same with dK and dV written at device addresses dk and dv, rows of stride ldkv elements (16-byte aligned). */
    static void launch(CudaContext ctx, String type, Tensor q, Tensor k, Tensor v, Tensor gradOut, Tensor lse,
                       Tensor delta, long dk, long dv, int ldkv, Tensor ds, int batch, int heads, int kvHeads, float scale) {
        int tokens = q.dim(0) / batch;
        long f = ctx.function("attention_tc", (ds != null ? "attn_ws_dkvs_" : "attn_ws_dkv_") + type + "_d" + HEAD_DIM);
        ctx.allowSharedMemory(f, SHARED_BYTES);
        KernelArgs args = KernelArgs.of().ptr(CudaContext.ptr(q)).ptr(CudaContext.ptr(k)).ptr(CudaContext.ptr(v))
                .ptr(CudaContext.ptr(gradOut)).ptr(CudaContext.ptr(lse)).ptr(CudaContext.ptr(delta)).ptr(dk).ptr(dv);
        if (ds != null) args.ptr(CudaContext.ptr(ds));
        ctx.launch(f, grid(kvHeads, batch, tokens), Dim3.of(THREADS), SHARED_BYTES,
                args.i32(tokens).i32(heads).i32(kvHeads).i32(ldkv).f32(scale));
    }
}
