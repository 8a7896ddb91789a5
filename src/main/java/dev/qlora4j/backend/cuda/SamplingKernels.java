package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/**
 * Launcher of native/sampling.cu: each row's greedy token on the GPU (a decode step then sends back one int per row
 * instead of its logits).
 */
final class SamplingKernels {
    private SamplingKernels() {}

    /** Token ids the kernel masks at most (argmax_rows' e0..e3: a model's EOS ids). */
    static final int MAX_EXCLUDED = 4;
    /** native/sampling.cu's ARGMAX_THREADS. */
    static final int THREADS = 512;

    /**
     * token [rows] (I32, device) = the argmax of each row of logits [rows, vocab] (F32, BF16 or F16) with the excluded
     * ids (at most {@link #MAX_EXCLUDED}) read as -infinity: infer.Sampler's greedy choice after its EOS suppression,
     * the same index (the first on ties; NaN logits never win, a NaN first logit gives 0). nextIds (I32 [rows], or null)
     * gets the same ids: a decode graph's input for its next step.
     */
    static void argmaxRows(CudaContext ctx, Tensor logits, int[] excluded, Tensor token, Tensor nextIds) {
        KernelTypes.requireDevice(logits, "argmax logits");
        KernelTypes.requireRank(logits, 2, "argmax logits");
        if (excluded.length > MAX_EXCLUDED) {
            throw new IllegalArgumentException("the GPU argmax masks at most " + MAX_EXCLUDED + " ids, got " + excluded.length);
        }
        if (token.dtype() != DType.I32 || token.numel() != logits.dim(0)) {
            throw new IllegalArgumentException("argmax token must be I32 [" + logits.dim(0) + "], got " + token);
        }
        String t = switch (logits.dtype()) {
            case F32 -> "f32";
            case BF16 -> "bf16";
            case F16 -> "f16";
            default -> throw new IllegalArgumentException("argmax logits must be F32, BF16 or F16, got " + logits.dtype());
        };
        int[] e = java.util.Arrays.copyOf(excluded, MAX_EXCLUDED);
        ctx.launch(ctx.function("sampling", "argmax_rows_" + t), Dim3.of(logits.dim(0)), Dim3.of(THREADS), 0,
                KernelArgs.of().ptr(CudaContext.ptr(logits)).i32(logits.dim(1)).i32(excluded.length)
                        .i32(e[0]).i32(e[1]).i32(e[2]).i32(e[3]).ptr(CudaContext.ptr(token))
                        .ptr(nextIds == null ? 0L : CudaContext.ptr(nextIds)));
    }
}
