package dev.qlora4j.bench;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.cuda.CudaBackend;
import dev.qlora4j.backend.cuda.SyntheticWeights;
import dev.qlora4j.cuda.CudaDriver;
import dev.qlora4j.model.ModelConfig;
import dev.qlora4j.model.ModelDevices;
import dev.qlora4j.model.WeightSource;
import dev.qlora4j.tensor.Tensor;

import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * What the benchmarks' --gpus N shares: N BF16 backends (cuda:0..N-1), the balanced split of a model's layers
 * over them, synthetic weights generated on the GPU each tensor belongs to, and a per-GPU memory line.
 */
final class MultiGpuBench {
    private MultiGpuBench() {}

    /** cuda:0..n-1, each with its own context and stream; fails with the GPU count when fewer exist. */
    static List<CudaBackend> backends(int n, dev.qlora4j.tensor.DType activations, boolean graphs) {
        int count = CudaDriver.get().deviceCount();
        if (n < 1 || n > count) {
            throw new IllegalArgumentException("--gpus " + n + ": this machine has " + count + " GPU(s); pass --gpus 1.." + count);
        }
        List<CudaBackend> out = new ArrayList<>();
        for (int g = 0; g < n; g++) out.add(CudaBackend.create(g, activations, graphs));
        return out;
    }

    static ModelDevices balanced(List<CudaBackend> gpus, int layers) {
        return ModelDevices.balanced(new ArrayList<Backend>(gpus), layers);
    }

    /** Synthetic weights made on the GPU of the module each name belongs to (seeded per name, as on one GPU). */
    static WeightSource weights(ModelConfig c, ModelDevices devices, long seed) {
        Map<Backend, SyntheticWeights> per = new IdentityHashMap<>();
        for (Backend b : devices.backends()) per.put(b, SyntheticWeights.onDevice(c, (CudaBackend) b, seed));
        SyntheticWeights any = per.get(devices.head());
        return new WeightSource() {
            @Override public boolean has(String name) { return any.has(name); }

            @Override public Tensor get(String name) { return per.get(devices.forName(name)).get(name); }

            @Override public String describe() { return any.describe() + " over " + devices.describe(); }
        };
    }

    static void synchronize(List<CudaBackend> gpus) {
        for (CudaBackend b : gpus) b.synchronize();
    }

    static void resetPeaks(List<CudaBackend> gpus) {
        for (CudaBackend b : gpus) b.context().allocator().resetPeak();
    }

    /** "cuda:0 peak 7.10 GiB, cuda:1 peak 6.95 GiB" (allocator peaks since the last reset). */
    static String peaks(List<CudaBackend> gpus) {
        List<String> parts = new ArrayList<>();
        for (CudaBackend b : gpus) {
            parts.add(String.format(Locale.ROOT, "%s peak %.2f GiB", b.device(),
                    b.context().allocator().stats().peakAllocatedBytes() / (double) (1L << 30)));
        }
        return String.join(", ", parts);
    }
}
