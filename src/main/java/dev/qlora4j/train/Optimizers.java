package dev.qlora4j.train;

import dev.qlora4j.optim.AdamW;
import dev.qlora4j.optim.AdamW8bit;
import dev.qlora4j.optim.AdamW8bitConfig;
import dev.qlora4j.optim.AdamWConfig;
import dev.qlora4j.optim.Optimizer;
import dev.qlora4j.optim.Param;
import dev.qlora4j.optim.ParamGroup;
import dev.qlora4j.optim.ParamGroups;
import dev.qlora4j.optim.Sgd;
import dev.qlora4j.optim.SgdConfig;
import dev.qlora4j.optim.StateStorage;

import java.util.List;

/**
 * The optimizer transformers' Trainer.create_optimizer builds for {@code optim}, over two groups
 * (ParamGroups.split: no weight decay on biases and norms), with TrainingArguments' lr, betas,
 * epsilon and weight_decay:
 * adamw_torch / adamw_torch_fused -> AdamW; adamw_8bit / adamw_bnb_8bit -> AdamW8bit;
 * paged_adamw_8bit -> AdamW8bit with paged state; paged_adamw_32bit -> AdamW with paged state;
 * sgd -> SGD without momentum (torch.optim.SGD(lr=...)).
 */
public final class Optimizers {
    private Optimizers() {}

    /** Builds the optimizer for a run (the default {@link Trainer.OptimizerFactory}). */
    public static Optimizer create(TrainingArguments a, List<? extends Param> params) {
        List<ParamGroup> groups = ParamGroups.split(params, a.weightDecay());
        return switch (a.optim()) {
            case "adamw_torch", "adamw_torch_fused" -> new AdamW(groups, adamW(a, StateStorage.DEVICE));
            case "paged_adamw_32bit" -> new AdamW(groups, adamW(a, StateStorage.PAGED));
            case "adamw_8bit", "adamw_bnb_8bit" -> new AdamW8bit(groups, adamW8bit(a, StateStorage.DEVICE));
            case "paged_adamw_8bit" -> new AdamW8bit(groups, adamW8bit(a, StateStorage.PAGED));
            case "sgd" -> new Sgd(groups, new SgdConfig(a.learningRate(), 0, 0, false, a.weightDecay()));
            default -> throw new IllegalArgumentException("optim \"" + a.optim() + "\" is not supported; use one of " + TrainingArguments.OPTIMIZERS);
        };
    }

    private static AdamWConfig adamW(TrainingArguments a, StateStorage s) {
        return new AdamWConfig(a.learningRate(), a.adamBeta1(), a.adamBeta2(), a.adamEpsilon(), a.weightDecay(), s);
    }

    private static AdamW8bitConfig adamW8bit(TrainingArguments a, StateStorage s) {
        return new AdamW8bitConfig(a.learningRate(), a.adamBeta1(), a.adamBeta2(), a.adamEpsilon(), a.weightDecay(), 4096, s);
    }
}
