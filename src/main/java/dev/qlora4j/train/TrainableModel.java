package dev.qlora4j.train;

import dev.qlora4j.infer.LossEvaluator.LossSum;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.optim.Param;

import java.nio.file.Path;
import java.util.List;

/**
 * What the {@link Trainer} needs from a model with its adapter (a PeftModel over a TransformerLM
 * implements it; tests use small fakes). Calls come from one thread, in this order per optimizer
 * step: for every micro-batch {@link #setStep} then {@link #trainStep}; then the trainer clips and
 * steps the optimizer over {@link #trainableParameters()} and calls {@link #zeroGrad()}.
 */
public interface TrainableModel {
    /**
     * The tensors the optimizer updates (adapter weights), with stable names (optimizer state is
     * keyed by them in checkpoints) and gradients that {@link #trainStep} accumulates. Called once
     * per run; the optimizer keeps these objects.
     */
    List<Param> trainableParameters();

    /**
     * Seeds the randomness of the next {@link #trainStep} (dropout masks). The seed is a pure
     * function of (seed, global step, micro-batch), so the same seed must give the same masks:
     * that is what makes a resumed run identical to an uninterrupted one.
     */
    void setStep(long seed);

    /**
     * One training forward and backward over {@code batch} (see {@link TransformerLM#trainStep}):
     * gradients of {@code gradScale x (sum of token losses)} are added to the parameters'
     * gradients. The trainer passes gradScale = 1 / (trained tokens of the whole accumulated
     * step), so the accumulated gradient is that of the token-mean loss.
     */
    TransformerLM.StepResult trainStep(Batch batch, boolean checkpointing, float gradScale);

    /** Sum of token losses and the token count over the batch's targets: no dropout, no gradients. */
    LossSum eval(Batch batch);

    /** Writes the adapter (peft layout: adapter_config.json + adapter_model.safetensors) into dir, atomically per file. */
    void saveAdapter(Path dir);

    /** Loads adapter weights written by {@link #saveAdapter} into the trainable parameters (resume). */
    void loadAdapter(Path dir);

    /** Sets every gradient to zero (or drops them) before the next step accumulates. */
    void zeroGrad();
}
