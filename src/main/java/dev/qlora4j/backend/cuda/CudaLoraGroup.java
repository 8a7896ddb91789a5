package dev.qlora4j.backend.cuda;

import dev.qlora4j.backend.cuda.CudaLora.Held;
import dev.qlora4j.cuda.Cublas;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;


import static dev.qlora4j.backend.cuda.CudaLora.BF;
import static dev.qlora4j.backend.cuda.CudaLora.bf16;
import static dev.qlora4j.backend.cuda.CudaLora.gemm;

/**
 * The LoRA products of layers that read the same x (a decoder layer's q/k/v, or gate/up), each with one plain
 * adapter and no dropout, on BF16 tensor cores (the per-layer products are {@link CudaLora}'s): x is read once for
 * the group's lora_A products (H = x [A_0; A_1; ...]^T), and once for their weight gradients, and grad_x is written
 * once. Used by peft.LoraGroup; -Dqlora4j.cuda.loraGroup=false turns it off.
 */
public final class CudaLoraGroup {
    private CudaLoraGroup() {}

    // ---- layers that read the same x: q/k/v, gate/up (one plain adapter each, no dropout) ----

    /**
     * -Dqlora4j.cuda.loraGroup=false turns off the grouped products of layers that read the same x (for A/B timing;
     * on by default): each layer then runs its own LoRA GEMMs.
     */
    public static final String GROUP_PROPERTY = "qlora4j.cuda.loraGroup";

    /** Whether layers reading the same x may run their LoRA products together (see {@link #GROUP_PROPERTY}). */
    public static boolean groupingOn() { return Switches.on(GROUP_PROPERTY, true); }

    /**
     * The rows of parts stacked: BF16 [sum rows, cols] from BF16 [rows_i, cols] (the lora_A copies of a group), by
     * device-to-device copies on the stream. The caller owns the result.
     */
    public static Tensor concatRows(CudaBackend b, Tensor... parts) {
        int cols = parts[0].dim(1), rows = 0;
        for (Tensor p : parts) {
            KernelTypes.requireDevice(p, "LoRA group lora_A copy");
            if (p.dtype() != DType.BF16 || p.rank() != 2 || p.dim(1) != cols) {
                throw new IllegalArgumentException("LoRA group: the lora_A copies must be BF16 [r_i, " + cols + "], got " + p);
            }
            rows += p.dim(0);
        }
        CudaContext ctx = b.context();
        Tensor out = ctx.empty(DType.BF16, rows, cols);
        long offset = 0;
        for (Tensor p : parts) {
            if (p.byteSize() > 0) {
                ctx.driver().memcpyDtoDAsync(CudaContext.ptr(out) + offset, CudaContext.ptr(p), p.byteSize(), ctx.stream());
            }
            offset += p.byteSize();
        }
        return out;
    }

    /**
     * Layers i reading the same x, each with one plain adapter without dropout: results[i] [n, out_i] (BF16, in
     * place) += s_i x A_i^T B_i^T, with H = x [A_0; A_1; ...]^T ([n, sum r], ONE GEMM: x read once) and then
     * results[i] += s_i H_i B_i^T per layer (H_i its column block, read with leading dimension sum r). The values
     * are those of {@link CudaLora#forwardInto} per layer up to cuBLAS' summation order (each h element is the same dot
     * product of BF16 values with float32 accumulation, rounded once to BF16).
     *
     * @param aCat  [sum r, in] BF16: the adapters' lora_A copies stacked in layer order ({@link #concatRows})
     * @param bBf16 per layer lora_B's BF16 copy [out_i, r_i]
     * @return H (BF16 [n, sum r], owned by the caller) with keepH, else null; null too when n == 0
     */
    public static Tensor groupForwardInto(CudaBackend b, Tensor[] results, Tensor x, Tensor aCat, Tensor[] bBf16,
                                          float[] scalings, boolean keepH) {
        int n = x.dim(0), in = x.dim(1);
        int[] cols = groupColumns(aCat, bBf16, in, "forward");
        int total = aCat.dim(0);
        if (results.length != bBf16.length || scalings.length != bBf16.length) {
            throw new IllegalArgumentException("LoRA group forward: " + results.length + " results, " + bBf16.length
                    + " lora_B and " + scalings.length + " scalings must be one per layer");
        }
        for (int i = 0; i < results.length; i++) {
            Tensor y = results[i];
            KernelTypes.requireDevice(y, "LoRA group output");
            if (y.dtype() != DType.BF16 || y.rank() != 2 || y.dim(0) != n || y.dim(1) != bBf16[i].dim(0)) {
                throw new IllegalArgumentException("LoRA group forward: result " + i + " must be BF16 [" + n + ", "
                        + bBf16[i].dim(0) + "], got " + y);
            }
        }
        if (n == 0) return null;
        CudaContext ctx = b.context();
        OpProfiler prof = b.profiler();
        int mark = prof == null ? -1 : prof.begin();
        Tensor h = ctx.empty(DType.BF16, n, total);
        try (Held xb = bf16(ctx, x)) {
            Cublas cu = ctx.cublas();
            cu.gemmRowMajor(false, true, n, total, in, 1f, CudaContext.ptr(xb.t()), CudaContext.ptr(aCat), BF, 0f,
                    CudaContext.ptr(h), BF);
            for (int i = 0; i < results.length; i++) {
                int r = bBf16[i].dim(1), out = bBf16[i].dim(0);
                gemm(cu, false, true, n, out, r, scalings[i], CudaContext.ptr(h) + 2L * cols[i], total,
                        CudaContext.ptr(bBf16[i]), r, BF, 1f, CudaContext.ptr(results[i]), out, BF);
            }
        } catch (RuntimeException e) {
            h.close();
            throw e;
        }
        if (mark >= 0) prof.end("lora group forward (bf16 GEMMs)", mark);
        if (keepH) return h;
        h.close();
        return null;
    }

    /** The first column of each layer's block in H / GH (the prefix sums of the ranks), checking aCat against them. */
    static int[] groupColumns(Tensor aCat, Tensor[] bBf16, int in, String what) {
        KernelTypes.requireDevice(aCat, "LoRA group lora_A");
        int[] cols = new int[bBf16.length];
        int total = 0;
        for (int i = 0; i < bBf16.length; i++) {
            Tensor bb = bBf16[i];
            KernelTypes.requireDevice(bb, "LoRA group lora_B copy");
            if (bb.dtype() != DType.BF16 || bb.rank() != 2) {
                throw new IllegalArgumentException("LoRA group " + what + ": lora_B copies must be BF16 [out, r], got " + bb);
            }
            cols[i] = total;
            total += bb.dim(1);
        }
        if (aCat.dtype() != DType.BF16 || aCat.rank() != 2 || aCat.dim(0) != total || aCat.dim(1) != in) {
            throw new IllegalArgumentException("LoRA group " + what + ": the stacked lora_A must be BF16 [" + total + ", " + in
                    + "] (the ranks summed, in_features), got " + aCat);
        }
        return cols;
    }
}
