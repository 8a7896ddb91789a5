package dev.qlora4j.cuda;

import java.util.Locale;

/**
 * The text of a GPU out-of-memory error: the numbers (requested, held by live tensors, cached, free, total)
 * and the settings that make a run fit, most effective first.
 */
public final class OutOfMemoryAdvice {
    private OutOfMemoryAdvice() {}

    /** What to change, as flags of the train/generate/eval commands. */
    public static final String SETTINGS = "to fit, lower --per-device-train-batch-size (raise --gradient-accumulation-steps to keep the "
            + "effective batch), enable --gradient-checkpointing, add --offload-activations (checkpointed layer inputs go to host "
            + "memory) or add --no-checkpoint-keep-attention and --no-checkpoint-keep-residual (the attention outputs and attention "
            + "block outputs checkpointing keeps per layer, within 1 GiB or 1/32 of the GPU's memory by default, are then "
            + "recomputed), add --embedding-in-host-memory (the token embedding table moves to host memory), offload layers "
            + "with --device-map auto --max-memory '{\"0\":\"<GiB for weights>\",\"cpu\":\"64GiB\"}' "
            + "(or --load-in-4bit), or shorten --max-seq-length; with checkpointing, --no-checkpoint-keep-dequantized also "
            + "frees the up to 512 MiB of one layer's dequantized weights kept from its recompute for its backward";

    static String message(long requested, long block, long allocated, long reserved, long peak, MemoryInfo info) {
        StringBuilder sb = new StringBuilder(String.format(Locale.ROOT,
                "out of GPU memory: requested %d bytes (%s, block %d) even after emptying the allocator's cache; allocated %d bytes "
                        + "in live tensors (%s, peak %s), reserved %d by the allocator (%s)",
                requested, gib(requested), block, allocated, gib(allocated), gib(peak), reserved, gib(reserved)));
        if (info != null) {
            sb.append(String.format(Locale.ROOT, "; device free %d of total %d bytes (%s of %s)", info.freeBytes(), info.totalBytes(),
                    gib(info.freeBytes()), gib(info.totalBytes())));
        }
        return sb.append("; ").append(SETTINGS).toString();
    }

    private static String gib(long bytes) {
        return String.format(Locale.ROOT, "%.2f GiB", bytes / (double) (1L << 30));
    }
}
