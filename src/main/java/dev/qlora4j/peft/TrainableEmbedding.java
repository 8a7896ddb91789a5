package dev.qlora4j.peft;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.optim.Param;
import dev.qlora4j.tensor.Tensor;

import java.util.List;

/**
 * peft's modules_to_save copy of the input embedding (modules_to_save=["embed_tokens"]): a
 * float32 table [vocab, hidden] trained in full. The decoder must look tokens up here instead of
 * in the frozen table while the adapter is active: see PeftModel#embeddingOverride.
 */
public final class TrainableEmbedding implements AutoCloseable, dev.qlora4j.model.TokenEmbedding {
    private final String paramName;       // "base_model.model.model.embed_tokens.modules_to_save.<adapter>.weight"
    private final TrainableTensor weight; // [vocab, hidden]

    TrainableEmbedding(String paramName, TrainableTensor weight) {
        this.paramName = paramName;
        this.weight = weight;
    }

    public TrainableTensor weight() { return weight; }

    /** ids I32 [n] -> [n, hidden]. */
    @Override
    public Tensor forward(Backend b, Tensor ids) {
        return b.embedding(ids, weight.value());
    }

    /** Accumulates the table gradient for gradOut [n, hidden]. */
    @Override
    public void backward(Backend b, Tensor ids, Tensor gradOut) {
        b.embeddingBackward(ids, gradOut, weight.gradForAccumulation(b));
    }

    public Param param() { return weight.param(paramName); }

    public List<Param> trainableParameters() { return List.of(param()); }

    @Override
    public void close() { weight.close(); }
}
