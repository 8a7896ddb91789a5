package dev.qlora4j.train;

/**
 * A micro-batch as the model's trainStep takes it: {@code batch} rows of {@code seqLen} tokens,
 * all arrays row-major [batch * seqLen].
 *
 * @param ids         [batch*seqLen] input ids (pad id after each row's tokens)
 * @param positions   [batch*seqLen] position ids, restarting at 0 for every example (and for the padding)
 * @param segments    [batch*seqLen] attention segment per token (example index within its row; the
 *                    padding of a row has its own index), or null when every row is one unpadded example
 * @param targets     [batch*seqLen] next-token labels already shifted: targets[t] = labels[t+1] of
 *                    the same example, -100 at each example's last token, on padding and where
 *                    labels are masked
 * @param tokens      targets != -100: the tokens this micro-batch adds to the loss
 * @param examples    examples in the batch (packed parts counted one by one)
 * @param inputTokens non-padding input tokens
 */
public record Batch(int[] ids, int[] positions, int[] segments, int[] targets, int batch, int seqLen,
                    long tokens, int examples, long inputTokens) {
    public Batch {
        int n = batch * seqLen;
        if (batch < 1 || seqLen < 1 || ids.length != n || positions.length != n || targets.length != n
                || (segments != null && segments.length != n)) {
            throw new IllegalArgumentException("batch arrays must all hold batch x seqLen = " + batch + " x " + seqLen + " entries");
        }
    }
}
