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
            + "memory), offload layers with --device-map auto --max-memory '{\"0\":\"<GiB for weights>\",\"cpu\":\"64GiB\"}' "
            + "(or --load-in-4bit), or shorten --max-seq-length";

    static String message(long requested, long block, long allocated, long reserved, long peak, MemoryInfo info) {
        StringBuilder sb = new StringBuilder(String.format(Locale.ROOT,
                "out of GPU memory: requested %s (block %s) even after emptying the allocator's cache; in use by live tensors %s "
                        + "(peak %s), held by the allocator %s",
                gib(requested), gib(block), gib(allocated), gib(peak), gib(reserved)));
        if (info != null) {
            sb.append(String.format(Locale.ROOT, "; device free %s of total %s", gib(info.freeBytes()), gib(info.totalBytes())));
        }
        return sb.append("; ").append(SETTINGS).toString();
    }

    private static String gib(long bytes) {
        return String.format(Locale.ROOT, "%.2f GiB (%d bytes)", bytes / (double) (1L << 30), bytes);
    }
}
