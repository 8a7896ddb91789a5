package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/** Launcher of native/rope.cu: 1-D grid-stride over (row, frequency) pairs. */
final class RopeKernels {
    private RopeKernels() {}

    /** In place on x [n, heads * headDim] (act); positions I32 [n]; invFreq F32 [headDim / 2]. */
    static void ropeInPlace(CudaContext ctx, DType act, Tensor x, Tensor positions, Tensor invFreq, int heads,
                            int headDim, float scaling) {
        check(act, x, positions, invFreq, heads, headDim);
        int n = x.dim(0);
        long pairs = (long) n * (headDim / 2);
        ctx.launch1d(ctx.function("rope", "rope_fwd_" + KernelTypes.act(act)), pairs,
                KernelArgs.of().ptr(CudaContext.ptr(x)).ptr(CudaContext.ptr(positions)).ptr(CudaContext.ptr(invFreq))
                        .i32(n).i32(heads).i32(headDim).f32(scaling));
    }

    /** The shape and dtype rules of a rope call on x [n, heads*headDim] (FusedKernels.ropeQk checks q and k with it). */
    static void check(DType act, Tensor x, Tensor positions, Tensor invFreq, int heads, int headDim) {
        KernelTypes.requireRank(x, 2, "rope x");
        KernelTypes.requireIndices(positions, "rope positions");
        KernelTypes.requireDevice(invFreq, "rope invFreq");
        if (x.dtype() != act) {
            throw new IllegalArgumentException("rope x must be " + act + " (the activation dtype: it is rotated in place), got "
                    + x.dtype());
        }
        if (heads < 1 || headDim < 2 || headDim % 2 != 0) {
            throw new IllegalArgumentException("rope: heads must be >= 1 and headDim even, got heads=" + heads
                    + " headDim=" + headDim);
        }
        if (x.dim(1) != heads * headDim) {
            throw new IllegalArgumentException("rope: x " + KernelTypes.shape(x) + " is not [n, heads*headDim] = [n, "
                    + heads + "*" + headDim + "]");
        }
        if (positions.dim(0) != x.dim(0)) {
            throw new IllegalArgumentException("rope: positions " + KernelTypes.shape(positions) + " do not match x "
                    + KernelTypes.shape(x) + " (one position per row)");
        }
        if (invFreq.rank() != 1 || invFreq.dim(0) != headDim / 2 || invFreq.dtype() != DType.F32) {
            throw new IllegalArgumentException("rope: invFreq " + invFreq + " must be F32 [headDim/2] = [" + headDim / 2 + "]");
        }
    }
}
