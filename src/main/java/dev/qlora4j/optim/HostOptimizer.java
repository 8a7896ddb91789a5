package dev.qlora4j.optim;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * Shared bookkeeping of the host optimizers: groups, learning rate, per-parameter state created
 * on the first step (as torch does), host float access, and the state-dict naming.
 *
 * @param <S> per-parameter state
 */
abstract class HostOptimizer<S> implements Optimizer {
    static final String PREFIX = dev.qlora4j.optim.StateDictKeys.PREFIX;

    private final List<ParamGroup> groups;
    private final Map<String, Param> byName = new LinkedHashMap<>();
    private final Map<String, S> state = new HashMap<>();
    private double lr;

    HostOptimizer(List<ParamGroup> groups, double lr) {
        this.groups = List.copyOf(groups);
        for (ParamGroup g : this.groups) {
            for (Param p : g.params()) {
                if (byName.put(p.name(), p) != null) {
                    throw new IllegalArgumentException("some parameters appear in more than one parameter group: '" + p.name() + "'");
                }
            }
        }
        if (byName.isEmpty()) throw new IllegalArgumentException("optimizer got an empty parameter list; pass the trainable parameters");
        setLr(lr);
    }

    @Override public final List<ParamGroup> groups() { return groups; }

    /** The state of the named parameter, or null before its first step. */
    final S stateOf(String param) { return state.get(param); }

    @Override public final double lr() { return lr; }

    @Override public final void setLr(double lr) {
        if (!(lr >= 0)) throw new IllegalArgumentException("Invalid learning rate: " + lr + " (must be >= 0)");
        this.lr = lr;
    }

    @Override
    public final void step() {
        for (ParamGroup group : groups) {
            for (Param p : group.params()) {
                if (p.grad() == null) continue;
                float[] value = HostFloats.view(p.value(), "parameter '" + p.name() + "'");
                float[] grad = HostFloats.view(p.grad(), "gradient of '" + p.name() + "'");
                S s = state.computeIfAbsent(p.name(), k -> newState(value.length));
                update(value, grad, group.weightDecay(), s);
                HostFloats.store(p.value(), value);
            }
        }
    }

    /** Fresh state for a parameter of {@code numel} elements. */
    abstract S newState(int numel);

    /** One update of one parameter: value [n] in place, grad [n], the group's weight decay. */
    abstract void update(float[] value, float[] grad, double weightDecay, S s);

    /** The state's tensors by slot; {@code shape} is the parameter's shape. */
    abstract Map<String, Tensor> slots(S s, int[] shape);

    /** Rebuilds state for a parameter of {@code numel} elements from its slots (validated here). */
    abstract S fromSlots(String param, int numel, Slots slots);

    @Override
    public final Map<String, Tensor> stateDict() {
        Map<String, Tensor> out = new LinkedHashMap<>();
        for (Param p : byName.values()) {
            S s = state.get(p.name());
            if (s == null) continue;
            slots(s, p.value().shape()).forEach((slot, t) -> out.put(PREFIX + p.name() + "." + slot, t));
        }
        return out;
    }

    @Override
    public final void loadStateDict(Map<String, Tensor> dict) {
        Map<String, Map<String, Tensor>> perParam = dev.qlora4j.optim.StateDictKeys.byParameter(dict, byName);
        Map<String, S> loaded = new HashMap<>();
        for (Map.Entry<String, Map<String, Tensor>> e : perParam.entrySet()) {
            Param p = byName.get(e.getKey());
            loaded.put(e.getKey(), fromSlots(e.getKey(), Math.toIntExact(p.value().numel()), new Slots(e.getKey(), e.getValue())));
        }
        state.clear();
        state.putAll(loaded);
    }

    /** Slot tensors of one parameter with checked accessors (copies: the source may be a file mapping). */
    static final class Slots {
        private final String param;
        private final Map<String, Tensor> tensors;

        Slots(String param, Map<String, Tensor> tensors) {
            this.param = param;
            this.tensors = tensors;
        }

        boolean has(String slot) { return tensors.containsKey(slot); }

        Tensor get(String slot) {
            Tensor t = tensors.get(slot);
            if (t == null) {
                throw new IllegalArgumentException("optimizer state of '" + param + "' lacks " + PREFIX + param + "." + slot
                        + " (it has " + tensors.keySet() + "); the file was written by a different optimizer setting");
            }
            return t;
        }

        DType dtype(String slot) { return get(slot).dtype(); }

        float[] floats(String slot, int numel) {
            Tensor t = get(slot);
            check(slot, t, numel);
            if (t.dtype() != DType.F32) throw new IllegalArgumentException(name(slot) + " is " + t.dtype() + ", expected F32");
            return t.toFloatArray();
        }

        byte[] bytes(String slot, int numel) {
            Tensor t = get(slot);
            check(slot, t, numel);
            if (t.dtype() != DType.U8) throw new IllegalArgumentException(name(slot) + " is " + t.dtype() + ", expected U8");
            return t.segment().asSlice(0, numel).toArray(java.lang.foreign.ValueLayout.JAVA_BYTE);
        }

        long step() {
            Tensor t = get("step");
            check("step", t, 1);
            double v = t.getFloat(0);
            if (!(v >= 0) || v != Math.rint(v)) throw new IllegalArgumentException(name("step") + " = " + v + " is not a step count");
            return (long) v;
        }

        private void check(String slot, Tensor t, long numel) {
            if (t.numel() != numel) {
                throw new IllegalArgumentException(name(slot) + " has " + t.numel() + " elements but the parameter needs " + numel
                        + "; the checkpoint belongs to a different model or adapter shape");
            }
        }

        private String name(String slot) { return PREFIX + param + "." + slot; }
    }

    static Tensor stepTensor(long step) {
        return Tensor.of(new float[] {step}); // torch keeps "step" as a float32 scalar tensor
    }

    static Tensor bytesTensor(byte[] b, int[] shape) {
        Tensor t = Tensor.zeros(DType.U8, shape);
        java.lang.foreign.MemorySegment.copy(java.lang.foreign.MemorySegment.ofArray(b), 0, t.segment(), 0, b.length);
        return t;
    }

    static Tensor floatsTensor(float[] a, int... shape) {
        return Tensor.of(a.clone(), shape);
    }
}
