package dev.qlora4j.optim;

import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.function.BiFunction;
import java.util.function.Function;

/**
 * One optimizer over parameters that live on several devices (a model split over GPUs): the parameters are
 * grouped by device and each group is stepped by an optimizer of its own device (a CUDA optimizer runs on one
 * backend's stream), while the Trainer sees a single {@link Optimizer}. The update of every parameter depends
 * only on that parameter's value, gradient and state, so splitting changes no number; the learning rate is
 * shared, the state dict is the union of the parts' (keys name parameters, which are disjoint) and loading splits
 * it back by parameter name.
 */
public final class PerDeviceOptimizer implements Optimizer {
    private final List<ParamGroup> groups;
    private final List<Optimizer> parts;
    private final Map<String, Optimizer> owner = new LinkedHashMap<>(); // parameter name -> its device's optimizer
    private double lr;

    /**
     * @param groups   every parameter, grouped as one optimizer would see them (weight decay groups)
     * @param deviceOf the device key of a parameter (compared by identity: e.g. the backend it lives on)
     * @param create   builds the optimizer of one device over that device's parameters (in model order)
     */
    public PerDeviceOptimizer(List<ParamGroup> groups, Function<Param, Object> deviceOf,
                              BiFunction<Object, List<Param>, Optimizer> create) {
        this.groups = List.copyOf(groups);
        Map<Object, List<Param>> byDevice = new IdentityHashMap<>();
        List<Object> order = new ArrayList<>();
        for (ParamGroup g : groups) {
            for (Param p : g.params()) {
                Object d = deviceOf.apply(p);
                if (!byDevice.containsKey(d)) order.add(d);
                byDevice.computeIfAbsent(d, k -> new ArrayList<>()).add(p);
            }
        }
        List<Optimizer> made = new ArrayList<>();
        for (Object d : order) {
            Optimizer o = create.apply(d, byDevice.get(d));
            made.add(o);
            for (Param p : byDevice.get(d)) owner.put(p.name(), o);
        }
        if (made.isEmpty()) throw new IllegalArgumentException("no parameters to optimize");
        this.parts = List.copyOf(made);
        this.lr = made.getFirst().lr();
    }

    /** The optimizers of the devices, in model order. */
    public List<Optimizer> parts() { return parts; }

    @Override public String name() { return parts.getFirst().name(); }

    @Override public List<ParamGroup> groups() { return groups; }

    @Override public double lr() { return lr; }

    @Override
    public void setLr(double lr) {
        this.lr = lr;
        for (Optimizer o : parts) o.setLr(lr);
    }

    @Override
    public void step() {
        for (Optimizer o : parts) o.step();
    }

    @Override
    public Map<String, dev.qlora4j.tensor.Tensor> stateDict() {
        Map<String, dev.qlora4j.tensor.Tensor> all = new LinkedHashMap<>();
        for (Optimizer o : parts) all.putAll(o.stateDict());
        return all;
    }

    @Override
    public void loadStateDict(Map<String, dev.qlora4j.tensor.Tensor> state) {
        Map<Optimizer, Map<String, dev.qlora4j.tensor.Tensor>> split = new IdentityHashMap<>();
        for (Optimizer o : parts) split.put(o, new LinkedHashMap<>());
        for (var e : state.entrySet()) {
            Optimizer o = ownerOfKey(e.getKey());
            if (o == null) {
                throw new IllegalArgumentException("optimizer state " + e.getKey() + " names no parameter of this model: the "
                        + "checkpoint was saved with another adapter configuration");
            }
            split.get(o).put(e.getKey(), e.getValue());
        }
        for (Optimizer o : parts) o.loadStateDict(split.get(o));
    }

    /** "state.<param name>.<slot>" -> the optimizer of that parameter (the longest parameter name that matches). */
    private Optimizer ownerOfKey(String key) {
        if (!key.startsWith("state.")) return null;
        String rest = key.substring("state.".length());
        Optimizer best = null;
        int bestLen = -1;
        for (var e : owner.entrySet()) {
            String n = e.getKey();
            if (rest.startsWith(n + ".") && n.length() > bestLen) {
                best = e.getValue();
                bestLen = n.length();
            }
        }
        return best;
    }

    @Override public Map<String, String> hyperParameters() { return parts.getFirst().hyperParameters(); }
}
