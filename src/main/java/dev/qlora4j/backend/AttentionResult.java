package dev.qlora4j.backend;

import dev.qlora4j.tensor.Tensor;

/**
 * The output of training attention and what its backward needs.
 *
 * @param out [B*T, heads*headDim]
 * @param lse F32 [B, heads, T]: log-sum-exp of each query's scaled scores (flash-attention's
 *            saved statistic, so backward recomputes probabilities without storing them)
 */
public record AttentionResult(Tensor out, Tensor lse) implements AutoCloseable {
    @Override
    public void close() {
        out.close();
        lse.close();
    }
}
