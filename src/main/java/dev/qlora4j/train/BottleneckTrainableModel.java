package dev.qlora4j.train;

import dev.qlora4j.infer.LossEvaluator.LossSum;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.BottleneckModel;
import dev.qlora4j.tensor.Tensor;

import java.nio.file.Path;
import java.util.List;

/**
 * Bottleneck (Houlsby/Pfeiffer) adapters as the Trainer sees them: the adapters run as the model's
 * layer hooks, everything else is frozen. Saved in the peft-style layout of BottleneckModel.
 */
public final class BottleneckTrainableModel implements TrainableModel {
    private final TransformerLM model;
    private final BottleneckModel adapters;
    private final String baseName;

    public BottleneckTrainableModel(TransformerLM model, BottleneckModel adapters, String baseName) {
        this.model = model;
        this.adapters = adapters;
        this.baseName = baseName;
        model.setHooks(adapters);
    }

    @Override public List<Param> trainableParameters() { return adapters.trainableParameters(); }

    @Override public void setStep(long seed) { adapters.setStep(seed); }

    @Override
    public TransformerLM.StepResult trainStep(Batch b, boolean checkpointing, float gradScale) {
        adapters.train(true);
        return model.trainStep(b.ids(), b.positions(), b.segments(), b.targets(), b.batch(), checkpointing, gradScale);
    }

    @Override
    public LossSum eval(Batch b) {
        adapters.train(false);
        return model.evalStep(b.ids(), b.positions(), b.segments(), b.targets(), b.batch());
    }

    @Override public void saveAdapter(Path dir) { adapters.save(dir, baseName); }

    /** Copies a saved adapter's tensors into the live parameters (resume), by parameter order. */
    @Override
    public void loadAdapter(Path dir) {
        try (BottleneckModel saved = BottleneckModel.load(dir, model.backend(), model.numLayers(), model.config().hiddenSize())) {
            List<Param> from = saved.trainableParameters(), to = adapters.trainableParameters();
            if (from.size() != to.size()) {
                throw new IllegalArgumentException(dir + " holds " + from.size() + " adapter tensors, the model trains " + to.size());
            }
            for (int i = 0; i < to.size(); i++) {
                Tensor src = model.backend().toHost(from.get(i).value()), dst = to.get(i).value();
                if (!dst.device().isCpu()) throw new UnsupportedOperationException("resuming bottleneck adapters on a GPU is not supported yet");
                java.lang.foreign.MemorySegment.copy(src.toDType(dst.dtype()).segment(), 0, dst.segment(), 0, dst.byteSize());
            }
        }
    }

    @Override public void zeroGrad() { adapters.zeroGrad(); }
}
