package dev.qlora4j.train;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.cuda.CudaAdamW;
import dev.qlora4j.backend.cuda.CudaAdamW8bit;
import dev.qlora4j.backend.cuda.CudaBackend;
import dev.qlora4j.backend.cuda.CudaGradClip;
import dev.qlora4j.optim.AdamW8bitConfig;
import dev.qlora4j.model.ModelDevices;
import dev.qlora4j.optim.AdamWConfig;
import dev.qlora4j.optim.Optimizer;
import dev.qlora4j.optim.Param;
import dev.qlora4j.optim.PerDeviceOptimizer;
import dev.qlora4j.optim.ParamGroup;
import dev.qlora4j.optim.ParamGroups;
import dev.qlora4j.optim.StateStorage;

import java.util.List;
import java.util.Locale;

/**
 * Picks the optimizer and gradient clipping that run where the parameters live: on a CUDA
 * backend, the optimizer update and the global-norm clip run as kernels on the device tensors (the
 * host optimizers read host arrays); on the CPU the Trainer's defaults stay.
 *
 * <p>optim (transformers' names, as {@link Optimizers} maps them on the CPU): adamw_torch / adamw_torch_fused
 * -> CudaAdamW; paged_adamw_32bit -> CudaAdamW with state in pinned host memory; adamw_8bit / adamw_bnb_8bit ->
 * CudaAdamW8bit; paged_adamw_8bit -> CudaAdamW8bit with state in pinned host memory. sgd has no GPU kernel.
 */
public final class DeviceTraining {
    private DeviceTraining() {}

    public static Trainer.Builder configure(Trainer.Builder builder, Backend backend) {
        if (!(backend instanceof CudaBackend cuda)) return builder;
        return builder.optimizerFactory((args, params) -> optimizer(cuda, args, params)).gradClipper(new CudaGradClip(cuda)::clip);
    }

    /**
     * The same for a model over one or several devices. Over several, parameters are grouped by the device they
     * live on (their layer's, {@link ModelDevices#forName}) and each group gets its device's optimizer (CUDA
     * kernels on that GPU's stream, or the host optimizer on a CPU backend) behind one {@link PerDeviceOptimizer};
     * gradients are clipped by their global norm over all devices ({@link MultiDeviceGradClip}).
     */
    public static Trainer.Builder configure(Trainer.Builder builder, ModelDevices devices) {
        if (devices.isSingle()) return configure(builder, devices.head());
        return builder.optimizerFactory(optimizerFactory(devices)).gradClipper(new MultiDeviceGradClip(devices)::clip);
    }

    /**
     * The optimizer for a model's devices: on one device the backend's (CUDA kernels, or the host optimizers on the
     * CPU); over several, one per device behind a {@link PerDeviceOptimizer}.
     */
    public static Trainer.OptimizerFactory optimizerFactory(ModelDevices devices) {
        if (devices.isSingle()) {
            return devices.head() instanceof CudaBackend cuda ? (args, params) -> optimizer(cuda, args, params) : Optimizers::create;
        }
        return (args, params) -> new PerDeviceOptimizer(ParamGroups.split(params, args.weightDecay()),
                p -> devices.forName(p.name()),
                (device, ps) -> device instanceof CudaBackend cuda ? bound(cuda, optimizer(cuda, args, ps)) : Optimizers.create(args, ps));
    }

    /**
     * A GPU's optimizer that makes its context current before each call: the CUDA optimizers queue copies and
     * launches on their stream directly, and with several GPUs the current context is whichever ran last.
     */
    private static Optimizer bound(CudaBackend cuda, Optimizer o) {
        return new Optimizer() {
            @Override public String name() { return o.name(); }

            @Override public List<ParamGroup> groups() { return o.groups(); }

            @Override public double lr() { return o.lr(); }

            @Override public void setLr(double lr) { o.setLr(lr); }

            @Override public void step() { cuda.context().bind(); o.step(); }

            @Override public java.util.Map<String, dev.qlora4j.tensor.Tensor> stateDict() { cuda.context().bind(); return o.stateDict(); }

            @Override public void loadStateDict(java.util.Map<String, dev.qlora4j.tensor.Tensor> state) {
                cuda.context().bind();
                o.loadStateDict(state);
            }

            @Override public java.util.Map<String, String> hyperParameters() { return o.hyperParameters(); }
        };
    }

    /**
     * The gradient clipping for a model's devices: CudaGradClip on one GPU, the host GradClip on the CPU, the global
     * norm over several devices ({@link MultiDeviceGradClip}).
     */
    public static Trainer.GradClipper gradClipper(ModelDevices devices) {
        if (!devices.isSingle()) return new MultiDeviceGradClip(devices)::clip;
        if (devices.head() instanceof CudaBackend cuda) cuda.context().bind();
        return devices.head() instanceof CudaBackend cuda ? new CudaGradClip(cuda)::clip : dev.qlora4j.optim.GradClip::clipByGlobalNorm;
    }

    /** The CUDA optimizer for args.optim() over params that live on one GPU. */
    public static Optimizer optimizer(CudaBackend cuda, TrainingArguments args, List<Param> params) {
        cuda.context().bind(); // the optimizer allocates its state and pinned buffers in the current context
        List<ParamGroup> groups = ParamGroups.split(params, args.weightDecay());
        return switch (args.optim().toLowerCase(Locale.ROOT)) {
            case "adamw_torch", "adamw", "adamw_torch_fused" -> new CudaAdamW(cuda, groups, adamW(args, StateStorage.DEVICE));
            case "paged_adamw_32bit" -> new CudaAdamW(cuda, groups, adamW(args, StateStorage.PAGED));
            case "adamw_8bit", "adamw_bnb_8bit" -> new CudaAdamW8bit(cuda, groups, adamW8bit(args, StateStorage.DEVICE));
            case "paged_adamw_8bit" -> new CudaAdamW8bit(cuda, groups, adamW8bit(args, StateStorage.PAGED));
            default -> throw new IllegalArgumentException("optim " + args.optim() + " has no GPU implementation: use "
                    + "adamw_torch, adamw_8bit, paged_adamw_8bit or paged_adamw_32bit on the GPU, or train on the CPU");
        };
    }

    private static AdamWConfig adamW(TrainingArguments a, StateStorage s) {
        return new AdamWConfig(a.learningRate(), a.adamBeta1(), a.adamBeta2(), a.adamEpsilon(), a.weightDecay(), s);
    }

    /** min_8bit_size 4096 as transformers leaves bitsandbytes' default (and Optimizers does on the CPU). */
    private static AdamW8bitConfig adamW8bit(TrainingArguments a, StateStorage s) {
        return new AdamW8bitConfig(a.learningRate(), a.adamBeta1(), a.adamBeta2(), a.adamEpsilon(), a.weightDecay(), 4096, s);
    }
}
