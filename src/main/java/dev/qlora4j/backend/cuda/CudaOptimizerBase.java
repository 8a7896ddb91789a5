package dev.qlora4j.backend.cuda;

import dev.qlora4j.optim.Optimizer;
import dev.qlora4j.optim.Param;
import dev.qlora4j.optim.ParamGroup;
import dev.qlora4j.optim.StateStorage;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * What the CUDA optimizers share: groups and names, the learning rate, per-parameter state created on a
 * parameter's first step (as torch does) in GPU or pinned host memory, the state-dict naming of the host twins
 * ("state.&lt;param&gt;.&lt;slot&gt;"), and one multi-tensor launch per step over every parameter that has a
 * gradient.
 *
 * @param <S> per-parameter state
 */
abstract class CudaOptimizerBase<S extends CudaOptimizerBase.State> implements Optimizer, AutoCloseable {
    static final String PREFIX = dev.qlora4j.optim.StateDictKeys.PREFIX;

    /** Per-parameter state: its step count and the buffers holding its arrays. */
    abstract static class State implements AutoCloseable {
        long step;

        abstract List<OptimizerStateBuffer> buffers();

        @Override
        public void close() { buffers().forEach(OptimizerStateBuffer::close); }
    }

    /** One parameter's share of a step: its tensors (F32 [n] on the device), group weight decay and state. */
    record Work<S>(Param param, Tensor value, Tensor grad, int n, double weightDecay, S state) {}

    final CudaBackend backend;
    final CudaContext ctx;
    final StateStorage storage;
    private final List<ParamGroup> groups;
    private final Map<String, Param> byName = new LinkedHashMap<>();
    private final Map<String, S> state = new HashMap<>();
    private double lr;

    CudaOptimizerBase(CudaBackend backend, List<ParamGroup> groups, double lr, StateStorage storage) {
        this.backend = backend;
        this.ctx = backend.context();
        this.storage = storage;
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

    @Override public final double lr() { return lr; }

    @Override
    public final void setLr(double lr) {
        if (!(lr >= 0)) throw new IllegalArgumentException("Invalid learning rate: " + lr + " (must be >= 0)");
        this.lr = lr;
    }

    /** The named parameter's state, or null before its first step. */
    final S stateFor(String param) { return state.get(param); }

    /** Fresh zero state for a parameter of n elements. */
    abstract S newState(int n);

    /** Updates every parameter of works (non-empty, each step count already advanced) with one launch. */
    abstract void launch(List<Work<S>> works);

    /** The state's host copies by slot; shape is the parameter's. */
    abstract Map<String, Tensor> slots(S s, int[] shape);

    /** State rebuilt from a checkpoint's slots (checked with {@link #slot}); step is already parsed. */
    abstract S fromSlots(String param, int numel, Map<String, Tensor> slots, long step);

    @Override
    public final void step() {
        List<Work<S>> works = new ArrayList<>();
        for (ParamGroup group : groups) {
            for (Param p : group.params()) {
                Tensor g = p.grad();
                if (g == null) continue;
                Tensor value = p.value();
                requireF32Device(value, "parameter '" + p.name() + "'");
                requireF32Device(g, "gradient of '" + p.name() + "'");
                if (g.numel() != value.numel()) {
                    throw new IllegalArgumentException("gradient of '" + p.name() + "' has " + g.numel()
                            + " elements but the value has " + value.numel());
                }
                int n = Math.toIntExact(value.numel());
                S s = state.computeIfAbsent(p.name(), k -> newState(n));
                s.step++;
                if (n > 0) works.add(new Work<>(p, value, g, n, group.weightDecay(), s));
            }
        }
        if (!works.isEmpty()) launch(works);
    }

    @Override
    public final Map<String, Tensor> stateDict() {
        Map<String, Tensor> out = new LinkedHashMap<>();
        for (Param p : byName.values()) {
            S s = state.get(p.name());
            if (s == null) continue;
            slots(s, p.value().shape()).forEach((slot, t) -> out.put(PREFIX + p.name() + "." + slot, t));
            out.put(PREFIX + p.name() + ".step", Tensor.of(new float[] {s.step})); // torch: a float32 scalar tensor
        }
        return out;
    }

    @Override
    public final void loadStateDict(Map<String, Tensor> dict) {
        Map<String, Map<String, Tensor>> perParam = dev.qlora4j.optim.StateDictKeys.byParameter(dict, byName);
        Map<String, S> loaded = new HashMap<>();
        try {
            for (Map.Entry<String, Map<String, Tensor>> e : perParam.entrySet()) {
                String name = e.getKey();
                int numel = Math.toIntExact(byName.get(name).value().numel());
                Tensor step = slot(name, e.getValue(), "step", 1, DType.F32);
                double st = step.getFloat(0);
                if (!(st >= 0) || st != Math.rint(st)) {
                    throw new IllegalArgumentException(PREFIX + name + ".step = " + st + " is not a step count");
                }
                loaded.put(name, fromSlots(name, numel, e.getValue(), (long) st));
            }
        } catch (RuntimeException ex) {
            loaded.values().forEach(State::close);
            throw ex;
        }
        state.values().forEach(State::close);
        state.clear();
        state.putAll(loaded);
    }

    /** Bytes of optimizer state in GPU memory (0 for paged state). */
    public final long deviceStateBytes() { return stateBytes(false); }

    /** Bytes of optimizer state in pinned host memory (0 unless paged). */
    public final long hostStateBytes() { return stateBytes(true); }

    private long stateBytes(boolean paged) {
        long n = 0;
        for (S s : state.values()) for (OptimizerStateBuffer b : s.buffers()) if (b.paged() == paged) n += b.bytes();
        return n;
    }

    /** Frees the state (device and pinned host memory). */
    @Override
    public void close() {
        state.values().forEach(State::close);
        state.clear();
    }

    /** The named slot of a parameter's checkpoint entries, checked for element count and dtype. */
    static Tensor slot(String param, Map<String, Tensor> slots, String slot, long numel, DType dtype) {
        Tensor t = slots.get(slot);
        if (t == null) {
            throw new IllegalArgumentException("optimizer state of '" + param + "' lacks " + PREFIX + param + "." + slot
                    + " (it has " + slots.keySet() + "); the file was written by a different optimizer setting");
        }
        if (t.numel() != numel) {
            throw new IllegalArgumentException(PREFIX + param + "." + slot + " has " + t.numel()
                    + " elements but the parameter needs " + numel + "; the checkpoint belongs to a different adapter shape");
        }
        if (t.dtype() != dtype) {
            throw new IllegalArgumentException(PREFIX + param + "." + slot + " is " + t.dtype() + ", expected " + dtype);
        }
        return t;
    }

    /** A state buffer holding a copy of a host tensor's bytes (the tensor may be a file mapping). */
    OptimizerStateBuffer bufferFrom(Tensor host) {
        OptimizerStateBuffer b = OptimizerStateBuffer.zeros(ctx, host.byteSize(), storage);
        try {
            b.copyFrom(host.segment().asSlice(0, host.byteSize()));
            return b;
        } catch (RuntimeException e) {
            b.close();
            throw e;
        }
    }

    static Tensor floatsTensor(float[] values, int... shape) { return Tensor.of(values, shape); }

    static Tensor bytesTensor(byte[] values, int[] shape) {
        Tensor t = Tensor.zeros(DType.U8, shape);
        java.lang.foreign.MemorySegment.copy(java.lang.foreign.MemorySegment.ofArray(values), 0, t.segment(), 0, values.length);
        return t;
    }

    private static void requireF32Device(Tensor t, String what) {
        KernelTypes.requireDevice(t, what);
        if (t.dtype() != DType.F32) {
            throw new IllegalArgumentException(what + " is " + t.dtype() + "; the CUDA optimizers update F32 parameters and gradients");
        }
    }
}
