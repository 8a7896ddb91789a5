package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/**
 * Launchers of native/fused.cu: the residual add fused with the following RMSNorm, RoPE on q and k in one
 * pass, and that RoPE fused with the KV-cache write. Their results are bit-identical to the unfused kernels
 * (RmsNormKernels, ElementwiseKernels.add, RopeKernels, AttentionKernels' kv_write): the point is fewer launches
 * per decode step.
 */
final class FusedKernels {
    private FusedKernels() {}

    /**
     * resid [n, h] (act, updated in place) += y [n, h] (act); returns rmsNorm(resid) * weight [h] in act, in the first
     * h columns of a new [n, width] tensor (width >= h; h for the plain op), the columns [h, width) zero (as
     * RmsNormKernels#rmsNorm's).
     */
    static Tensor addRmsNorm(CudaContext ctx, DType act, Tensor resid, Tensor y, Tensor weight, float eps, int width) {
        KernelTypes.requireRank(resid, 2, "addInPlaceRmsNorm resid");
        KernelTypes.requireSameShape(resid, y, "addInPlaceRmsNorm");
        KernelTypes.requireDevice(weight, "addInPlaceRmsNorm weight");
        KernelTypes.requireRank(weight, 1, "addInPlaceRmsNorm weight");
        int n = resid.dim(0), h = resid.dim(1);
        if (weight.dim(0) != h) {
            throw new IllegalArgumentException("addInPlaceRmsNorm: resid " + KernelTypes.shape(resid) + " and weight "
                    + KernelTypes.shape(weight) + " disagree on the hidden size");
        }
        if (resid.dtype() != act || y.dtype() != act) {
            throw new IllegalArgumentException("addInPlaceRmsNorm: resid and y must be " + act + ", got " + resid.dtype()
                    + " and " + y.dtype());
        }
        if (width < h) throw new IllegalArgumentException("addInPlaceRmsNorm: an output " + width + " wide cannot hold rows of " + h);
        String kernel = "add_rmsnorm_" + KernelTypes.act(act) + "_" + KernelTypes.weight(weight, "addInPlaceRmsNorm weight");
        Tensor out = ctx.empty(act, n, width);
        if (n == 0) return out;
        int pack = 16 / act.byteSize();
        int vec = h % pack == 0 && width % pack == 0 ? 1 : 0;
        ctx.launch(ctx.function("fused", kernel), Dim3.of(n), Dim3.of(RmsNormKernels.rowThreads(n, h, act)), 0,
                KernelArgs.of().ptr(KernelTypes.aligned16(resid)).ptr(KernelTypes.aligned16(y)).ptr(CudaContext.ptr(weight))
                        .ptr(KernelTypes.aligned16(out)).i32(h).f32(eps).i32(vec).i64(width));
        return out;
    }

    /** RoPE in place on q [n, heads*headDim] and k [n, kvHeads*headDim] (act); invFreq F32 [headDim/2]. */
    static void ropeQk(CudaContext ctx, DType act, Tensor q, Tensor k, Tensor positions, Tensor invFreq, int heads,
                       int kvHeads, int headDim, float scaling) {
        launchRopeQk(ctx, "rope_qk_", act, q, k, positions, invFreq, heads, kvHeads, headDim, scaling);
    }

    /** The switch of {@link #ropeKvFusion()}: "false" launches RoPE and the KV-cache write as two kernels (A/B timing). */
    static final String FUSE_ROPE_KV_PROPERTY = "qlora4j.cuda.fuseRopeKv";

    private static volatile boolean ropeKvFusion =
            !"false".equalsIgnoreCase(System.getProperty(FUSE_ROPE_KV_PROPERTY, "true").trim());

    /**
     * Whether CudaBackend.ropeQkAttention rotates q and k and writes the cache in one launch ({@link #ropeQkKvWrite});
     * -Dqlora4j.cuda.fuseRopeKv=false gives the two launches it replaces (rope_qk, then kv_write), same results.
     */
    static boolean ropeKvFusion() { return ropeKvFusion; }

    /** Sets {@link #ropeKvFusion()} for this JVM (tests compare the two paths in one run). */
    static void setRopeKvFusion(boolean on) { ropeKvFusion = on; }

    static final String ROPE_IN_DECODE_PROPERTY = "qlora4j.cuda.ropeInDecode";

    private static volatile boolean ropeInDecode =
            !"false".equalsIgnoreCase(System.getProperty(ROPE_IN_DECODE_PROPERTY, "true").trim());

    /**
     * Whether a decode step's ropeQkAttention (with the RoPE / KV fusion on) rotates q and k and writes the cache inside
     * the attention kernel (AttentionKernels.attendRoped: one launch instead of two, head dims 64 / 128);
     * -Dqlora4j.cuda.ropeInDecode=false keeps rope_qk_kv_write + the attention, same results.
     */
    static boolean ropeInDecode() { return ropeInDecode; }

    /** Sets {@link #ropeInDecode()} for this JVM (tests compare the paths in one run). */
    static void setRopeInDecode(boolean on) { ropeInDecode = on; }

    /**
     * RoPE of q [B*T, heads*headDim] (in place) and k [B*T, kvHeads*headDim] fused with the KV-cache write: the
     * rotated k and v [B*T, kvHeads*headDim] go to slots [start, start+T) of the layer's cache, each row b*T + t at
     * slot start + t (startPtr: 0, or the device address of an int holding start, as AttentionKernels.attention
     * reads it in a captured decode graph). Bit for bit what {@link #ropeQk} followed by the kv_write of
     * AttentionKernels.attention store. k itself is rotated too only when storeK (no caller reads it afterwards).
     * s comes from AttentionKernels.check on q, k, v; invFreq F32 [headDim/2]; positions I32 [B*T].
     */
    static void ropeQkKvWrite(CudaContext ctx, DType act, AttentionKernels.Shape s, Tensor q, Tensor k, Tensor v,
                              Tensor positions, Tensor invFreq, float scaling, CudaKvCache c, int layer, int start,
                              long startPtr, boolean storeK) {
        RopeKernels.check(act, q, positions, invFreq, s.heads(), s.headDim());
        RopeKernels.check(act, k, positions, invFreq, s.kvHeads(), s.headDim());
        long pairs = (long) q.dim(0) * (s.headDim() / 2);
        int groups = ropeHeadGroups(pairs, s.heads() + s.kvHeads());
        ctx.launch1d(ctx.function("fused", "rope_qk_kv_write_" + KernelTypes.act(act)), pairs * groups,
                KernelArgs.of().ptr(CudaContext.ptr(q)).ptr(CudaContext.ptr(k)).ptr(CudaContext.ptr(v))
                        .ptr(c.keyPointer(layer)).ptr(c.valuePointer(layer)).ptr(CudaContext.ptr(positions))
                        .ptr(CudaContext.ptr(invFreq)).i32(s.batch()).i32(s.tokens()).i32(s.heads()).i32(s.kvHeads())
                        .i32(s.headDim()).i32(s.capacity()).i32(start).ptr(startPtr).f32(scaling).i32(groups)
                        .i32(storeK ? 1 : 0));
    }

    /** Fewest (row, pair) items that fill the GPU on their own; below it the heads are split into groups. */
    static final long ROPE_ITEMS_TO_FILL = 1L << 16;

    /**
     * Head groups of the fused RoPE kernels: 1 (one angle per row and pair serves all heads) unless the rows are too
     * few to keep the GPU busy — a decode step has only headDim/2 pairs, which as one 64-thread loop over all 64 q
     * and k heads took ~17 us per layer — then as many groups as bring the items to ROPE_ITEMS_TO_FILL, at most one
     * per head.
     */
    static int ropeHeadGroups(long pairs, int allHeads) {
        if (pairs <= 0 || pairs >= ROPE_ITEMS_TO_FILL) return 1;
        return (int) Math.min(allHeads, (ROPE_ITEMS_TO_FILL + pairs - 1) / pairs);
    }

    /** The backward of {@link #ropeQk}: gq and gk rotated back in place, as two TrainKernels.ropeBackward calls. */
    static void ropeQkBackward(CudaContext ctx, DType act, Tensor gq, Tensor gk, Tensor positions, Tensor invFreq, int heads,
                               int kvHeads, int headDim, float scaling) {
        RopeKernels.check(act, gq, positions, invFreq, heads, headDim);
        RopeKernels.check(act, gk, positions, invFreq, kvHeads, headDim);
        ropeQkBackwardRows(ctx, act, CudaContext.ptr(gq), (long) heads * headDim, CudaContext.ptr(gk),
                (long) kvHeads * headDim, gq.dim(0), positions, invFreq, heads, kvHeads, headDim, scaling);
    }

    /**
     * The same on the joined q/k/v gradient g [n, (heads + 2 kvHeads) * headDim] (dQ's columns, then dK's, then
     * dV's): dQ and dK rotated back in place in their columns, dV untouched.
     */
    static void ropeQkBackwardJoined(CudaContext ctx, DType act, Tensor g, Tensor positions, Tensor invFreq, int heads,
                                     int kvHeads, int headDim, float scaling) {
        long width = (long) (heads + 2 * kvHeads) * headDim;
        KernelTypes.requireRank(g, 2, "rope backward joined gradient");
        if (g.dtype() != act || g.dim(1) != width) {
            throw new IllegalArgumentException("rope backward: the joined q/k/v gradient must be " + act + " [n, " + width
                    + "], got " + g);
        }
        KernelTypes.requireIndices(positions, "rope positions");
        long base = CudaContext.ptr(g);
        ropeQkBackwardRows(ctx, act, base, width, base + (long) heads * headDim * act.byteSize(), width, g.dim(0), positions,
                invFreq, heads, kvHeads, headDim, scaling);
    }

    /** rope_qk_bwd over n rows of dQ at gq (row stride ldq elements) and dK at gk (ldk). */
    private static void ropeQkBackwardRows(CudaContext ctx, DType act, long gq, long ldq, long gk, long ldk, int n,
                                           Tensor positions, Tensor invFreq, int heads, int kvHeads, int headDim, float scaling) {
        long pairs = (long) n * (headDim / 2);
        if (pairs == 0) return;
        int groups = ropeHeadGroups(pairs, heads + kvHeads);
        ctx.launch1d(ctx.function("fused", "rope_qk_bwd_" + KernelTypes.act(act)), pairs * groups,
                KernelArgs.of().ptr(gq).ptr(gk).i64(ldq).i64(ldk).ptr(CudaContext.ptr(positions))
                        .ptr(CudaContext.ptr(invFreq)).i32(n).i32(heads).i32(kvHeads).i32(headDim).f32(scaling).i32(groups));
    }

    /** One launch of a fused.cu rope_qk kernel (prefix + act) over a [n, heads*headDim] and b [n, kvHeads*headDim]. */
    private static void launchRopeQk(CudaContext ctx, String kernelPrefix, DType act, Tensor a, Tensor b, Tensor positions,
                                     Tensor invFreq, int heads, int kvHeads, int headDim, float scaling) {
        RopeKernels.check(act, a, positions, invFreq, heads, headDim);
        RopeKernels.check(act, b, positions, invFreq, kvHeads, headDim);
        int n = a.dim(0);
        long pairs = (long) n * (headDim / 2);
        if (pairs == 0) return;
        int groups = ropeHeadGroups(pairs, heads + kvHeads);
        ctx.launch1d(ctx.function("fused", kernelPrefix + KernelTypes.act(act)), pairs * groups,
                KernelArgs.of().ptr(CudaContext.ptr(a)).ptr(CudaContext.ptr(b)).ptr(CudaContext.ptr(positions))
                        .ptr(CudaContext.ptr(invFreq)).i32(n).i32(heads).i32(kvHeads).i32(headDim).f32(scaling).i32(groups));
    }
}
