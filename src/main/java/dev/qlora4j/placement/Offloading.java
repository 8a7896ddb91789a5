package dev.qlora4j.placement;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.cuda.CudaActivationOffload;
import dev.qlora4j.backend.cuda.CudaBackend;
import dev.qlora4j.backend.cuda.CudaSlotDevice;
import dev.qlora4j.cuda.CudaDriver;
import dev.qlora4j.model.ActivationStore;
import dev.qlora4j.model.LayerResidency;
import dev.qlora4j.model.ModelConfig;
import dev.qlora4j.quant.QuantizationConfig;
import dev.qlora4j.tensor.DType;

import java.util.Map;

/**
 * The Java API of device maps and offload: plan a placement for a model on a backend, build the
 * {@link LayerResidency} that TransformerLM.load takes, and get the activation store for --offload-activations.
 *
 * <pre>{@code
 * PlacementPlan plan = Offloading.plan(PlacementOptions.of("auto", "{\"0\":\"20GiB\",\"cpu\":\"64GiB\"}", null), config, DType.BF16, quant, backend);
 * TransformerLM m = TransformerLM.load(config, weights, backend, linears, Offloading.residency(plan, backend, null));
 * }</pre>
 *
 * Execution runs on one GPU: a plan may name only the backend's GPU (plus cpu and disk); plans over several
 * GPUs are made and printed (the planner handles them) but loading one says that multi-GPU execution is not
 * available yet. Only decoder layers stream: the embedding, final norm and LM head stay on the GPU.
 */
public final class Offloading {
    private Offloading() {}

    /** Default GPU headroom for activations and the KV cache: 10% of the GPU, at least 1 GiB. */
    public static long defaultHeadroom(long totalBytes) {
        return Math.max(1L << 30, totalBytes / 10);
    }

    /** What the backend offers: the backend's own GPU with its free memory (other GPUs only when max_memory names them). */
    public static DeviceMapPlanner.Resources resources(Backend backend, PlacementOptions o) {
        MaxMemory max = MaxMemory.parse(o.maxMemory());
        boolean disk = o.offloadFolder() != null;
        if (!(backend instanceof CudaBackend cuda)) return new DeviceMapPlanner.Resources(new long[0], 0, max, disk);
        CudaDriver d = cuda.context().driver();
        int ordinal = cuda.context().ordinal();
        int count = d.deviceCount();
        long[] free = new long[count];
        var info = d.memGetInfo();
        free[ordinal] = info.freeBytes();
        long headroom = o.headroomBytes() >= 0 ? o.headroomBytes() : defaultHeadroom(info.totalBytes());
        return new DeviceMapPlanner.Resources(free, headroom, max, disk);
    }

    public static PlacementPlan plan(PlacementOptions o, ModelConfig c, DType weightDType, QuantizationConfig quant, Backend backend) {
        Map<String, Long> sizes = ModuleSizes.of(c, weightDType, quant);
        return DeviceMapPlanner.plan(o.deviceMapText(), sizes, resources(backend, o));
    }

    /**
     * The residency for a plan on a backend: NONE when nothing streams; weight streaming otherwise. Fails with
     * what to change when the plan needs what this build cannot run (several GPUs, a GPU other than the
     * backend's, the embedding/norm/LM head off the GPU).
     */
    public static LayerResidency residency(PlacementPlan plan, Backend backend, java.nio.file.Path offloadFolder) {
        if (backend instanceof CudaBackend cuda) {
            int ordinal = cuda.context().ordinal();
            for (int g : plan.gpus()) {
                if (g != ordinal) {
                    throw new UnsupportedOperationException("the device map places modules on GPU " + g + " but this run uses only cuda:"
                            + ordinal + " (running one model over several GPUs is not available yet): map every GPU module to " + ordinal
                            + " and offload the rest to \"cpu\"/\"disk\", or use --device-map auto with --device cuda:" + ordinal);
                }
            }
            for (String m : new String[] {ModuleSizes.EMBED, ModuleSizes.NORM, ModuleSizes.LM_HEAD}) {
                if (plan.targets().containsKey(m) && plan.target(m).offloaded()) {
                    throw new UnsupportedOperationException("the device map puts " + m + " on \"" + plan.target(m) + "\": only decoder "
                            + "layers (model.layers.N) stream from cpu/disk; keep model.embed_tokens, model.norm and lm_head on GPU " + ordinal
                            + " (load in 4-bit, or offload more layers, to make room)");
                }
            }
            if (plan.offloadedLayers().isEmpty()) return LayerResidency.NONE;
            return new WeightStreamer(new CudaSlotDevice(cuda), plan, offloadFolder);
        }
        if (!plan.anyOn(DeviceTarget.DISK)) return LayerResidency.NONE; // the CPU backend: "cpu" is where everything is
        return new WeightStreamer(new HostSlotDevice(), plan, offloadFolder);
    }

    /**
     * The explicit device map that keeps everything on GPU gpu except the last n decoder layers, which go to
     * target ("cpu" or "disk"): what the benchmarks' --offload-layers N measures.
     */
    public static String lastLayersOn(int numLayers, int n, int gpu, String target) {
        if (n < 0 || n > numLayers) throw new IllegalArgumentException("--offload-layers must be 0.." + numLayers + ", got " + n);
        StringBuilder sb = new StringBuilder("{\"\":").append(gpu);
        for (int i = numLayers - n; i < numLayers; i++) sb.append(",\"model.layers.").append(i).append("\":\"").append(target).append('"');
        return sb.append('}').toString();
    }

    /** The residency streaming the last n layers of a model from pinned host memory (n = 0: NONE). */
    public static LayerResidency lastLayersOnCpu(ModelConfig c, DType weightDType, QuantizationConfig quant, Backend backend, int n) {
        if (n == 0) return LayerResidency.NONE;
        int gpu = backend instanceof CudaBackend cuda ? cuda.context().ordinal() : 0;
        PlacementOptions o = PlacementOptions.of(lastLayersOn(c.numHiddenLayers(), n, gpu, "cpu"), null, null);
        return residency(plan(o, c, weightDType, quant, backend), backend, null);
    }

    /** The store for --offload-activations: pinned host memory on CUDA, the device itself (no-op) on the CPU. */
    public static ActivationStore activationStore(Backend backend) {
        return backend instanceof CudaBackend cuda ? new CudaActivationOffload(cuda) : ActivationStore.ON_DEVICE;
    }
}
