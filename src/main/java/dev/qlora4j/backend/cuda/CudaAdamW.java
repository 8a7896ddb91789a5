package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.optim.AdamWConfig;
import dev.qlora4j.optim.AdamWKernel;
import dev.qlora4j.optim.Optimizer;
import dev.qlora4j.optim.Param;
import dev.qlora4j.optim.ParamGroup;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * torch.optim.AdamW over parameters whose value and gradient live on the GPU: the same update as
 * {@link dev.qlora4j.optim.AdamW} (element for element, bit-identical to {@link AdamWKernel}: native/adamw.cu),
 * one fused kernel launch per parameter, state (exp_avg, exp_avg_sq: F32 on the device; step on the host)
 * created on a parameter's first step. The state dict has the host AdamW's names and layout, so checkpoints
 * move between the two.
 *
 * <p>Values and gradients must be F32 device tensors (LoRA parameters are).
 */
public final class CudaAdamW implements Optimizer, AutoCloseable {
    private static final String PREFIX = "state.";

    private final CudaBackend backend;
    private final List<ParamGroup> groups;
    private final AdamWConfig config;
    private final Map<String, Param> byName = new LinkedHashMap<>();
    private final Map<String, State> state = new HashMap<>();
    private double lr;

    private static final class State implements AutoCloseable {
        final Tensor expAvg;    // F32 [numel] on the device
        final Tensor expAvgSq;  // F32 [numel] on the device
        long step;

        State(Tensor expAvg, Tensor expAvgSq, long step) {
            this.expAvg = expAvg;
            this.expAvgSq = expAvgSq;
            this.step = step;
        }

        @Override
        public void close() {
            expAvg.close();
            expAvgSq.close();
        }
    }

    public CudaAdamW(CudaBackend backend, List<ParamGroup> groups, AdamWConfig config) {
        this.backend = backend;
        this.groups = List.copyOf(groups);
        this.config = config;
        for (ParamGroup g : this.groups) {
            for (Param p : g.params()) {
                if (byName.put(p.name(), p) != null) {
                    throw new IllegalArgumentException("some parameters appear in more than one parameter group: '" + p.name() + "'");
                }
            }
        }
        if (byName.isEmpty()) throw new IllegalArgumentException("optimizer got an empty parameter list; pass the trainable parameters");
        setLr(config.lr());
    }

    /** All parameters in one group with config.weightDecay(). */
    public static CudaAdamW of(CudaBackend backend, List<? extends Param> params, AdamWConfig config) {
        return new CudaAdamW(backend, List.of(new ParamGroup(List.copyOf(params), config.weightDecay())), config);
    }

    @Override public String name() { return "AdamW"; }

    @Override public List<ParamGroup> groups() { return groups; }

    @Override public double lr() { return lr; }

    @Override
    public void setLr(double lr) {
        if (!(lr >= 0)) throw new IllegalArgumentException("Invalid learning rate: " + lr + " (must be >= 0)");
        this.lr = lr;
    }

    @Override
    public void step() {
        CudaContext ctx = backend.context();
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
                State s = state.computeIfAbsent(p.name(), k -> new State(zeros(ctx, n), zeros(ctx, n), 0));
                s.step++;
                AdamWKernel.Scalars k = AdamWKernel.Scalars.of(lr, config.beta1(), config.beta2(), config.eps(),
                        group.weightDecay(), s.step);
                if (n == 0) continue;
                ctx.launch1d(ctx.function("adamw", "adamw_f32"), n,
                        KernelArgs.of().ptr(CudaContext.ptr(value)).ptr(CudaContext.ptr(g)).ptr(CudaContext.ptr(s.expAvg))
                                .ptr(CudaContext.ptr(s.expAvgSq)).i64(n).f32(k.decay()).f32(k.lerpWeight()).f32(k.beta2())
                                .f32(k.oneMinusBeta2()).f32(k.negStepSize()).f32(k.bias2Sqrt()).f32(k.eps()));
            }
        }
    }

    @Override
    public Map<String, Tensor> stateDict() {
        Map<String, Tensor> out = new LinkedHashMap<>();
        for (Param p : byName.values()) {
            State s = state.get(p.name());
            if (s == null) continue;
            int[] shape = p.value().shape();
            out.put(PREFIX + p.name() + ".exp_avg", reshaped(backend.toHost(s.expAvg), shape));
            out.put(PREFIX + p.name() + ".exp_avg_sq", reshaped(backend.toHost(s.expAvgSq), shape));
            out.put(PREFIX + p.name() + ".step", Tensor.of(new float[] {s.step}));
        }
        return out;
    }

    @Override
    public void loadStateDict(Map<String, Tensor> dict) {
        Map<String, Map<String, Tensor>> perParam = new HashMap<>();
        for (Map.Entry<String, Tensor> e : dict.entrySet()) {
            String key = e.getKey();
            int dot = key.lastIndexOf('.');
            if (!key.startsWith(PREFIX) || dot <= PREFIX.length()) {
                throw new IllegalArgumentException("optimizer state entry '" + key + "' is not named state.<param>.<slot>; "
                        + "load a file written by this optimizer");
            }
            String param = key.substring(PREFIX.length(), dot);
            if (!byName.containsKey(param)) {
                throw new IllegalArgumentException("optimizer state has an entry for parameter '" + param
                        + "' that this optimizer does not train; resume with the same adapter configuration");
            }
            perParam.computeIfAbsent(param, k -> new HashMap<>()).put(key.substring(dot + 1), e.getValue());
        }
        Map<String, State> loaded = new HashMap<>();
        try {
            for (Map.Entry<String, Map<String, Tensor>> e : perParam.entrySet()) {
                String name = e.getKey();
                long numel = byName.get(name).value().numel();
                Tensor m = slot(name, e.getValue(), "exp_avg", numel), v = slot(name, e.getValue(), "exp_avg_sq", numel);
                Tensor step = slot(name, e.getValue(), "step", 1);
                double st = step.getFloat(0);
                if (!(st >= 0) || st != Math.rint(st)) {
                    throw new IllegalArgumentException(PREFIX + name + ".step = " + st + " is not a step count");
                }
                loaded.put(name, new State(upload(m), upload(v), (long) st));
            }
        } catch (RuntimeException ex) {
            loaded.values().forEach(State::close);
            throw ex;
        }
        state.values().forEach(State::close);
        state.clear();
        state.putAll(loaded);
    }

    @Override
    public Map<String, String> hyperParameters() {
        return Map.of("lr", Double.toString(lr), "betas", config.beta1() + "," + config.beta2(),
                "eps", Double.toString(config.eps()), "weight_decay", Double.toString(config.weightDecay()),
                "storage", config.storage().name(), "device", backend.device().toString());
    }

    /** Frees the device state. */
    @Override
    public void close() {
        state.values().forEach(State::close);
        state.clear();
    }

    private Tensor upload(Tensor host) {
        Tensor flat = Tensor.of(host.toFloatArray(), Math.toIntExact(host.numel()));
        return backend.upload(flat);
    }

    private static Tensor slot(String param, Map<String, Tensor> slots, String slot, long numel) {
        Tensor t = slots.get(slot);
        if (t == null) {
            throw new IllegalArgumentException("optimizer state of '" + param + "' lacks " + PREFIX + param + "." + slot
                    + " (it has " + slots.keySet() + "); the file was written by a different optimizer");
        }
        if (t.numel() != numel) {
            throw new IllegalArgumentException(PREFIX + param + "." + slot + " has " + t.numel()
                    + " elements but the parameter needs " + numel + "; the checkpoint belongs to a different adapter shape");
        }
        if (t.dtype() != DType.F32) {
            throw new IllegalArgumentException(PREFIX + param + "." + slot + " is " + t.dtype() + ", expected F32");
        }
        return t;
    }

    private static Tensor reshaped(Tensor host, int[] shape) {
        return Tensor.of(host.toFloatArray(), shape);
    }

    private static Tensor zeros(CudaContext ctx, int n) {
        Tensor t = ctx.empty(DType.F32, n);
        ctx.driver().memsetD8Async(CudaContext.ptr(t), (byte) 0, Math.max(1, t.byteSize()), ctx.stream());
        return t;
    }

    private static void requireF32Device(Tensor t, String what) {
        KernelTypes.requireDevice(t, what);
        if (t.dtype() != DType.F32) {
            throw new IllegalArgumentException(what + " is " + t.dtype() + "; CudaAdamW updates F32 parameters and gradients");
        }
    }
}
