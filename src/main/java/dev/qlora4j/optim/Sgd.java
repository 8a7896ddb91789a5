package dev.qlora4j.optim;

import dev.qlora4j.tensor.Tensor;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** torch.optim.SGD on host tensors. State: momentum_buffer [shape] when momentum is not 0. */
public final class Sgd extends HostOptimizer<Sgd.State> {
    private final SgdConfig config;

    static final class State {
        float[] buffer; // null until the first step (torch: momentum_buffer None)

        State(float[] buffer) { this.buffer = buffer; }
    }

    public Sgd(List<ParamGroup> groups, SgdConfig config) {
        super(groups, config.lr());
        this.config = config;
    }

    /** All parameters in one group with config.weightDecay(). */
    public static Sgd of(List<? extends Param> params, SgdConfig config) {
        return new Sgd(List.of(new ParamGroup(List.copyOf(params), config.weightDecay())), config);
    }

    public SgdConfig config() { return config; }

    @Override public String name() { return "SGD"; }

    @Override State newState(int numel) { return new State(null); }

    @Override
    void update(float[] value, float[] grad, double weightDecay, State s) {
        boolean first = false;
        if (config.momentum() != 0 && s.buffer == null) {
            s.buffer = new float[value.length];
            first = true;
        }
        SgdKernel.update(value, grad, s.buffer, 0, value.length, (float) lr(), (float) weightDecay,
                (float) config.momentum(), (float) config.dampening(), config.nesterov(), first);
    }

    @Override
    Map<String, Tensor> slots(State s, int[] shape) {
        Map<String, Tensor> m = new LinkedHashMap<>();
        if (s.buffer != null) m.put("momentum_buffer", floatsTensor(s.buffer, shape));
        return m;
    }

    @Override
    State fromSlots(String param, int numel, Slots slots) {
        return new State(slots.has("momentum_buffer") ? slots.floats("momentum_buffer", numel) : null);
    }

    @Override
    public Map<String, String> hyperParameters() {
        return Map.of("lr", Double.toString(lr()), "momentum", Double.toString(config.momentum()),
                "dampening", Double.toString(config.dampening()), "nesterov", Boolean.toString(config.nesterov()),
                "weight_decay", Double.toString(config.weightDecay()));
    }
}
