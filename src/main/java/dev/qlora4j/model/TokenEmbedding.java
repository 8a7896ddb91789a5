package dev.qlora4j.model;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.tensor.Tensor;

/**
 * A trainable replacement for the frozen embedding table (peft's modules_to_save copy of
 * embed_tokens): the model embeds with it while it is active and sends it the gradient of the
 * embedding output during training.
 */
public interface TokenEmbedding {
    /** ids I32 [n] -> [n, hidden]. */
    Tensor forward(Backend b, Tensor ids);

    /** Accumulates the table gradient for gradOut [n, hidden]. */
    void backward(Backend b, Tensor ids, Tensor gradOut);
}
