package dev.qlora4j.optim;

import java.util.List;

/**
 * Parameters that share a weight decay, as a torch param group does ({"params": [...],
 * "weight_decay": wd}). The learning rate is the optimizer's (one schedule drives all groups,
 * as in transformers' Trainer).
 */
public record ParamGroup(List<Param> params, double weightDecay) {
    public ParamGroup {
        params = List.copyOf(params);
        if (!(weightDecay >= 0)) throw new IllegalArgumentException("Invalid weight_decay value: " + weightDecay + " (must be >= 0)");
    }
}
