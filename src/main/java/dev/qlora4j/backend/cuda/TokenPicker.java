package dev.qlora4j.backend.cuda;

import dev.qlora4j.tensor.Tensor;

/**
 * Picks each row's next token from logits on the device ({@link TokenPick}: greedy or sampled, with the repetition
 * penalty and the EOS mask), so that only the token ids come back: the decode steps that run without a recorded graph
 * (layers offloaded or over several GPUs, prefix tuning's cache offset, "dynamic" RoPE). A recorded graph picks with
 * {@link DecodeGraph#launchPick} instead.
 */
public interface TokenPicker extends AutoCloseable {

    /** Each row's token for logits [batch, vocab] on this picker's device (waits for it). */
    int[] pick(Tensor logits, TokenPick pick);

    /**
     * Flags each row's tokens[r] (its context so far) for the repetition penalty of later picks, which add their own
     * picks; replaces earlier flags.
     */
    void markSeen(int[][] tokens, int vocab);

    @Override
    void close();
}
