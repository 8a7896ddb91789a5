package dev.qlora4j.placement;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.cuda.CudaActivationOffload;
import dev.qlora4j.backend.cuda.CudaBackend;
import dev.qlora4j.backend.cuda.CudaSlotDevice;
import dev.qlora4j.cuda.CudaDriver;
import dev.qlora4j.model.ActivationStore;
import dev.qlora4j.model.LayerResidency;
import dev.qlora4j.model.ModelDevices;
import dev.qlora4j.model.ModelConfig;
import dev.qlora4j.quant.QuantizationConfig;
import dev.qlora4j.tensor.DType;

import java.util.ArrayList;
import java.util.List;
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
 * Several GPUs: {@link #devices} gives every part of the model the backend of its GPU (the caller's backend
 * serves its own GPU, the others get a backend each, owned by the model), and the model runs layer by layer across
 * them (sequential model parallelism, as accelerate does). Decoder layers mapped to "cpu"/"disk" stream into, and
 * run on, the plan's last GPU (the highest index it uses: where the planner reserves the two streaming slots, and
 * where the layers after the GPU-resident ones run anyway). Only decoder layers stream: the embedding, final norm
 * and LM head stay on a GPU.
 *
 * <pre>{@code
 * ModelDevices devices = Offloading.devices(plan, backend);
 * TransformerLM m = TransformerLM.load(config, weights, devices, linears, Offloading.residency(plan, devices, null));
 * }</pre>
 */
public final class Offloading {
    private Offloading() {}

    /** Default GPU headroom for activations and the KV cache: 10% of the GPU, at least 1 GiB. */
    public static long defaultHeadroom(long totalBytes) {
        return Math.max(1L << 30, totalBytes / 10);
    }

    /**
     * What the machine offers: every GPU with its free memory (the backend's own measured in its context, the
     * others each in its primary context, which is released again), the host, and disk when a folder is given.
     */
    public static DeviceMapPlanner.Resources resources(Backend backend, PlacementOptions o) {
        MaxMemory max = MaxMemory.parse(o.maxMemory());
        boolean disk = o.offloadFolder() != null;
        if (!(backend instanceof CudaBackend cuda)) return new DeviceMapPlanner.Resources(new long[0], 0, max, disk);
        CudaDriver d = cuda.context().driver();
        int ordinal = cuda.context().ordinal();
        int count = d.deviceCount();
        long[] free = new long[count];
        cuda.context().bind();
        var info = d.memGetInfo();
        free[ordinal] = info.freeBytes();
        for (int g = 0; g < count; g++) {
            if (g == ordinal) continue;
            long ctx = d.primaryContextRetain(g);
            try {
                d.contextSetCurrent(ctx);
                free[g] = d.memGetInfo().freeBytes();
            } finally {
                d.contextSetCurrent(cuda.context().contextHandle()); // back to what CudaContext.bind believes is current
                d.primaryContextRelease(g);
            }
        }
        long headroom = o.headroomBytes() >= 0 ? o.headroomBytes() : defaultHeadroom(info.totalBytes());
        return new DeviceMapPlanner.Resources(free, headroom, max, disk);
    }

    public static PlacementPlan plan(PlacementOptions o, ModelConfig c, DType weightDType, QuantizationConfig quant, Backend backend) {
        Map<String, Long> sizes = ModuleSizes.of(c, weightDType, quant);
        return DeviceMapPlanner.plan(o.deviceMapText(), sizes, resources(backend, o));
    }

    /**
     * The residency for a plan on one backend (every GPU module on the backend's GPU): NONE when nothing streams;
     * weight streaming otherwise. A plan over several GPUs needs {@link #devices} and
     * {@link #residency(PlacementPlan, ModelDevices, java.nio.file.Path)}.
     */
    public static LayerResidency residency(PlacementPlan plan, Backend backend, java.nio.file.Path offloadFolder) {
        if (backend instanceof CudaBackend cuda) {
            int ordinal = cuda.context().ordinal();
            for (int g : plan.gpus()) {
                if (g != ordinal) {
                    throw new IllegalArgumentException("the device map places modules on GPU " + g + " but this residency is for cuda:"
                            + ordinal + " alone: load a plan over several GPUs with Offloading.devices(plan, backend) and "
                            + "residency(plan, devices, folder)");
                }
            }
        }
        return residency(plan, ModelDevices.single(backend, countLayers(plan)), offloadFolder);
    }

    /**
     * The residency of a plan over the devices {@link #devices} made for it: NONE when nothing streams; otherwise
     * the offloaded layers stream into slots on the GPU they run on (the plan's last GPU). Fails with what to
     * change when the embedding, final norm or LM head are placed on cpu/disk.
     */
    public static LayerResidency residency(PlacementPlan plan, ModelDevices devices, java.nio.file.Path offloadFolder) {
        Backend main = devices.embedding();
        if (main instanceof CudaBackend) {
            for (String m : new String[] {ModuleSizes.EMBED, ModuleSizes.NORM, ModuleSizes.LM_HEAD}) {
                if (plan.targets().containsKey(m) && plan.target(m).offloaded()) {
                    throw new UnsupportedOperationException("the device map puts " + m + " on \"" + plan.target(m) + "\": only decoder "
                            + "layers (model.layers.N) stream from cpu/disk; keep model.embed_tokens, model.norm and lm_head on a GPU"
                            + " (load in 4-bit, or offload more layers, to make room)");
                }
            }
            List<Integer> offloaded = plan.offloadedLayers();
            if (offloaded.isEmpty()) return LayerResidency.NONE;
            CudaBackend slots = (CudaBackend) devices.layer(offloaded.getFirst());
            slots.context().bind(); // the slot device creates its stream and events in the current context
            LayerResidency streamer = new WeightStreamer(new CudaSlotDevice(slots), plan, offloadFolder);
            return devices.isSingle() ? streamer : BoundToGpu.residency(streamer, slots.context());
        }
        if (!plan.anyOn(DeviceTarget.DISK)) return LayerResidency.NONE; // the CPU backend: "cpu" is where everything is
        return new WeightStreamer(new HostSlotDevice(), plan, offloadFolder);
    }

    /**
     * The backend of every part of the model for a plan: GPU g's modules run on the caller's backend when g is its
     * GPU, else on a new CudaBackend for cuda:g (same activation dtype; owned by the returned ModelDevices, which
     * the model closes); layers on cpu/disk run on the plan's last GPU, where they stream (the planner reserves the
     * streaming slots there). On the CPU backend
     * everything runs on it. Fails with the machine's GPU count when the plan names a GPU that does not exist.
     */
    public static ModelDevices devices(PlacementPlan plan, Backend backend) {
        int layers = countLayers(plan);
        if (!(backend instanceof CudaBackend cuda)) return ModelDevices.single(backend, layers);
        checkGpus(plan, cuda.context().driver().deviceCount());
        List<Integer> gpus = plan.gpus();
        if (gpus.isEmpty() || (gpus.size() == 1 && gpus.getFirst() == cuda.context().ordinal())) return ModelDevices.single(backend, layers);
        Map<Integer, Backend> byGpu = new java.util.TreeMap<>();
        List<Backend> owned = new ArrayList<>();
        try {
            for (int g : gpus) {
                if (g == cuda.context().ordinal()) {
                    byGpu.put(g, backend);
                } else {
                    CudaBackend b = CudaBackend.create(g, backend.activationDType(), false);
                    owned.add(b);
                    byGpu.put(g, b);
                }
            }
            Backend streaming = byGpu.get(gpus.getLast());
            java.util.function.Function<String, Backend> of = m -> {
                DeviceTarget t = plan.target(m);
                return t instanceof DeviceTarget.Gpu g ? byGpu.get(g.index()) : streaming;
            };
            List<Backend> perLayer = new ArrayList<>();
            for (int i = 0; i < layers; i++) perLayer.add(of.apply(ModuleSizes.layer(i)));
            return ModelDevices.of(of.apply(ModuleSizes.EMBED), perLayer, of.apply(ModuleSizes.NORM), owned);
        } catch (RuntimeException e) {
            for (Backend b : owned) b.close();
            throw e;
        }
    }

    /** Fails, saying how many GPUs exist and what to pass, when the plan names a GPU at or beyond count. */
    public static void checkGpus(PlacementPlan plan, int count) {
        for (int g : plan.gpus()) {
            if (g >= count) {
                throw new IllegalArgumentException("the device map places modules on GPU " + g + " but this machine has " + count
                        + " CUDA device(s)" + (count == 0 ? "" : " (0.." + (count - 1) + ")") + ": map modules to GPU indices below "
                        + count + ", \"cpu\" or \"disk\", or use --device-map auto/balanced to spread over the GPUs present");
            }
        }
        String norm = ModuleSizes.NORM, head = ModuleSizes.LM_HEAD;
        if (plan.targets().containsKey(norm) && plan.targets().containsKey(head) && !plan.target(norm).offloaded()
                && !plan.target(head).offloaded() && !plan.target(norm).equals(plan.target(head))) {
            throw new IllegalArgumentException("the device map puts model.norm on GPU " + plan.target(norm) + " and lm_head on GPU "
                    + plan.target(head) + ": they run together (the LM head reads the final norm's output); map both to one GPU");
        }
    }

    private static int countLayers(PlacementPlan plan) {
        int n = 0;
        while (plan.targets().containsKey(ModuleSizes.layer(n))) n++;
        return n;
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

    /** One store per device of a split model, for --offload-activations (TransformerLM.setActivationStores). */
    public static Map<Backend, ActivationStore> activationStores(ModelDevices devices) {
        Map<Backend, ActivationStore> m = new java.util.IdentityHashMap<>();
        for (Backend b : devices.backends()) {
            if (b instanceof CudaBackend cuda) {
                cuda.context().bind();
                m.put(b, BoundToGpu.activationStore(activationStore(b), cuda.context()));
            } else {
                m.put(b, activationStore(b));
            }
        }
        return m;
    }

    /** The store for --offload-activations: pinned host memory on CUDA, the device itself (no-op) on the CPU. */
    public static ActivationStore activationStore(Backend backend) {
        return backend instanceof CudaBackend cuda ? new CudaActivationOffload(cuda) : ActivationStore.ON_DEVICE;
    }
}
