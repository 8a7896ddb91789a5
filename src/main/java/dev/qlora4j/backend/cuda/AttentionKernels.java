package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Arrays;

/**
 * Launchers of native/attention.cu: the cache write, flash prefill (T > 1) and split-K decode (T = 1)
 * with its combine step. See the .cu file for the tiling.
 */
final class AttentionKernels {
    private AttentionKernels() {}

    /** Head dimensions the kernels are compiled for (a template parameter: registers are sized by it). */
    static final int[] HEAD_DIMS = {16, 32, 64, 96, 128, 256};
    static final int THREADS = 128;
    /** Most query heads one decode block serves (the largest DEC_GMAX instance in attention.cu). */
    static final int DECODE_HEADS_PER_BLOCK = 8;

    /** Query heads per decode block: the smallest of 1, 2, 4, 8 that holds a kv head's group, else 8. */
    static int decodeHeadsPerBlock(int heads, int kvHeads) {
        int group = heads / kvHeads;
        int gm = 1;
        while (gm < group && gm < DECODE_HEADS_PER_BLOCK) gm *= 2;
        return gm;
    }
    /**
     * Fewest cache slots worth a split of their own in decode (-Dqlora4j.attention.decodeMinSlots). 64 measured
     * best on the H200 (Llama-7B NF4, 1,024 new tokens: 220.5 tokens/s vs 215.8 with 256; no change at 128).
     */
    static final int MIN_SLOTS_PER_SPLIT = Integer.getInteger("qlora4j.attention.decodeMinSlots", 64);
    /**
     * -Dqlora4j.attention.decodePrefetch=false: the decode kernel does not ask L2 for its cache rows before waiting
     * for the previous kernel (native/attention.cu, prefetch_decode_rows; Hopper builds only). For A/B runs.
     */
    static final String DECODE_PREFETCH_PROPERTY = "qlora4j.attention.decodePrefetch";
    static final int MAX_SPLITS = 64;
    /**
     * Capacities up to this many slots decode in one split (no partial states, arrival counter or merge: ~1.5 us less
     * a layer on the H200) with 8 warps a block where the head dim allows (native/attention.cu, _w8: the 256 slots in
     * one pass of the warps). -Dqlora4j.attention.decodeOneSplitSlots=0 for the former splits (A/B).
     */
    static final int ONE_SPLIT_SLOTS = Integer.getInteger("qlora4j.attention.decodeOneSplitSlots", 256);
    /** Head dims of the 8-warp decode kernels. */
    static final int EIGHT_WARPS_MAX_HEAD_DIM = 128;

    /** Checked sizes of one call. */
    record Shape(int batch, int tokens, int heads, int kvHeads, int headDim, int capacity) {}

    static Shape check(Tensor q, Tensor k, Tensor v, CudaKvCache c, DType act, int start, Tensor padStart, int heads,
                       int kvHeads, int headDim) {
        KernelTypes.requireRank(q, 2, "attention q");
        KernelTypes.requireRank(k, 2, "attention k");
        KernelTypes.requireSameShape(k, v, "attention k and v");
        KernelTypes.requireIndices(padStart, "attention padStart");
        for (Tensor t : new Tensor[] {q, k, v}) {
            if (t.dtype() != act) throw new IllegalArgumentException("attention inputs must be " + act + ", got " + t);
        }
        if (c.dtype() != act) {
            throw new IllegalArgumentException("attention: the KV cache holds " + c.dtype() + " but activations are " + act);
        }
        if (heads < 1 || kvHeads < 1 || heads % kvHeads != 0) {
            throw new IllegalArgumentException("attention: heads (" + heads + ") must be a positive multiple of kvHeads ("
                    + kvHeads + ")");
        }
        if (c.kvHeads() != kvHeads || c.headDim() != headDim) {
            throw new IllegalArgumentException("attention: KV cache has kvHeads=" + c.kvHeads() + " headDim="
                    + c.headDim() + " but the call has kvHeads=" + kvHeads + " headDim=" + headDim);
        }
        if (Arrays.stream(HEAD_DIMS).noneMatch(d -> d == headDim)) {
            throw new IllegalArgumentException("attention: headDim " + headDim + " has no CUDA kernel; supported: "
                    + Arrays.toString(HEAD_DIMS) + " (add it to QL_ATTN in native/attention.cu)");
        }
        int batch = c.batch();
        if (padStart.dim(0) != batch) {
            throw new IllegalArgumentException("attention: padStart has " + padStart.dim(0)
                    + " entries but the KV cache batch is " + batch);
        }
        if (q.dim(1) != heads * headDim || k.dim(1) != kvHeads * headDim) {
            throw new IllegalArgumentException("attention: q " + KernelTypes.shape(q) + " and k " + KernelTypes.shape(k)
                    + " must be [B*T, " + heads + "*" + headDim + "] and [B*T, " + kvHeads + "*" + headDim + "]");
        }
        if (q.dim(0) != k.dim(0) || q.dim(0) % batch != 0 || q.dim(0) == 0) {
            throw new IllegalArgumentException("attention: q " + KernelTypes.shape(q) + " and k " + KernelTypes.shape(k)
                    + " must both have B*T rows (T >= 1) with B = " + batch + " (the KV cache batch)");
        }
        int tokens = q.dim(0) / batch;
        if (start < 0 || start + tokens > c.capacity()) {
            throw new IllegalArgumentException("attention: slots [" + start + ", " + (start + tokens)
                    + ") do not fit the KV cache capacity " + c.capacity() + "; create a larger cache");
        }
        return new Shape(batch, tokens, heads, kvHeads, headDim, c.capacity());
    }

    /**
     * Writes k, v into the cache at slots [start, start+T) and attends. startPtr: 0, or the device address of
     * an int holding start (captured decode graphs); the kernels then read start from there.
     */
    static Tensor attention(CudaContext ctx, DType act, Shape s, Tensor q, Tensor k, Tensor v, CudaKvCache c, int layer,
                            int start, long startPtr, Tensor padStart, float scale, int window) {
        long kc = c.keyPointer(layer), vc = c.valuePointer(layer);
        long n = (long) s.batch() * s.tokens() * s.kvHeads() * s.headDim();
        ctx.launch1d(ctx.function("attention", "kv_write_" + KernelTypes.act(act)), n,
                KernelArgs.of().ptr(CudaContext.ptr(k)).ptr(CudaContext.ptr(v)).ptr(kc).ptr(vc).i32(s.batch())
                        .i32(s.tokens()).i32(s.kvHeads()).i32(s.headDim()).i32(s.capacity()).i32(start).ptr(startPtr));
        return attendCached(ctx, act, s, q, c, layer, start, startPtr, padStart, scale, window);
    }

    /**
     * The attention of {@link #attention} without its cache write: the T new keys and values of every row are
     * already in slots [start, start+T) of the layer (FusedKernels.ropeQkKvWrite put them there). q [B*T, H*D].
     */
    static Tensor attendCached(CudaContext ctx, DType act, Shape s, Tensor q, CudaKvCache c, int layer, int start,
                               long startPtr, Tensor padStart, float scale, int window) {
        String t = KernelTypes.act(act);
        long kc = c.keyPointer(layer), vc = c.valuePointer(layer);
        Tensor out = ctx.empty(act, q.shape());
        try {
            if (s.tokens() == 1) {
                decode(ctx, t, s, q, kc, vc, out, start, startPtr, padStart, scale, window, null);
            } else {
                prefill(ctx, t, s, q, kc, vc, out, start, startPtr, padStart, scale, window);
            }
            return out;
        } catch (RuntimeException e) {
            out.close();
            throw e;
        }
    }

    /**
     * The new token's RoPE and cache write inside the decode attention (native/attention.cu, attn_decode_rope_*):
     * k, v [B, kvHeads*headDim] of the new token (k unrotated), positions I32 [B], invFreq F32 [headDim/2], the
     * attention scaling. positions and invFreq must come from host copies, not kernels: the kernel reads them before
     * waiting for the previous kernel (native/pdl.cuh).
     */
    record DecodeRope(Tensor k, Tensor v, Tensor positions, Tensor invFreq, float scaling) {}

    /**
     * Whether the decode attention rotates q and k and writes the new slot itself: one token, head dim 64 or 128, and
     * one split over the cache (capacities up to ONE_SPLIT_SLOTS). With several splits every block would rotate q
     * again, and the kernel's registers (184-255 against 114) halve the blocks a SM holds: at 1,024 new tokens (16
     * splits) the 7B decode measured 1.5% slower than with rope_qk_kv_write, at 128 (one split) 2.4% faster.
     */
    static boolean ropeInDecodeApplies(CudaContext ctx, Shape s) {
        return s.tokens() == 1 && (s.headDim() == 64 || s.headDim() == 128)
                && decodeSplits(s.capacity(), s.batch(), s.kvHeads(), s.heads(), ctx.properties().multiprocessorCount()) == 1;
    }

    /**
     * One decode step's attention with the RoPE of q and k and the cache write of k and v in the same launch: the
     * values of FusedKernels.ropeQkKvWrite followed by {@link #attendCached} bit for bit (q is not rotated in place:
     * nobody reads it afterwards). {@link #ropeInDecodeApplies} must hold; q unrotated [B, H*D].
     */
    static Tensor attendRoped(CudaContext ctx, DType act, Shape s, Tensor q, DecodeRope rope, CudaKvCache c, int layer,
                              int start, long startPtr, Tensor padStart, float scale, int window) {
        if (!ropeInDecodeApplies(ctx, s)) {
            throw new IllegalArgumentException("the RoPE decode takes one token, head dim 64 or 128, one split: " + s);
        }
        Tensor out = ctx.empty(act, q.shape());
        try {
            decode(ctx, KernelTypes.act(act), s, q, c.keyPointer(layer), c.valuePointer(layer), out, start, startPtr,
                    padStart, scale, window, rope);
            return out;
        } catch (RuntimeException e) {
            out.close();
            throw e;
        }
    }

    /** Query rows per prefill block: 4 warps of R rows (R = 8 up to headDim 128, else 4). */
    static int prefillRows(int headDim) { return 4 * (headDim <= 128 ? 8 : 4); }

    static int prefillSharedBytes(int headDim) {
        return 4 * (prefillRows(headDim) * headDim + 32 * (headDim + 4) + 32 * headDim);
    }

    private static void prefill(CudaContext ctx, String t, Shape s, Tensor q, long kc, long vc, Tensor out, int start,
                                long startPtr, Tensor padStart, float scale, int window) {
        int d = s.headDim();
        long fn = ctx.function("attention", "attn_prefill_" + t + "_d" + d);
        int smem = prefillSharedBytes(d);
        ctx.allowSharedMemory(fn, smem);
        int bq = prefillRows(d);
        Dim3 grid = new Dim3((s.tokens() + bq - 1) / bq, s.heads(), s.batch());
        ctx.launch(fn, grid, Dim3.of(THREADS), smem,
                KernelArgs.of().ptr(CudaContext.ptr(q)).ptr(kc).ptr(vc).ptr(CudaContext.ptr(out))
                        .ptr(CudaContext.ptr(padStart)).i32(s.tokens()).i32(s.heads()).i32(s.kvHeads())
                        .i32(s.capacity()).i32(start).ptr(startPtr).f32(scale).i32(window));
    }

    /**
     * Splits of the decode over the cache: enough blocks to fill the GPU (two per SM), none shorter than
     * MIN_SLOTS_PER_SPLIT slots of the capacity. A function of the capacity and shapes only, never of the
     * current length, so direct calls and graph replays launch the same grid (and round the same way).
     */
    static int decodeSplits(int capacity, int batch, int kvHeads, int heads, int multiprocessors) {
        if (capacity <= ONE_SPLIT_SLOTS) return 1;
        int gm = decodeHeadsPerBlock(heads, kvHeads);
        int chunks = (heads / kvHeads + gm - 1) / gm;
        long blocks = (long) batch * kvHeads * chunks;
        long toFill = (2L * multiprocessors + blocks - 1) / blocks;
        long byLength = (capacity + MIN_SLOTS_PER_SPLIT - 1) / MIN_SLOTS_PER_SPLIT;
        return (int) Math.max(1, Math.min(MAX_SPLITS, Math.min(toFill, byLength)));
    }

    /** Warps of a decode block: 8 for one split over more than 4 x 32 slots (head dim <= 128), else 4. */
    static int decodeWarps(int splits, int capacity, int headDim) {
        return splits == 1 && capacity > 4 * 32 && headDim <= EIGHT_WARPS_MAX_HEAD_DIM ? 8 : 4;
    }

    /**
     * -Dqlora4j.attention.decodeLanesPerSlot=4 (default) | 1: whether decodes of BF16 caches (head dim 64 or 128) score
     * each slot on four lanes (native/attention.cu decode_impl's LPS: a third of a warp's dependent chain; 16 warps,
     * _l4, for one split with at most 4 query heads a block, else 8 warps, _l4w8) or on one lane (the _w8 / 4-warp
     * kernels). For A/B.
     */
    static final String LANES_PER_SLOT_PROPERTY = "qlora4j.attention.decodeLanesPerSlot";

    /** A decode launch's block: warps, and the kernel name's suffix. */
    record DecodeForm(int warps, String suffix) {}

    static DecodeForm decodeForm(int splits, int capacity, int headDim, int headsPerBlock, boolean bf16) {
        int lanes = Integer.getInteger(LANES_PER_SLOT_PROPERTY, 4);
        if (lanes != 1 && lanes != 4) {
            throw new IllegalArgumentException("-D" + LANES_PER_SLOT_PROPERTY + "=" + lanes + ": use 4 or 1");
        }
        if (lanes == 4 && bf16 && (headDim == 64 || headDim == 128)) {
            // 16 warps where their merge buffers fit (one split, up to 4 query heads a block), else 8
            return splits == 1 && headsPerBlock <= 4 ? new DecodeForm(16, "_l4") : new DecodeForm(8, "_l4w8");
        }
        int warps = decodeWarps(splits, capacity, headDim);
        return new DecodeForm(warps, warps == 8 ? "_w8" : "");
    }

    private static void decode(CudaContext ctx, String t, Shape s, Tensor q, long kc, long vc, Tensor out, int start,
                               long startPtr, Tensor padStart, float scale, int window, DecodeRope rope) {
        int d = s.headDim();
        int splits = decodeSplits(s.capacity(), s.batch(), s.kvHeads(), s.heads(),
                ctx.properties().multiprocessorCount());
        int gm = decodeHeadsPerBlock(s.heads(), s.kvHeads());
        int chunks = (s.heads() / s.kvHeads() + gm - 1) / gm;
        Tensor partMl = null, partAcc = null;
        try {
            if (splits > 1) {
                partMl = ctx.empty(DType.F32, s.batch(), s.heads(), splits, 2);
                partAcc = ctx.empty(DType.F32, s.batch(), s.heads(), splits, d);
            }
            // with splits, the last block of each head group merges them (arrival counters) when they fit; else the
            // combine kernel below does
            boolean mergeInDecode = splits > 1 && (long) s.batch() * s.kvHeads() * chunks <= CudaContext.ARRIVAL_COUNTERS;
            DecodeForm form = decodeForm(splits, s.capacity(), d, gm, t.equals("bf16"));
            KernelArgs args = KernelArgs.of().ptr(CudaContext.ptr(q)).ptr(kc).ptr(vc).ptr(CudaContext.ptr(out))
                    .ptr(CudaContext.ptrOrNull(partMl)).ptr(CudaContext.ptrOrNull(partAcc))
                    .ptr(CudaContext.ptr(padStart)).i32(s.heads()).i32(s.kvHeads()).i32(s.capacity())
                    .i32(start).ptr(startPtr).f32(scale).i32(window)
                    .ptr(mergeInDecode ? ctx.arrivalCounters() : 0L)
                    .i32(Switches.on(DECODE_PREFETCH_PROPERTY, true) ? 1 : 0);
            if (rope != null) {
                args.ptr(CudaContext.ptr(rope.k())).ptr(CudaContext.ptr(rope.v())).ptr(CudaContext.ptr(rope.positions()))
                        .ptr(CudaContext.ptr(rope.invFreq())).f32(rope.scaling());
            }
            ctx.launch(ctx.function("attention", "attn_decode_" + (rope != null ? "rope_" : "") + t + "_d" + d + "_g" + gm
                            + form.suffix()),
                    new Dim3(splits, s.kvHeads() * chunks, s.batch()), Dim3.of(32 * form.warps()), 0, args);
            if (splits > 1 && !mergeInDecode) {
                ctx.launch(ctx.function("attention", "attn_combine_" + t + "_d" + d), Dim3.of(s.heads(), s.batch()),
                        Dim3.of(Math.max(32, d)), 0,
                        KernelArgs.of().ptr(CudaContext.ptr(partMl)).ptr(CudaContext.ptr(partAcc))
                                .ptr(CudaContext.ptr(out)).i32(s.heads()).i32(splits));
            }
        } finally {
            if (partMl != null) partMl.close();
            if (partAcc != null) partAcc.close();
        }
    }
}
