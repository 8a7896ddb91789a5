package dev.qlora4j.train;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.cuda.CudaAdamW;
import dev.qlora4j.backend.cuda.CudaBackend;
import dev.qlora4j.backend.cuda.CudaGradClip;
import dev.qlora4j.optim.AdamWConfig;
import dev.qlora4j.optim.ParamGroups;
import dev.qlora4j.optim.StateStorage;

import java.util.Locale;

/**
 * Picks the optimizer and gradient clipping that run where the parameters live: on a CUDA
 * backend, AdamW's update and the global-norm clip run as kernels on the device tensors (the
 * host optimizers read host arrays); on the CPU the Trainer's defaults stay.
 */
public final class DeviceTraining {
    private DeviceTraining() {}

    public static Trainer.Builder configure(Trainer.Builder builder, Backend backend) {
        if (!(backend instanceof CudaBackend cuda)) return builder;
        return builder.optimizerFactory((args, params) -> {
            String optim = args.optim().toLowerCase(Locale.ROOT);
            if (!optim.equals("adamw_torch") && !optim.equals("adamw") && !optim.equals("adamw_torch_fused")) {
                throw new IllegalArgumentException("optim " + args.optim() + " has no GPU implementation yet: "
                        + "use --optim adamw_torch on the GPU, or train on the CPU");
            }
            return new CudaAdamW(cuda, ParamGroups.split(params, args.weightDecay()), new AdamWConfig(args.learningRate(),
                    args.adamBeta1(), args.adamBeta2(), args.adamEpsilon(), args.weightDecay(), StateStorage.DEVICE));
        }).gradClipper(new CudaGradClip(cuda)::clip);
    }
}
