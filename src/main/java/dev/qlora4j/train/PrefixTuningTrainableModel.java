package dev.qlora4j.train;

import dev.qlora4j.infer.LossEvaluator.LossSum;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.prefix.TrainablePrefixTuning;

import java.nio.file.Path;
import java.util.List;

/**
 * Prefix tuning as the Trainer sees it: every step computes the per-layer prefix keys/values
 * from the encoder's current parameters, runs the model's step with them, then takes their
 * gradients back into the encoder. Saved in peft's layout (prompt_embeddings = the table).
 */
public final class PrefixTuningTrainableModel implements TrainableModel {
    private final TransformerLM model;
    private final TrainablePrefixTuning prefix;
    private final String baseName;

    public PrefixTuningTrainableModel(TransformerLM model, TrainablePrefixTuning prefix, String baseName) {
        this.model = model;
        this.prefix = prefix;
        this.baseName = baseName;
        prefix.attach();
    }

    public TrainablePrefixTuning prefix() { return prefix; }

    @Override public List<Param> trainableParameters() { return prefix.trainableParameters(); }

    /** Prefix tuning has no dropout: nothing is random in a step. */
    @Override public void setStep(long seed) { }

    @Override
    public TransformerLM.StepResult trainStep(Batch b, boolean checkpointing, float gradScale) {
        prefix.beginStep(true);
        try {
            TransformerLM.StepResult r = model.trainStep(b.ids(), b.positions(), b.segments(), b.targets(), b.batch(),
                    checkpointing, gradScale);
            prefix.endStep();
            return r;
        } finally {
            prefix.discardStep(); // frees the step's tensors if the step failed (a no-op after endStep)
        }
    }

    @Override
    public LossSum eval(Batch b) {
        prefix.beginStep(false);
        try {
            return model.evalStep(b.ids(), b.positions(), b.segments(), b.targets(), b.batch());
        } finally {
            prefix.discardStep();
        }
    }

    @Override public void saveAdapter(Path dir) { prefix.save(dir, baseName); }

    @Override public void loadAdapter(Path dir) { prefix.loadParameters(dir); }

    @Override public void zeroGrad() { prefix.zeroGrad(); }
}
