package dev.qlora4j.optim;

import dev.qlora4j.tensor.Tensor;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * torch.optim.AdamW on host tensors (optim="adamw_torch" in transformers). State per parameter:
 * exp_avg [shape], exp_avg_sq [shape] (float32) and step, created on the parameter's first step.
 * {@link StateStorage#PAGED} is accepted and changes nothing on the host (see StateStorage).
 */
public final class AdamW extends HostOptimizer<AdamW.State> {
    private final AdamWConfig config;

    static final class State {
        final float[] expAvg;
        final float[] expAvgSq;
        long step;

        State(float[] expAvg, float[] expAvgSq, long step) {
            this.expAvg = expAvg;
            this.expAvgSq = expAvgSq;
            this.step = step;
        }
    }

    /** One update rule over explicit groups (e.g. {@link ParamGroups#split}); config.weightDecay() is unused. */
    public AdamW(List<ParamGroup> groups, AdamWConfig config) {
        super(groups, config.lr());
        this.config = config;
    }

    /** All parameters in one group with config.weightDecay(). */
    public static AdamW of(List<? extends Param> params, AdamWConfig config) {
        return new AdamW(List.of(new ParamGroup(List.copyOf(params), config.weightDecay())), config);
    }

    public AdamWConfig config() { return config; }

    @Override public String name() { return "AdamW"; }

    @Override State newState(int numel) { return new State(new float[numel], new float[numel], 0); }

    @Override
    void update(float[] value, float[] grad, double weightDecay, State s) {
        s.step++;
        AdamWKernel.Scalars k = AdamWKernel.Scalars.of(lr(), config.beta1(), config.beta2(), config.eps(), weightDecay, s.step);
        AdamWKernel.update(value, grad, s.expAvg, s.expAvgSq, 0, value.length, k);
    }

    @Override
    Map<String, Tensor> slots(State s, int[] shape) {
        Map<String, Tensor> m = new LinkedHashMap<>();
        m.put("exp_avg", floatsTensor(s.expAvg, shape));
        m.put("exp_avg_sq", floatsTensor(s.expAvgSq, shape));
        m.put("step", stepTensor(s.step));
        return m;
    }

    @Override
    State fromSlots(String param, int numel, Slots slots) {
        return new State(slots.floats("exp_avg", numel), slots.floats("exp_avg_sq", numel), slots.step());
    }

    @Override
    public Map<String, String> hyperParameters() {
        return Map.of("lr", Double.toString(lr()), "betas", config.beta1() + "," + config.beta2(),
                "eps", Double.toString(config.eps()), "weight_decay", Double.toString(config.weightDecay()),
                "storage", config.storage().name());
    }
}
