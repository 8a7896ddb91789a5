package dev.qlora4j.backend.cuda;

import dev.qlora4j.backend.cuda.CudaLora.Held;
import dev.qlora4j.backend.cuda.CudaLora.Hidden;
import dev.qlora4j.cuda.Cublas;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import static dev.qlora4j.backend.cuda.CudaLora.BF;
import static dev.qlora4j.backend.cuda.CudaLora.bf16;
import static dev.qlora4j.backend.cuda.CudaLora.gemm;
import static dev.qlora4j.backend.cuda.CudaLora.requireAccumulator;
import static dev.qlora4j.backend.cuda.CudaLora.requireGx;

/**
 * The backward of {@link CudaLoraGroup#groupForwardInto} (layers i reading the same x, one plain adapter each), in
 * two parts around the caller's base-layer input gradients:
 * <pre>
 *   begin:   GH    = [s_0 gy_0 B_0 | s_1 gy_1 B_1 | ...]   [n, sum r] BF16, each block one GEMM into its columns
 *            dB_i += s_i gy_i^T h_i                        per layer, h_i the kept block (or H recomputed once)
 *            dA    = GH^T x                                ONE GEMM into a float32 [sum r, in] temporary, added to each gradA_i
 *   (the caller's base GEMMs write grad_x)
 *   finish:  gx  (+)= GH [A_0; A_1; ...]                   ONE GEMM with K = sum r
 * </pre>
 * Why two parts: begin's products read only gy, x and h, so they run on the side stream ({@link SideStream}, when
 * on) while the main stream runs the base layers' dequantize + GEMMs (bound by the tensor cores; the LoRA products
 * are skinny and memory-bound); finish joins the streams first. With the side stream off the same operations run in
 * the same order on the main stream: the same bits.
 *
 * <p>Wide form ({@link #beginJoined} with ghInGemm, then {@link #finishWide}): begin queues only dB; the caller's
 * input-gradient GEMM writes [grad_x | GH] ({@link CudaJoinedInputGrad#intoWide}: GH from the columns that GEMM
 * adds, no second read of gy); then dA = GH^T x on the side stream beside grad_x += GH [A_0; A_1; ...] here.
 *
 * <p>Term-first form for a group of one (a lone o_proj / down_proj, LoraGroup#backwardAlone; {@link #beginTermFirst},
 * then {@link #awaitLoraTerm}): GH and grad_x = GH A first, beside the caller's dequantize of the base weight, whose
 * GEMM then adds onto grad_x; dB and dA after them, beside that GEMM. A group of one accumulates dA straight into its
 * gradA (no float32 temporary).
 *
 * <p>gradA / gradB entries are null for frozen adapters; kept entries null where no h was kept. Everything begin's
 * work touches is allocated before it forks and released by {@link #close} after the join.
 */
public final class CudaLoraGroupBackward implements AutoCloseable {
    private final CudaBackend b;
    private final Tensor aCat;                 // [sum r, in] BF16
    private final Held xb;                     // x BF16 [n, in], or the fold's [n, in + P] [x | H] buffer
    private final Held[] gy;                   // gradOut_i [n, out_i] BF16 (null entries: the caller's joined buffer)
    private final Tensor gh;                   // GH [n, sum r] BF16; null when the caller's wide GEMM forms it (finishWide)
    private final Tensor h;                    // H [n, sum r] BF16 recomputed where a kept h is missing, else null
    private final Tensor dA;                   // [sum r, in] F32 temporary, null when no adapter trains lora_A or for a group of one
    private final SideStream side;             // null: everything on the main stream
    private final Tensor[] gradA;              // per layer [r_i, in] F32, null entries for frozen adapters
    private final int[] cols;                  // per layer its first column of GH (and row of dA)
    private boolean joined;
    private final boolean termFirst;           // beginTermFirst: the grad_x term is in gx already

    private CudaLoraGroupBackward(CudaBackend b, Tensor aCat, Held xb, Held[] gy, Tensor gh, Tensor h, Tensor dA,
                                  SideStream side, Tensor[] gradA, int[] cols, boolean termFirst) {
        this.b = b;
        this.aCat = aCat;
        this.xb = xb;
        this.gy = gy;
        this.gh = gh;
        this.h = h;
        this.dA = dA;
        this.side = side;
        this.gradA = gradA;
        this.cols = cols;
        this.termFirst = termFirst;
    }

    /**
     * Queues GH, dB and dA (see the class comment): on the side stream when {@link SideStream#on}, else on the main
     * stream. Returns the pending part to finish with {@link #finishInto} and close.
     *
     * @param aCat  [sum r, in] BF16: the adapters' lora_A copies stacked in layer order ({@link CudaLoraGroup#concatRows})
     * @param bBf16 per layer lora_B's BF16 copy [out_i, r_i]
     */
    public static CudaLoraGroupBackward begin(CudaBackend b, Tensor x, Tensor[] gradOuts, Tensor aCat, Tensor[] bBf16,
                                              float[] scalings, Hidden[] kept, Tensor[] gradA, Tensor[] gradB) {
        int n = x.dim(0), layers = bBf16.length;
        if (gradOuts.length != layers) {
            throw new IllegalArgumentException("LoRA group backward: " + layers + " layers need as many gradOuts, got " + gradOuts.length);
        }
        for (int i = 0; i < layers; i++) {
            int out = bBf16[i].dim(0);
            Tensor g = gradOuts[i];
            KernelTypes.requireDevice(g, "LoRA group gradOut");
            if (g.rank() != 2 || g.dim(0) != n || g.dim(1) != out) {
                throw new IllegalArgumentException("LoRA group backward: gradOut " + i + " must be [" + n + ", " + out + "], got " + g);
            }
        }
        return start(b, x, gradOuts, null, aCat, bBf16, scalings, kept, gradA, gradB, false, null);
    }

    /**
     * {@link #begin} for a group of one whose grad_x term goes first: queues GH = s gy B and gx = GH A (writing gx,
     * allocated by the caller) before dB and dA, on the side stream when on, so that they run beside the caller's
     * dequantize of the base weight; the caller then calls {@link #awaitLoraTerm} and accumulates the base layer's
     * GEMM onto gx (beta = 1), while dB and dA run beside that GEMM. No {@link #finishInto}.
     */
    public static CudaLoraGroupBackward beginTermFirst(CudaBackend b, Tensor x, Tensor gradOut, Tensor aBf16, Tensor bBf16,
                                                       float scaling, Hidden kept, Tensor gradA, Tensor gradB, Tensor gx) {
        requireGx(gx, x.dim(0), x.dim(1));
        KernelTypes.requireDevice(gradOut, "LoRA gradOut");
        if (gradOut.rank() != 2 || gradOut.dim(0) != x.dim(0) || gradOut.dim(1) != bBf16.dim(0)) {
            throw new IllegalArgumentException("LoRA backward: gradOut must be [" + x.dim(0) + ", " + bBf16.dim(0) + "], got " + gradOut);
        }
        return start(b, x, new Tensor[] {gradOut}, null, aBf16, new Tensor[] {bBf16}, new float[] {scaling},
                new Hidden[] {kept}, new Tensor[] {gradA}, new Tensor[] {gradB}, false, gx);
    }

    /**
     * {@link #begin} for the layers' output gradients held as one buffer gradJoined BF16 [n, sum out_i] (layer i's
     * columns after layer i-1's: a joined group's, see CudaLoraFold#forwardJoined). The caller keeps gradJoined
     * alive until {@link #close}.
     */
    public static CudaLoraGroupBackward beginJoined(CudaBackend b, Tensor x, Tensor gradJoined, Tensor aCat, Tensor[] bBf16,
                                                    float[] scalings, Hidden[] kept, Tensor[] gradA, Tensor[] gradB) {
        return beginJoined(b, x, gradJoined, aCat, bBf16, scalings, kept, gradA, gradB, false);
    }

    /**
     * {@link #beginJoined} that, with ghInGemm, queues only dB (and H where no kept h exists): GH comes from the
     * caller's wide GEMM ({@link CudaJoinedInputGrad#intoWide}), and {@link #finishWide} queues dA and grad_x's
     * LoRA term from it.
     */
    public static CudaLoraGroupBackward beginJoined(CudaBackend b, Tensor x, Tensor gradJoined, Tensor aCat, Tensor[] bBf16,
                                                    float[] scalings, Hidden[] kept, Tensor[] gradA, Tensor[] gradB,
                                                    boolean ghInGemm) {
        int total = 0;
        for (Tensor bb : bBf16) total += bb.dim(0);
        KernelTypes.requireDevice(gradJoined, "LoRA group joined gradOut");
        if (gradJoined.dtype() != DType.BF16 || gradJoined.rank() != 2 || gradJoined.dim(0) != x.dim(0) || gradJoined.dim(1) != total) {
            throw new IllegalArgumentException("LoRA group backward: the joined gradOut must be BF16 [" + x.dim(0) + ", " + total
                    + "], got " + gradJoined);
        }
        return start(b, x, null, gradJoined, aCat, bBf16, scalings, kept, gradA, gradB, ghInGemm, null);
    }

    /**
     * begin's work with the gradients either per layer (gradOuts) or joined (gradJoined), the other null; termInto
     * (a group of one only, else null): gx written with GH A right after GH, and marked for {@link #awaitLoraTerm}.
     */
    private static CudaLoraGroupBackward start(CudaBackend b, Tensor x, Tensor[] gradOuts, Tensor gradJoined, Tensor aCat,
                                               Tensor[] bBf16, float[] scalings, Hidden[] kept, Tensor[] gradA, Tensor[] gradB,
                                               boolean ghInGemm, Tensor termInto) {
        // x [n, in], or the LoRA fold's wider [x | H] buffer (x in its first in columns, read with its row stride)
        if (x.rank() != 2 || x.dim(1) < aCat.dim(1)) {
            throw new IllegalArgumentException("LoRA group backward: x must be [n, >= " + aCat.dim(1) + "], got " + x);
        }
        int n = x.dim(0), in = aCat.dim(1), ldx = x.dim(1), layers = bBf16.length;
        int[] cols = CudaLoraGroup.groupColumns(aCat, bBf16, in, "backward");
        int total = aCat.dim(0);
        if (scalings.length != layers || kept.length != layers || gradA.length != layers || gradB.length != layers) {
            throw new IllegalArgumentException("LoRA group backward: scalings, kept, gradA and gradB need one entry per layer ("
                    + layers + ")");
        }
        boolean needH = false, anyGradA = false;
        for (int i = 0; i < layers; i++) {
            int r = bBf16[i].dim(1), out = bBf16[i].dim(0);
            requireAccumulator(gradA[i], r, in, "gradA");
            requireAccumulator(gradB[i], out, r, "gradB");
            if (kept[i] != null) kept[i].check(n, r);
            needH |= gradB[i] != null && kept[i] == null;
            anyGradA |= gradA[i] != null;
        }
        CudaContext ctx = b.context();
        OpProfiler prof = b.profiler();
        Held[] gy = new Held[layers];
        Held xb = null;
        Tensor gh = null, h = null, dA = null;
        SideStream side = n > 0 && SideStream.on(b) ? ctx.side() : null;
        try {
            xb = bf16(ctx, x);
            // gradient i: pointer and row stride (its own [n, out_i] buffer, or its columns of the joined one)
            long[] gyPtr = new long[layers];
            int[] gyLd = new int[layers];
            int joinedColumn = 0;
            for (int i = 0; i < layers; i++) {
                int out = bBf16[i].dim(0);
                if (gradJoined != null) {
                    gyPtr[i] = CudaContext.ptr(gradJoined) + 2L * joinedColumn;
                    gyLd[i] = gradJoined.dim(1);
                    joinedColumn += out;
                } else {
                    gy[i] = bf16(ctx, gradOuts[i]);
                    gyPtr[i] = CudaContext.ptr(gy[i].t());
                    gyLd[i] = out;
                }
            }
            if (!ghInGemm) gh = ctx.empty(DType.BF16, n, total);
            if (needH) h = ctx.empty(DType.BF16, n, total);
            if (anyGradA && layers > 1) dA = ctx.empty(DType.F32, total, in);   // one layer: straight into its gradA
            CudaLoraGroupBackward pending = new CudaLoraGroupBackward(b, aCat, xb, gy, gh, h, dA, side, gradA, cols,
                    termInto != null);
            if (n == 0) return pending;
            int mark = prof == null ? -1 : prof.begin();
            Cublas cu = side != null ? side.cublas() : ctx.cublas();
            if (side != null) side.fork(ctx.stream());
            if (needH) {
                gemm(cu, false, true, n, total, in, 1f, CudaContext.ptr(xb.t()), ldx, CudaContext.ptr(aCat), in, BF, 0f,
                        CudaContext.ptr(h), total, BF);
            }
            for (int i = 0; i < layers; i++) {
                int r = bBf16[i].dim(1), out = bBf16[i].dim(0);
                int sub;
                if (gh != null) {
                    sub = prof == null ? -1 : prof.begin();
                    gemm(cu, false, false, n, r, out, scalings[i], gyPtr[i], gyLd[i], CudaContext.ptr(bBf16[i]), r,
                            BF, 0f, CudaContext.ptr(gh) + 2L * cols[i], total, BF);
                    if (sub >= 0) prof.end("lora group backward/gh", sub);
                }
                if (termInto != null) {   // a group of one: its grad_x term now, for the caller's base GEMM to add onto
                    sub = prof == null ? -1 : prof.begin();
                    gemm(cu, false, false, n, in, total, 1f, CudaContext.ptr(gh), total, CudaContext.ptr(aCat), in, BF, 0f,
                            CudaContext.ptr(termInto), in, BF);
                    if (side != null) side.mark();
                    if (sub >= 0) prof.end("lora group backward grad_x (bf16 GEMM)", sub);
                }
                if (gradB[i] == null) continue;
                sub = prof == null ? -1 : prof.begin();
                Hidden hi = kept[i] != null ? kept[i] : new Hidden(h, cols[i], r);
                gemm(cu, true, false, out, r, n, scalings[i], gyPtr[i], gyLd[i], hi.pointer(), hi.ld(), BF, 1f,
                        CudaContext.ptr(gradB[i]), r, Cublas.DataType.F32);
                if (sub >= 0) prof.end("lora group backward/dB", sub);
            }
            if (gh != null) pending.queueDA(cu, CudaContext.ptr(gh), total);
            if (mark >= 0) prof.end("lora group backward (bf16 GEMMs)", mark);
            return pending;
        } catch (RuntimeException e) {
            if (side != null) side.join(ctx.stream());
            for (Held g : gy) if (g != null) g.close();
            if (xb != null) xb.close();
            for (Tensor t : new Tensor[] {gh, h, dA}) if (t != null) t.close();
            throw e;
        }
    }

    /**
     * dA = GH^T x into the float32 temporary, then gradA_i += its rows [cols_i, cols_i + r_i) (contiguous), on cu's
     * stream (the side stream's when on); GH at ghPtr with row stride ghLd. A group of one accumulates into its
     * gradA directly (the GEMM's beta = 1). Nothing when no adapter trains lora_A.
     */
    private void queueDA(Cublas cu, long ghPtr, int ghLd) {
        boolean anyGradA = false;
        for (Tensor g : gradA) anyGradA |= g != null;
        if (!anyGradA) return;
        CudaContext ctx = b.context();
        OpProfiler prof = b.profiler();
        int n = xb.t().dim(0), in = aCat.dim(1), ldx = xb.t().dim(1), total = aCat.dim(0);
        int sub = prof == null ? -1 : prof.begin();
        if (dA == null) {   // a group of one (training lora_A): gradA += GH^T x by the GEMM's beta, no temporary
            gemm(cu, true, false, total, in, n, 1f, ghPtr, ghLd, CudaContext.ptr(xb.t()), ldx, BF, 1f,
                    CudaContext.ptr(gradA[0]), in, Cublas.DataType.F32);
            if (sub >= 0) prof.end("lora group backward/dA", sub);
            return;
        }
        gemm(cu, true, false, total, in, n, 1f, ghPtr, ghLd, CudaContext.ptr(xb.t()), ldx, BF, 0f, CudaContext.ptr(dA), in,
                Cublas.DataType.F32);
        long axpy = ctx.function("train_elementwise", "axpy_f32");
        for (int i = 0; i < gradA.length; i++) {
            if (gradA[i] == null) continue;
            long count = (long) gradA[i].dim(0) * in;   // fmaf(1, d, g) = g + d
            KernelArgs args = KernelArgs.of().ptr(CudaContext.ptr(gradA[i])).f32(1f)
                    .ptr(CudaContext.ptr(dA) + 4L * cols[i] * in).i64(count);
            if (side != null) ctx.launch1d(axpy, count, args, side.stream());
            else ctx.launch1d(axpy, count, args);
        }
        if (sub >= 0) prof.end("lora group backward/dA", sub);
    }

    /**
     * The end of a {@link #beginJoined} with ghInGemm, after the caller's {@link CudaJoinedInputGrad#intoWide} wrote
     * wide [n, in + P] (grad_x in columns [0, in), GH from column in on): dA = GH^T x on the side stream (when on),
     * beside grad_x += GH [A_0; A_1; ...] on the main stream (in place in wide's first in columns: the two touch
     * different columns).
     */
    public void finishWide(Tensor wide) {
        int n = xb.t().dim(0), in = aCat.dim(1), total = aCat.dim(0);
        if (gh != null) throw new IllegalStateException("finishWide: this backward formed GH itself; use finishInto");
        KernelTypes.requireDevice(wide, "LoRA group wide grad_x");
        if (wide.dtype() != DType.BF16 || wide.rank() != 2 || wide.dim(0) != n || wide.dim(1) < in + total) {
            throw new IllegalArgumentException("finishWide: wide must be BF16 [" + n + ", >= " + (in + total) + "], got " + wide);
        }
        if (n == 0) return;
        CudaContext ctx = b.context();
        OpProfiler prof = b.profiler();
        int ld = wide.dim(1);
        long ghPtr = CudaContext.ptr(wide) + 2L * in;
        if (side != null) side.fork(ctx.stream());   // after the wide GEMM
        queueDA(side != null ? side.cublas() : ctx.cublas(), ghPtr, ld);
        int sub = prof == null ? -1 : prof.begin();
        gemm(ctx.cublas(), false, false, n, in, total, 1f, ghPtr, ld, CudaContext.ptr(aCat), in, BF, 1f,
                CudaContext.ptr(wide), ld, BF);
        if (sub >= 0) prof.end("lora group backward grad_x (bf16 GEMM)", sub);
    }

    /**
     * After {@link #beginTermFirst}: orders the main stream's next work after gx's LoRA term (not after dB and dA,
     * which keep running on the side stream until {@link #close}).
     */
    public void awaitLoraTerm() {
        if (!termFirst) throw new IllegalStateException("awaitLoraTerm: only after beginTermFirst");
        if (side != null && !joined) side.awaitMark(b.context().stream());
    }

    /** gx [n, in] (+)= GH [A_0; A_1; ...] on the main stream, after the side stream's work (accumulate false writes gx). */
    public void finishInto(Tensor gx, boolean accumulate) {
        int n = xb.t().dim(0), in = aCat.dim(1), total = aCat.dim(0);
        requireGx(gx, n, in);
        if (gh == null) throw new IllegalStateException("finishInto: GH is formed by the caller's wide GEMM; use finishWide");
        if (termFirst) throw new IllegalStateException("finishInto: beginTermFirst wrote the LoRA term already");
        join();
        if (n == 0) return;
        CudaContext ctx = b.context();
        OpProfiler prof = b.profiler();
        int sub = prof == null ? -1 : prof.begin();
        ctx.cublas().gemmRowMajor(false, false, n, in, total, 1f, CudaContext.ptr(gh), CudaContext.ptr(aCat), BF,
                accumulate ? 1f : 0f, CudaContext.ptr(gx), BF);
        if (sub >= 0) prof.end("lora group backward grad_x (bf16 GEMM)", sub);
    }

    private void join() {
        if (side != null && !joined) side.join(b.context().stream());
        joined = true;
    }

    /** Joins the streams (if finishInto did not) and releases the temporaries. */
    @Override
    public void close() {
        join();
        for (Held g : gy) if (g != null) g.close();
        xb.close();
        if (gh != null) gh.close();
        if (h != null) h.close();
        if (dA != null) dA.close();
    }
}
