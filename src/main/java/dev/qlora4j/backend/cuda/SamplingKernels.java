package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/**
 * Launcher of native/sampling.cu: each row's greedy or sampled token on the GPU (a decode step then sends back one int
 * per row instead of its logits).
 */
final class SamplingKernels {
    private SamplingKernels() {}

    /** Token ids the kernels mask at most (their e0..e3: a model's EOS ids); DecodeGraph publishes the same bound. */
    static final int MAX_EXCLUDED = DecodeGraph.MAX_EXCLUDED_IDS;
    /** native/sampling.cu's ARGMAX_THREADS. */
    static final int THREADS = 512;
    /** native/sampling.cu's SAMPLE_THREADS. */
    static final int SAMPLE_THREADS = 512;

    /**
     * token [rows] (I32, device) = the argmax of each row of logits [rows, vocab] (F32, BF16 or F16) with the excluded
     * ids (at most {@link #MAX_EXCLUDED}) read as -infinity: infer.Sampler's greedy choice after its EOS suppression,
     * the same index (the first on ties; NaN logits never win, a NaN first logit gives 0). nextIds (I32 [rows], or null)
     * gets the same ids: a decode graph's input for its next step. seen (U8 [rows, vocab], or null): the ids whose
     * logits get the repetition penalty first, as Sampler's (the pick is flagged in it for the next step).
     */
    static void argmaxRows(CudaContext ctx, Tensor logits, Tensor seen, float penalty, int[] excluded, Tensor token,
                           Tensor nextIds) {
        checkRows(logits, excluded, token, "argmax");
        checkSeen(logits, seen);
        int[] e = java.util.Arrays.copyOf(excluded, MAX_EXCLUDED);
        ctx.launch(ctx.function("sampling", "argmax_rows_" + suffix(logits)), Dim3.of(logits.dim(0)), Dim3.of(THREADS), 0,
                KernelArgs.of().ptr(CudaContext.ptr(logits)).i32(logits.dim(1))
                        .ptr(seen == null ? 0L : CudaContext.ptr(seen)).f32(penalty).i32(excluded.length)
                        .i32(e[0]).i32(e[1]).i32(e[2]).i32(e[3]).ptr(CudaContext.ptr(token))
                        .ptr(nextIds == null ? 0L : CudaContext.ptr(nextIds)));
    }

    /**
     * token [rows] (I32, device) = each row's token as infer.Sampler#sample picks it for the uniform draw uniforms[row]
     * (F64 [rows], device) from logits [rows, vocab] with the excluded ids read as -infinity: divided by temperature,
     * top-k (topK 0 = off), top-p (topP 1 = off), then the first index whose cumulative probability exceeds the draw.
     * The same token as the host for the same draw, except where a cumulative probability lands within ~1e-16 of the
     * draw or of 1 - topP (the sums run in another order). seen, penalty and nextIds as {@link #argmaxRows}. A row whose
     * values are NaN or +infinity reports DeviceStatus.SAMPLE_NOT_FINITE (row, vocab) in statusWord (an int[3] on the
     * device: the backend's status). Two launches: the first pass over the logits spread over several blocks a row,
     * then one block a row.
     */
    static void sampleRows(CudaContext ctx, Tensor logits, Tensor seen, float penalty, int[] excluded, float temperature,
                           int topK, double topP, Tensor uniforms, SampleScratch scratch, Tensor token, Tensor nextIds,
                           long statusWord) {
        checkRows(logits, excluded, token, "sample");
        checkSeen(logits, seen);
        int rows = logits.dim(0), vocab = logits.dim(1);
        if (uniforms.dtype() != DType.F64 || uniforms.numel() != rows) {
            throw new IllegalArgumentException("sample uniforms must be F64 [" + rows + "], got " + uniforms);
        }
        if (scratch.rows < rows || scratch.vocab != vocab) {
            throw new IllegalArgumentException("sample scratch is for " + scratch.rows + " x " + scratch.vocab
                    + " logits, got " + rows + " x " + vocab);
        }
        TokenPick.checkSampling(temperature, topK, topP);
        int[] e = java.util.Arrays.copyOf(excluded, MAX_EXCLUDED);
        ctx.launch(ctx.function("sampling", "sample_prepare_" + suffix(logits)),
                Dim3.of(prepareBlocks(ctx.properties().multiprocessorCount(), rows, vocab), rows),
                Dim3.of(SAMPLE_THREADS), 0,
                KernelArgs.of().ptr(CudaContext.ptr(logits)).i32(vocab)
                        .ptr(seen == null ? 0L : CudaContext.ptr(seen)).f32(penalty).i32(excluded.length)
                        .i32(e[0]).i32(e[1]).i32(e[2]).i32(e[3]).f32(temperature)
                        .ptr(CudaContext.ptr(scratch.keys)).ptr(CudaContext.ptr(scratch.hist))
                        .ptr(CudaContext.ptr(scratch.maxKey)).ptr(statusWord));
        ctx.launch(ctx.function("sampling", "sample_rows"), Dim3.of(rows), Dim3.of(SAMPLE_THREADS), 0,
                KernelArgs.of().i32(vocab).i32(topK)
                        .i64(Double.doubleToRawLongBits(1 - topP))   // the kernel's double one_minus_p (8 bytes)
                        .ptr(CudaContext.ptr(uniforms)).ptr(CudaContext.ptr(scratch.keys))
                        .ptr(CudaContext.ptr(scratch.masses)).ptr(CudaContext.ptr(scratch.hist))
                        .ptr(CudaContext.ptr(scratch.maxKey)).ptr(seen == null ? 0L : CudaContext.ptr(seen))
                        .ptr(CudaContext.ptr(token))
                        .ptr(nextIds == null ? 0L : CudaContext.ptr(nextIds)));
    }

    /** Blocks a row for the first pass: about two blocks per SM over all rows, at most 32, at least 1,024 values each. */
    static int prepareBlocks(int multiprocessors, int rows, int vocab) {
        int bySms = Math.max(1, 2 * multiprocessors / rows);
        int byWork = Math.max(1, (vocab + 1023) / 1024);
        return Math.min(32, Math.min(bySms, byWork));
    }

    private static void checkRows(Tensor logits, int[] excluded, Tensor token, String what) {
        KernelTypes.requireDevice(logits, what + " logits");
        KernelTypes.requireRank(logits, 2, what + " logits");
        if (excluded.length > MAX_EXCLUDED) {
            throw new IllegalArgumentException("the GPU " + what + " masks at most " + MAX_EXCLUDED + " ids, got "
                    + excluded.length);
        }
        if (token.dtype() != DType.I32 || token.numel() != logits.dim(0)) {
            throw new IllegalArgumentException(what + " token must be I32 [" + logits.dim(0) + "], got " + token);
        }
    }

    private static void checkSeen(Tensor logits, Tensor seen) {
        if (seen != null && (seen.dtype() != DType.U8 || seen.numel() != logits.numel())) {
            throw new IllegalArgumentException("seen flags must be U8 " + java.util.Arrays.toString(logits.shape())
                    + ", got " + seen);
        }
    }

    private static String suffix(Tensor logits) {
        return switch (logits.dtype()) {
            case F32 -> "f32";
            case BF16 -> "bf16";
            case F16 -> "f16";
            default -> throw new IllegalArgumentException("logits must be F32, BF16 or F16, got " + logits.dtype());
        };
    }
}
