package dev.qlora4j.model;

import dev.qlora4j.io.CheckpointReader;
import dev.qlora4j.io.ModelFormatException;
import dev.qlora4j.tensor.Tensor;

/** A HF checkpoint folder (single or sharded safetensors) as a {@link WeightSource}. */
public final class CheckpointWeights implements WeightSource {
    private final CheckpointReader reader;
    private final String where;

    public CheckpointWeights(CheckpointReader reader, String where) {
        this.reader = reader;
        this.where = where;
    }

    @Override public boolean has(String name) { return reader.has(name); }

    @Override
    public Tensor get(String name) {
        if (!reader.has(name)) {
            throw new ModelFormatException(where + ": tensor '" + name + "' is missing; the checkpoint is "
                    + "incomplete or not a Llama-family model (expected HF names like model.layers.0.self_attn.q_proj.weight)");
        }
        return reader.tensor(name);
    }

    @Override public String describe() { return where; }
}
