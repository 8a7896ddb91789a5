package dev.qlora4j.train;

import dev.qlora4j.infer.LossEvaluator.LossSum;
import dev.qlora4j.io.SafetensorsFile;
import dev.qlora4j.tensor.Tensor;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.PeftModel;

import java.nio.file.Path;
import java.util.List;

/**
 * A LoRA/DoRA-wrapped model as the Trainer sees it: the adapters' parameters train, everything
 * else is frozen (quantized or not). Training steps run with lora_dropout; evaluation without.
 */
public final class PeftTrainableModel implements TrainableModel {
    private final PeftModel peft;
    private final String adapter;

    public PeftTrainableModel(PeftModel peft, String adapter) {
        this.peft = peft;
        this.adapter = adapter;
    }

    public PeftModel peft() { return peft; }

    @Override public List<Param> trainableParameters() { return peft.trainableParameters(); }

    @Override public void setStep(long seed) { peft.setStep(seed); }

    @Override
    public TransformerLM.StepResult trainStep(Batch b, boolean checkpointing, float gradScale) {
        peft.train(true);
        return peft.model().trainStep(b.ids(), b.positions(), b.segments(), b.targets(), b.batch(), checkpointing, gradScale);
    }

    @Override
    public LossSum eval(Batch b) {
        peft.train(false);
        return peft.model().evalStep(b.ids(), b.positions(), b.segments(), b.targets(), b.batch());
    }

    @Override public void saveAdapter(Path dir) { peft.save(dir, adapter); }

    /**
     * Replaces the adapter's weights by a saved copy (resume_from_checkpoint), in place, so the
     * parameters keep their identity and names (the optimizer state is keyed by them).
     */
    @Override
    public void loadAdapter(Path dir) {
        Path file = dir.resolve("adapter_model.safetensors");
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            for (Param p : peft.trainableParameters()) {
                String key = savedKey(p.name());
                if (!f.has(key)) {
                    throw new IllegalArgumentException(file + " has no tensor " + key + " for parameter " + p.name()
                            + ": the checkpoint was saved with another adapter configuration");
                }
                Tensor src = f.tensor(key);
                Tensor dst = p.value();
                if (!java.util.Arrays.equals(src.shape(), dst.shape())) {
                    throw new IllegalArgumentException(file + ": " + key + " is " + java.util.Arrays.toString(src.shape())
                            + " but the model's parameter is " + java.util.Arrays.toString(dst.shape()));
                }
                Tensor host = src.toDType(dst.dtype());
                if (dst.device().isCpu()) {
                    java.lang.foreign.MemorySegment.copy(host.segment(), 0, dst.segment(), 0, dst.byteSize());
                } else {
                    throw new UnsupportedOperationException("resuming adapters on " + dst.device() + " is not supported yet: resume on the CPU");
                }
            }
        }
    }

    /** peft's in-memory parameter name -> the key peft saves it under (adapter name removed). */
    String savedKey(String name) {
        String k = name.replace(".modules_to_save." + adapter + ".", ".").replace("." + adapter + ".", ".");
        return k.endsWith("lora_magnitude_vector.weight") ? k.substring(0, k.length() - ".weight".length()) : k;
    }

    @Override public void zeroGrad() { peft.zeroGrad(); }
}
