package dev.qlora4j.backend.cuda;

import dev.qlora4j.backend.AttentionResult;
import dev.qlora4j.cuda.AllocatorStats;
import dev.qlora4j.cuda.CudaException;
import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/**
 * Launchers of the training attention (no KV cache): forward with saved log-sum-exp, and its backward (delta =
 * dO . O, then dQ per query tile and dK, dV per key tile). Inputs are already checked (shapes as
 * {@code Backend.attentionTrain} says) and in the activation dtype.
 *
 * <p>Two kernel families compute the same function: native/attention_tc.cu (flash-attention 2 on bf16/f16 tensor
 * cores: BF16 or F16 activations, head dim 64 or 128, 16-byte aligned tensors, scale > 0, compute capability 8.0
 * or newer) and native/attention_train.cu (float32 on the CUDA cores: every other case, F32 activations
 * included). The tensor-core kernels are chosen whenever they apply; the system property
 * {@code qlora4j.attention.train} = {@code tc} or {@code simt} forces one family (benchmarks, debugging), read
 * at every call. Forcing {@code tc} where it does not apply is an error that says why.
 *
 * <p>On Hopper (the sm90a build of attention_tc) the tensor-core family runs as {@code attn_wg_*}: the same
 * tiles and numerics with warpgroup MMAs (wgmma) instead of mma.sync, when {@code -Dqlora4j.attention.wgmma=true}
 * ({@link #WGMMA_DEFAULT} otherwise; A/B runs, tests of both).
 *
 * <p>Stored dS (wgmma kernels, causal without a window, {@link #STORED_DS_PROPERTY}): the dK/dV kernel also writes
 * every dS tile it forms into a scratch buffer, and the dQ kernel multiplies those by K instead of recomputing S, P,
 * dP and dS: 5 matmuls per tile pair instead of 7, for {@link #storedDsBytes} of scratch (138 MB per layer at
 * Llama-7B's 32 heads and 2,048 tokens), taken only where it does not raise the memory a step peaks at
 * ({@link #storedDsFits}). The recomputing dQ kernel forms dS as the dK/dV kernel does (from P rounded to bf16), so
 * both give dQ the same bits, and which one a call takes never shows in the gradients.
 */
final class TrainAttentionKernels {
    private TrainAttentionKernels() {}

    static final int TILE = 32;
    static final int THREADS = 256;
    /** The largest head dim the float32 kernels hold in registers (8 floats per lane). */
    static final int MAX_HEAD_DIM = 256;

    /** System property that forces a kernel family: "tc" (tensor cores) or "simt" (float32 CUDA cores). */
    static final String MODE_PROPERTY = "qlora4j.attention.train";
    /** -Dqlora4j.attention.wgmma=true|false: the wgmma or the mma.sync kernels on Hopper (read at every call). */
    static final String WGMMA_PROPERTY = "qlora4j.attention.wgmma";
    /** On: 0.174 / 0.586 ms against 0.205 / 0.807 ms (forward / backward, Llama-7B shape; native/NOTES-attention.md). */
    static final boolean WGMMA_DEFAULT = true;
    /** -Dqlora4j.attention.storedDs=true|false: the stored-dS backward where it applies (read at every call). */
    static final String STORED_DS_PROPERTY = "qlora4j.attention.storedDs";
    /** The head dim the wgmma kernels run (at 64 their forward fails the GPU tests with several key tiles: open). */
    static final int WGMMA_HEAD_DIM = 128;
    /** Query and key rows per tile of the tensor-core kernels, and their block size (4 warps x 16 rows). */
    static final int TC_TILE = 64;
    static final int TC_THREADS = 128;

    /** Dims per lane of the float32 kernel variant: 2, 4 or 8 (headDim <= 64, 128, 256). */
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

    // ---- kernel family selection ----

    /** "bf16" or "f16": the tensor-core kernels' element type, or null for other dtypes. */
    private static String tcType(DType act) {
        return switch (act) {
            case BF16 -> "bf16";
            case F16 -> "f16";
            default -> null;
        };
    }

    /**
     * Shared-memory bytes of a tensor-core kernel: `tiles` tiles of 64 rows padded to D + 8 elements, plus floats.
     * The same size serves the wgmma kernels: their unpadded tiles leave 8 x 64 x 2 bytes per tile for the up to
     * 1023 bytes they skip to align their swizzled tiles to 1024 bytes (attention_tc.cu, tiles_base).
     */
    /** The dS tiles attn_wg_dqs_* keeps in flight in shared memory (attention_tc.cu's DQS_STAGES). */
    private static final int DQS_STAGES = 4;

    static int tcSharedBytes(int tiles, int headDim, int extraFloats) {
        return tiles * TC_TILE * (headDim + 8) * 2 + extraFloats * 4;
    }

    /** The largest shared memory the tensor-core kernels ask for at this head dim (the dK/dV kernel's). */
    private static int tcMaxSharedBytes(int headDim) {
        return tcSharedBytes(6, headDim, 4 * TC_TILE);
    }

    /** Why the tensor-core kernels cannot run this call, or null when they can. */
    static String tcUnsupportedReason(CudaContext ctx, DType act, int headDim, float scale, Tensor... tensors) {
        if (tcType(act) == null) return "activations are " + act + ", not BF16 or F16";
        if (headDim != 64 && headDim != 128) return "head dim " + headDim + " is not 64 or 128";
        if (!(scale > 0) || Float.isInfinite(scale)) return "scale " + scale + " is not a positive finite number";
        if (ctx.properties().computeCapability() < 80) {
            return ctx.properties().name() + " has compute capability " + ctx.properties().computeCapability()
                    + "; mma.sync bf16 needs 8.0 or newer";
        }
        if (tcMaxSharedBytes(headDim) > ctx.properties().maxSharedMemoryPerBlockOptin()) {
            return "the kernels need " + tcMaxSharedBytes(headDim) + " bytes of shared memory per block and "
                    + ctx.properties().name() + " allows " + ctx.properties().maxSharedMemoryPerBlockOptin();
        }
        for (Tensor t : tensors) {
            if (t != null && (CudaContext.ptr(t) & 15) != 0) return t + " does not start 16-byte aligned";
        }
        return null;
    }

    /** True when this call runs on the tensor-core kernels (see the class comment); tensors: every tensor read or written. */
    static boolean useTensorCores(CudaContext ctx, DType act, int headDim, float scale, Tensor... tensors) {
        String mode = System.getProperty(MODE_PROPERTY, "auto");
        switch (mode) {
            case "simt":
                return false;
            case "tc": {
                String why = tcUnsupportedReason(ctx, act, headDim, scale, tensors);
                if (why != null) {
                    throw new IllegalArgumentException("-D" + MODE_PROPERTY + "=tc asks for the tensor-core training "
                            + "attention, but " + why + "; drop the property (or set it to simt) to use the float32 kernels");
                }
                return true;
            }
            case "auto":
                return tcUnsupportedReason(ctx, act, headDim, scale, tensors) == null;
            default:
                throw new IllegalArgumentException("-D" + MODE_PROPERTY + "=" + mode + " is not tc, simt or auto");
        }
    }

    /**
     * "attn_wg_" (wgmma: Hopper's sm90a build, head dim {@link #WGMMA_HEAD_DIM}, unless turned off) or "attn_tc_"
     * (mma.sync): the tensor-core kernels' prefix.
     */
    static String tcKernelPrefix(CudaContext ctx, int headDim) {
        return headDim == WGMMA_HEAD_DIM && Switches.on(WGMMA_PROPERTY, WGMMA_DEFAULT) && ctx.hopperBuild("attention_tc")
                ? "attn_wg_" : "attn_tc_";
    }

    // ---- launchers ----

    /**
     * The grid of the tensor-core kernels: (heads x batch, tiles). The scheduler issues blocks x-fastest, so every
     * head's heaviest tile starts before any lighter one (attention_tc.cu, tile_rank_grid): at batch 1 the grid with
     * the tile in x left the last heads' heaviest tiles for the end. grid.y is at most 65,535 tiles (4.2M tokens).
     */
    static Dim3 tcGrid(int heads, int batch, int tokens) {
        int tiles = (tokens + TC_TILE - 1) / TC_TILE;
        if (tiles > 65_535) {
            throw new IllegalArgumentException("attention over " + tokens + " tokens per row: at most " + 65_535L * TC_TILE
                    + " (the kernels' grid); split the sequence into shorter rows");
        }
        long x = (long) heads * batch;
        if (x > Integer.MAX_VALUE) throw new IllegalArgumentException("attention: heads x batch = " + x + " is too large for one launch");
        return new Dim3((int) x, tiles, 1);
    }

    static AttentionResult forward(CudaContext ctx, DType act, Tensor q, Tensor k, Tensor v, Tensor segments, int batch,
                                   int heads, int kvHeads, int headDim, float scale, int window) {
        int tokens = q.dim(0) / batch;
        boolean tc = useTensorCores(ctx, act, headDim, scale, q, k, v);
        int dpl = tc ? 0 : dimsPerLane(headDim);
        Tensor out = ctx.empty(act, q.shape());
        Tensor lse = ctx.empty(DType.F32, batch, heads, tokens);
        if (tokens == 0) return new AttentionResult(out, lse);
        KernelArgs args = KernelArgs.of().ptr(CudaContext.ptr(q)).ptr(CudaContext.ptr(k)).ptr(CudaContext.ptr(v))
                .ptr(CudaContext.ptrOrNull(segments)).ptr(CudaContext.ptr(out)).ptr(CudaContext.ptr(lse))
                .i32(tokens).i32(heads).i32(kvHeads);
        if (tc) {
            if (TrainAttentionWsForward.applies(ctx, tcKernelPrefix(ctx, headDim), headDim, segments, window)) {
                TrainAttentionWsForward.launch(ctx, tcType(act), q, k, v, out, lse, batch, heads, kvHeads, scale);
                return new AttentionResult(out, lse);
            }
            long f = ctx.function("attention_tc", tcKernelPrefix(ctx, headDim) + "fwd_" + tcType(act) + "_d" + headDim);
            int smem = tcSharedBytes(5, headDim, 0);
            ctx.allowSharedMemory(f, smem);
            ctx.launch(f, tcGrid(heads, batch, tokens), Dim3.of(TC_THREADS), smem, args.f32(scale).i32(window));
            return new AttentionResult(out, lse);
        }
        long f = ctx.function("attention_train", "attn_train_fwd_" + KernelTypes.act(act) + "_d" + dpl);
        int smem = tileBytes(3, headDim, 2 * TILE);
        ctx.allowSharedMemory(f, smem);
        ctx.launch(f, new Dim3((tokens + TILE - 1) / TILE, heads, batch), Dim3.of(THREADS), smem,
                args.i32(headDim).f32(scale).i32(window));
        return new AttentionResult(out, lse);
    }

    /** Bytes of the stored-dS scratch: one 64 x 64 tile of act per causal (query tile, key tile) pair and query head. */
    static long storedDsBytes(int batch, int heads, int tokens) {
        long tiles = (tokens + TC_TILE - 1) / TC_TILE;
        return (long) batch * heads * (tiles * (tiles + 1) / 2) * TC_TILE * TC_TILE * 2;
    }

    /** The largest stored-dS scratch: 1/64 of the device's memory, at least 256 MiB (2.2 GB on an H200). */
    static long storedDsBudget(CudaContext ctx) {
        return Math.max(256L << 20, ctx.properties().totalMemoryBytes() / 64);
    }

    /**
     * Whether a stored-dS scratch of the given bytes may be taken now: at most budget, and with the bytes already
     * allocated, at most the allocator's peak so far (or budget, while the peak is still below it). Why: the scratch
     * buys speed only; it must not raise the memory a training step peaks at (Llama-7B, checkpointing: 5.93 GiB
     * without it, 6.05 GiB with it in every layer; splitting it over the heads instead cost more than it saved:
     * 0.50 ms for the backward in 3 launch pairs against 0.36 in one). Late layers' backwards, which run after the
     * step's peak with their kept activations released, take it; the first ones may recompute dS.
     */
    static boolean storedDsFits(long scratch, long allocated, long peak, long budget) {
        return scratch <= budget && allocated + scratch <= Math.max(peak, budget);
    }

    /** Whether this backward call stores dS (see the class comment): prefix is the tensor-core kernels' prefix. */
    static boolean storesDs(CudaContext ctx, String prefix, int window, int batch, int heads, int tokens) {
        if (!prefix.equals("attn_wg_") || window > 0 || !Switches.on(STORED_DS_PROPERTY, true)) return false;
        AllocatorStats st = ctx.allocator().stats();
        return storedDsFits(storedDsBytes(batch, heads, tokens), st.allocatedBytes(), st.peakAllocatedBytes(),
                storedDsBudget(ctx));
    }

    /** {dQ, dK, dV} shaped like q, k, v, in act. */
    static Tensor[] backward(CudaContext ctx, DType act, Tensor q, Tensor k, Tensor v, Tensor segments, Tensor out,
                             Tensor lse, Tensor gradOut, int batch, int heads, int kvHeads, int headDim, float scale,
                             int window) {
        int tokens = q.dim(0) / batch;
        boolean tc = useTensorCores(ctx, act, headDim, scale, q, k, v, out, gradOut);
        int dpl = tc ? 0 : dimsPerLane(headDim);
        String t = tc ? tcType(act) : KernelTypes.act(act);
        Tensor dq = ctx.empty(act, q.shape()), dk = ctx.empty(act, k.shape()), dv = ctx.empty(act, v.shape());
        if (tokens == 0) return new Tensor[] {dq, dk, dv};
        try (Tensor delta = ctx.empty(DType.F32, batch, heads, tokens)) {
            if (tc && (CudaContext.ptr(dq) & 15 | CudaContext.ptr(dk) & 15 | CudaContext.ptr(dv) & 15) != 0) {
                throw new IllegalStateException("the allocator returned a gradient buffer that is not 16-byte aligned");
            }
            String module = tc ? "attention_tc" : "attention_train";
            launchDelta(ctx, tc, t, out, gradOut, delta, batch, tokens, heads, headDim);
            int tile = tc ? TC_TILE : TILE;
            int tiles = (tokens + tile - 1) / tile;
            Dim3 block = Dim3.of(tc ? TC_THREADS : THREADS);
            String prefix = tc ? tcKernelPrefix(ctx, headDim) : "attn_bwd_";
            Tensor ds = tc && storesDs(ctx, prefix, window, batch, heads, tokens)
                    ? storedDsScratch(ctx, act, batch, heads, tokens) : null;   // null: recompute dS
            if (ds != null) {
                try (ds) {
                    storedDsBackward(ctx, t, q, k, v, segments, lse, delta, gradOut, ds, dq, dk, dv, batch, heads,
                            kvHeads, headDim, scale);
                }
                return new Tensor[] {dq, dk, dv};
            }
            long fq = ctx.function(module, prefix + "dq_" + t + "_d" + (tc ? headDim : dpl));
            int smemQ = tc ? tcSharedBytes(6, headDim, 0) : tileBytes(4, headDim, 2 * TILE);
            ctx.allowSharedMemory(fq, smemQ);
            KernelArgs qArgs = KernelArgs.of().ptr(CudaContext.ptr(q)).ptr(CudaContext.ptr(k)).ptr(CudaContext.ptr(v))
                    .ptr(CudaContext.ptrOrNull(segments)).ptr(CudaContext.ptr(gradOut)).ptr(CudaContext.ptr(lse))
                    .ptr(CudaContext.ptr(delta)).ptr(CudaContext.ptr(dq)).i32(tokens).i32(heads).i32(kvHeads);
            if (!tc) qArgs.i32(headDim);
            ctx.launch(fq, tc ? tcGrid(heads, batch, tokens) : new Dim3(tiles, heads, batch), block, smemQ,
                    qArgs.f32(scale).i32(window));
            if (tc && TrainAttentionWsBackward.applies(ctx, prefix, headDim, segments, window)) {
                TrainAttentionWsBackward.launch(ctx, t, q, k, v, gradOut, lse, delta, dk, dv, null, batch, heads,
                        kvHeads, scale);
                return new Tensor[] {dq, dk, dv};
            }
            long fkv = ctx.function(module, prefix + "dkv_" + t + "_d" + (tc ? headDim : dpl));
            int smemKv = tc ? tcMaxSharedBytes(headDim) : tileBytes(4, headDim, 4 * TILE);
            ctx.allowSharedMemory(fkv, smemKv);
            KernelArgs kvArgs = KernelArgs.of().ptr(CudaContext.ptr(q)).ptr(CudaContext.ptr(k)).ptr(CudaContext.ptr(v))
                    .ptr(CudaContext.ptrOrNull(segments)).ptr(CudaContext.ptr(gradOut)).ptr(CudaContext.ptr(lse))
                    .ptr(CudaContext.ptr(delta)).ptr(CudaContext.ptr(dk)).ptr(CudaContext.ptr(dv))
                    .i32(tokens).i32(heads).i32(kvHeads);
            if (!tc) kvArgs.i32(headDim);
            ctx.launch(fkv, tc ? tcGrid(kvHeads, batch, tokens) : new Dim3(tiles, kvHeads, batch), block, smemKv,
                    kvArgs.f32(scale).i32(window));
        } catch (RuntimeException e) {
            dq.close(); dk.close(); dv.close();
            throw e;
        }
        return new Tensor[] {dq, dk, dv};
    }

    /**
     * The stored-dS scratch ({@link #storedDsBytes} of act), or null when the GPU cannot hold it now: out of memory
     * the recomputing dQ kernel, which needs none, runs instead.
     */
    private static Tensor storedDsScratch(CudaContext ctx, DType act, int batch, int heads, int tokens) {
        int tileValues = TC_TILE * TC_TILE;
        long tiles = storedDsBytes(batch, heads, tokens) / 2 / tileValues;
        try {
            return ctx.empty(act, (int) tiles, tileValues);
        } catch (CudaException e) {
            if (e.isOutOfMemory()) return null;
            throw e;
        }
    }

    /** The stored-dS backward (attn_wg_dkvs_* then attn_wg_dqs_*) with its scratch ds: delta is already formed. */
    private static void storedDsBackward(CudaContext ctx, String t, Tensor q, Tensor k, Tensor v, Tensor segments,
                                         Tensor lse, Tensor delta, Tensor gradOut, Tensor ds, Tensor dq, Tensor dk,
                                         Tensor dv, int batch, int heads, int kvHeads, int headDim, float scale) {
        int tokens = q.dim(0) / batch;
        if (TrainAttentionWsBackward.applies(ctx, "attn_wg_", headDim, segments, 0)) {
            TrainAttentionWsBackward.launch(ctx, t, q, k, v, gradOut, lse, delta, dk, dv, ds, batch, heads, kvHeads,
                    scale);
        } else {
            long fkv = ctx.function("attention_tc", "attn_wg_dkvs_" + t + "_d" + headDim);
            int smemKv = tcMaxSharedBytes(headDim);
            ctx.allowSharedMemory(fkv, smemKv);
            ctx.launch(fkv, tcGrid(kvHeads, batch, tokens), Dim3.of(TC_THREADS), smemKv, KernelArgs.of()
                    .ptr(CudaContext.ptr(q)).ptr(CudaContext.ptr(k)).ptr(CudaContext.ptr(v))
                    .ptr(CudaContext.ptrOrNull(segments)).ptr(CudaContext.ptr(gradOut)).ptr(CudaContext.ptr(lse))
                    .ptr(CudaContext.ptr(delta)).ptr(CudaContext.ptr(dk)).ptr(CudaContext.ptr(dv))
                    .ptr(CudaContext.ptr(ds)).i32(tokens).i32(heads).i32(kvHeads).f32(scale));
        }
        storedDsQuery(ctx, t, k, segments, ds, CudaContext.ptr(dq), heads * headDim, batch, heads, kvHeads, headDim, scale);
    }

    /** attn_wg_dqs_*: dQ from the stored dS tiles, written at device address dq in rows of stride ldq elements. */
    private static void storedDsQuery(CudaContext ctx, String t, Tensor k, Tensor segments, Tensor ds, long dq, int ldq,
                                      int batch, int heads, int kvHeads, int headDim, float scale) {
        int tokens = k.dim(0) / batch;
        long fq = ctx.function("attention_tc", "attn_wg_dqs_" + t + "_d" + headDim);
        // two K tiles (+ the 1 KB the swizzle alignment may skip), then the ring of dS tiles (attention_tc.cu's DQS_STAGES)
        int smemQ = tcSharedBytes(2, headDim, 0) + DQS_STAGES * TC_TILE * TC_TILE * 2;
        ctx.allowSharedMemory(fq, smemQ);
        ctx.launch(fq, tcGrid(heads, batch, tokens), Dim3.of(TC_THREADS), smemQ, KernelArgs.of()
                .ptr(CudaContext.ptr(k)).ptr(CudaContext.ptrOrNull(segments)).ptr(CudaContext.ptr(ds))
                .ptr(dq).i32(ldq).i32(tokens).i32(heads).i32(kvHeads).f32(scale));
    }

    /**
     * The backward with its three gradients in one buffer [n, (heads + 2 kvHeads) headDim]: dQ's columns, then dK's,
     * then dV's (the layout the joined q/k/v input-gradient GEMM reads, see LoraGroup#backwardJoined), from the same
     * kernels as {@link #backward} with row strides; the same values. Only where those kernels are the warp-specialized
     * dK/dV and the stored-dS dQ (Hopper, head dim 128, causal without a window or packed segments, the dS scratch
     * fits); else null, with nothing run.
     */
    static Tensor backwardJoined(CudaContext ctx, DType act, Tensor q, Tensor k, Tensor v, Tensor segments, Tensor out,
                                 Tensor lse, Tensor gradOut, int batch, int heads, int kvHeads, int headDim, float scale,
                                 int window) {
        int tokens = q.dim(0) / batch;
        if (tokens == 0 || !useTensorCores(ctx, act, headDim, scale, q, k, v, out, gradOut)) return null;
        String prefix = tcKernelPrefix(ctx, headDim);
        if (!TrainAttentionWsBackward.applies(ctx, prefix, headDim, segments, window)) return null;
        String t = tcType(act);
        int width = (heads + 2 * kvHeads) * headDim;
        Tensor g = ctx.empty(act, q.dim(0), width);
        // the scratch rule as backward applies it (there with dQ, dK, dV allocated: here with g)
        if (!storesDs(ctx, prefix, window, batch, heads, tokens)) {
            g.close();
            return null;
        }
        try (Tensor ds = storedDsScratch(ctx, act, batch, heads, tokens);
             Tensor delta = ctx.empty(DType.F32, batch, heads, tokens)) {
            if (ds == null) {
                g.close();
                return null;
            }
            launchDelta(ctx, true, t, out, gradOut, delta, batch, tokens, heads, headDim);
            long dq = CudaContext.ptr(g), dk = dq + (long) heads * headDim * act.byteSize();
            long dv = dk + (long) kvHeads * headDim * act.byteSize();
            TrainAttentionWsBackward.launch(ctx, t, q, k, v, gradOut, lse, delta, dk, dv, width, ds, batch, heads, kvHeads,
                    scale);
            storedDsQuery(ctx, t, k, segments, ds, dq, width, batch, heads, kvHeads, headDim, scale);
        } catch (RuntimeException e) {
            g.close();
            throw e;
        }
        return g;
    }

    /** delta = rowsum(dO * O) per query and head (attn_tc_delta_* / attn_bwd_delta_*; native/attention_delta.cuh). */
    private static void launchDelta(CudaContext ctx, boolean tc, String t, Tensor out, Tensor gradOut, Tensor delta,
                                    int batch, int tokens, int heads, int headDim) {
        long warps = (long) batch * tokens * heads;
        ctx.launch1d(ctx.function(tc ? "attention_tc" : "attention_train", (tc ? "attn_tc_delta_" : "attn_bwd_delta_") + t),
                warps * 32, KernelArgs.of().ptr(CudaContext.ptr(out)).ptr(CudaContext.ptr(gradOut))
                        .ptr(CudaContext.ptr(delta)).i32(batch).i32(tokens).i32(heads).i32(headDim));
    }
}
