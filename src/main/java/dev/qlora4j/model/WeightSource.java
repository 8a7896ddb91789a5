package dev.qlora4j.model;

import dev.qlora4j.tensor.Tensor;

/** Named host tensors a model is built from (a checkpoint on disk, or tensors made in memory). */
public interface WeightSource {
    boolean has(String name);

    /** The host tensor for a name; a missing name is an error that names the checkpoint. */
    Tensor get(String name);

    /** Where the weights come from, for messages. */
    String describe();
}
