package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/**
 * Launchers of native/cast.cu: dtype conversions between F32, BF16 and F16 on the device (round to
 * nearest even, as dev.qlora4j.tensor.Half does on the CPU). BF16 <-> F16 goes through F32, which is
 * exact on the way up, so the result is the single rounding of the value.
 */
final class CastKernels {
    private CastKernels() {}

    /** A new device tensor holding t converted to dtype (a plain copy when the dtype is the same). */
    static Tensor cast(CudaContext ctx, Tensor t, DType to) {
        KernelTypes.requireDevice(t, "cast input");
        DType from = t.dtype();
        Tensor out = ctx.empty(to, t.shape());
        try {
            if (from == to) {
                if (t.byteSize() > 0) {
                    ctx.driver().memcpyDtoDAsync(CudaContext.ptr(out), CudaContext.ptr(t), t.byteSize(), ctx.stream());
                }
            } else if (from == DType.F32 || to == DType.F32) {
                direct(ctx, t, out);
            } else if (isHalf(from) && isHalf(to)) {
                try (Tensor mid = ctx.empty(DType.F32, t.shape())) {
                    direct(ctx, t, mid);
                    direct(ctx, mid, out);
                }
            } else {
                throw new IllegalArgumentException("the CUDA backend casts between F32, BF16 and F16, not "
                        + from + " -> " + to);
            }
            return out;
        } catch (RuntimeException e) {
            out.close();
            throw e;
        }
    }

    private static boolean isHalf(DType t) { return t == DType.BF16 || t == DType.F16; }

    private static void direct(CudaContext ctx, Tensor src, Tensor dst) {
        String kernel = "cast_" + name(src.dtype()) + "_to_" + name(dst.dtype());
        long n = src.numel();
        ctx.launch1d(ctx.function("cast", kernel), n,
                KernelArgs.of().ptr(CudaContext.ptr(src)).ptr(CudaContext.ptr(dst)).i64(n));
    }

    private static String name(DType t) {
        return switch (t) {
            case F32 -> "f32";
            case BF16 -> "bf16";
            case F16 -> "f16";
            default -> throw new IllegalArgumentException("the CUDA backend casts between F32, BF16 and F16, not " + t);
        };
    }
}
