package dev.qlora4j.train;

import dev.qlora4j.infer.LossEvaluator.LossSum;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.prefix.TrainablePromptTuning;

import java.nio.file.Path;
import java.util.List;

/**
 * Prompt tuning as the Trainer sees it: every batch gets the virtual tokens in front of each
 * example ({@link VirtualTokenBatches}) and the model embeds them through the learned table.
 * Saved in peft's layout (prompt_embeddings [V, hidden]).
 */
public final class PromptTuningTrainableModel implements TrainableModel {
    private final TransformerLM model;
    private final TrainablePromptTuning prompt;
    private final String baseName;

    public PromptTuningTrainableModel(TransformerLM model, TrainablePromptTuning prompt, String baseName) {
        this.model = model;
        this.prompt = prompt;
        this.baseName = baseName;
        prompt.attach();
    }

    public TrainablePromptTuning prompt() { return prompt; }

    @Override public List<Param> trainableParameters() { return prompt.trainableParameters(); }

    /** Prompt tuning has no dropout: nothing is random in a step. */
    @Override public void setStep(long seed) { }

    @Override
    public TransformerLM.StepResult trainStep(Batch batch, boolean checkpointing, float gradScale) {
        Batch b = VirtualTokenBatches.expand(batch, prompt.numVirtualTokens());
        return model.trainStep(b.ids(), b.positions(), b.segments(), b.targets(), b.batch(), checkpointing, gradScale);
    }

    @Override
    public LossSum eval(Batch batch) {
        Batch b = VirtualTokenBatches.expand(batch, prompt.numVirtualTokens());
        return model.evalStep(b.ids(), b.positions(), b.segments(), b.targets(), b.batch());
    }

    @Override public void saveAdapter(Path dir) { prompt.save(dir, baseName); }

    @Override public void loadAdapter(Path dir) { prompt.loadParameters(dir); }

    @Override public void zeroGrad() { prompt.zeroGrad(); }
}
