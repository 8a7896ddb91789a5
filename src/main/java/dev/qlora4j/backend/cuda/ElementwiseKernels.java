package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/** Launchers of native/elementwise.cu (1-D grid-stride kernels, 16-byte packs where they apply). */
final class ElementwiseKernels {
    private ElementwiseKernels() {}

    /** out = a + b (same shape, act dtype); out may be a itself (in place). */
    static void add(CudaContext ctx, DType act, Tensor a, Tensor b, Tensor out) {
        binary(ctx, "add_fwd_", act, a, b, out);
    }

    /** out = silu(gate) * up. */
    static void siluMul(CudaContext ctx, DType act, Tensor gate, Tensor up, Tensor out) {
        binary(ctx, "silu_mul_fwd_", act, gate, up, out);
    }

    /**
     * out [rows, cols] = silu(gate) * up for gate and up held as one buffer gu [rows, 2 cols] (gate's columns, then
     * up's), element for element the values {@link #siluMul} gives on the two halves.
     */
    static void siluMulHalves(CudaContext ctx, DType act, Tensor gu, Tensor out) {
        int rows = out.dim(0), cols = out.dim(1);
        if ((long) rows * cols == 0) return;
        ctx.launch1d(ctx.function("elementwise", "silu_mul_halves_fwd_" + KernelTypes.act(act)), (long) rows * cols,
                KernelArgs.of().ptr(CudaContext.ptr(gu)).ptr(CudaContext.ptr(out)).i64(rows).i32(cols)
                        .i32(halvesPacked(act, cols, gu, out) ? 1 : 0));
    }

    /** Whether the halves kernels may run on 16-byte packs: cols a multiple of the pack and every buffer aligned. */
    static boolean halvesPacked(DType act, int cols, Tensor... ts) {
        if (cols % (16 / act.byteSize()) != 0) return false;
        for (Tensor t : ts) if ((CudaContext.ptr(t) & 15) != 0) return false;
        return true;
    }

    private static void binary(CudaContext ctx, String op, DType act, Tensor a, Tensor b, Tensor out) {
        long n = a.numel();
        ctx.launch1d(ctx.function("elementwise", op + KernelTypes.act(act)), n,
                KernelArgs.of().ptr(KernelTypes.aligned16(a)).ptr(KernelTypes.aligned16(b)).ptr(KernelTypes.aligned16(out)).i64(n));
    }

    /** x [nx, h] (act), rows I32 [r] -> [r, h]; rows outside x go to status. */
    static Tensor gatherRows(CudaContext ctx, DType act, Tensor x, Tensor rows, DeviceStatus status) {
        int r = rows.dim(0), nx = x.dim(0), h = x.dim(1);
        Tensor out = ctx.empty(act, r, h);
        ctx.launch1d(ctx.function("elementwise", "gather_rows_fwd_" + KernelTypes.act(act)), (long) r * h,
                KernelArgs.of().ptr(CudaContext.ptr(x)).ptr(CudaContext.ptr(rows)).ptr(CudaContext.ptr(out))
                        .i32(r).i32(h).i32(nx).ptr(status.pointer()));
        return out;
    }

    /** y [n, m] (F32 or BF16) = bias [m] on every row. */
    static void biasRows(CudaContext ctx, Tensor y, Tensor bias) {
        int n = y.dim(0), m = y.dim(1);
        String kernel = "bias_rows_" + KernelTypes.act(y.dtype()) + "_" + KernelTypes.weight(bias, "linear bias");
        ctx.launch1d(ctx.function("elementwise", kernel), (long) n * m,
                KernelArgs.of().ptr(CudaContext.ptr(y)).ptr(CudaContext.ptr(bias)).i32(n).i32(m));
    }
}
