package dev.qlora4j.infer;

/**
 * What generate() produced for each prompt of a batch.
 *
 * @param outputIds   new tokens per row (EOS included when it ended the row, as transformers returns it)
 * @param texts       decoded new text per row, special tokens skipped, cut before a stop string
 * @param stopReasons per row: "eos", "stop_string" or "length"
 * @param prefillNanos time of the prompt forward pass
 * @param decodeNanos  time of all decode steps
 * @param decodeSteps  number of decode forward passes (each produces one token per live row)
 */
public record GenerationResult(int[][] outputIds, String[] texts, String[] stopReasons,
                               long prefillNanos, long decodeNanos, int decodeSteps) {

    /** Decode throughput of one sequence: steps per second (batch rows advance together). */
    public double decodeTokensPerSecond() {
        return decodeNanos == 0 ? 0 : decodeSteps / (decodeNanos / 1e9);
    }
}
