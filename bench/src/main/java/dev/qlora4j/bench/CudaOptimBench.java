package dev.qlora4j.bench;

import dev.qlora4j.backend.cuda.CudaAdamW;
import dev.qlora4j.backend.cuda.CudaAdamW8bit;
import dev.qlora4j.backend.cuda.CudaBackend;
import dev.qlora4j.cuda.CudaDriver;
import dev.qlora4j.cuda.MemoryInfo;
import dev.qlora4j.optim.AdamW8bitConfig;
import dev.qlora4j.optim.AdamWConfig;
import dev.qlora4j.optim.Optimizer;
import dev.qlora4j.optim.Param;
import dev.qlora4j.optim.StateStorage;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.Random;
import java.util.function.LongSupplier;

/**
 * Optimizer step time and state memory on the GPU, for the figure "paged and 8-bit optimizers: step time
 * and memory vs f32 AdamW": adamw_torch (CudaAdamW, F32 state on the GPU), adamw_8bit (CudaAdamW8bit), and the
 * paged variants (state in pinned host memory, read by the kernels over the bus) over two parameter sets:
 * <ul>
 *   <li>lora-7b: the LoRA parameters of Llama-7B, r=16 on all 7 linear layers of 32 layers (448 tensors,
 *       39,976,960 parameters);</li>
 *   <li>1b: 256 tensors of [1024, 4096] (1,073,741,824 parameters).</li>
 * </ul>
 * Each step is one optimizer.step() (one multi-tensor launch) with fixed gradients; synchronize + nanoTime around
 * each; the median of the timed steps is printed with the optimizer state bytes on the GPU and in pinned host
 * memory, and the device memory in use (cuMemGetInfo) after the warm-up.
 *
 * <p>Run: java --enable-native-access=ALL-UNNAMED --add-modules jdk.incubator.vector -cp bench/target/benchmarks.jar
 * dev.qlora4j.bench.CudaOptimBench [--sets lora-7b,1b] [--optims adamw_torch,adamw_8bit,paged_adamw_32bit,paged_adamw_8bit]
 * [--warmup 3] [--steps 10]
 */
public final class CudaOptimBench {
    private CudaOptimBench() {}

    public static void main(String[] args) {
        String sets = "lora-7b,1b", optims = "adamw_torch,adamw_8bit,paged_adamw_32bit,paged_adamw_8bit";
        int warmup = 3, steps = 10;
        for (int i = 0; i + 1 < args.length; i += 2) {
            String v = args[i + 1];
            switch (args[i]) {
                case "--sets" -> sets = v;
                case "--optims" -> optims = v;
                case "--warmup" -> warmup = Integer.parseInt(v);
                case "--steps" -> steps = Integer.parseInt(v);
                default -> throw new IllegalArgumentException("unknown option " + args[i] + "; use --sets --optims --warmup --steps");
            }
        }
        if (!CudaDriver.isAvailable()) {
            System.err.println("no GPU: " + CudaDriver.unavailableReason());
            System.exit(2);
        }
        List<String> rows = new ArrayList<>();
        try (CudaBackend b = CudaBackend.create(0, DType.BF16, false)) {
            for (String set : sets.split(",")) {
                List<int[]> shapes = shapes(set.trim());
                long numel = 0;
                for (int[] s : shapes) numel += (long) s[0] * s[1];
                List<Param> params = params(b, shapes);
                System.out.printf(Locale.ROOT, "%s: %d tensors, %,d parameters on %s%n", set, shapes.size(), numel,
                        b.context().properties().name());
                for (String optim : optims.split(",")) {
                    rows.add(run(b, set.trim(), numel, params, optim.trim(), warmup, steps));
                }
                for (Param p : params) {
                    p.value().close();
                    p.grad().close();
                }
            }
        }
        System.out.printf(Locale.ROOT, "%n%-8s %-18s %14s %10s %14s %15s %14s%n", "set", "optim", "params", "step ms",
                "GPU state MiB", "host state MiB", "GPU used MiB");
        rows.forEach(System.out::println);
    }

    private static String run(CudaBackend b, String set, long numel, List<Param> params, String optim, int warmup, int steps) {
        Made made = create(b, params, optim);
        Optimizer opt = made.opt();
        try {
            double[] ms = new double[steps];
            for (int s = 0; s < warmup + steps; s++) {
                b.synchronize();
                long t0 = System.nanoTime();
                opt.step();
                b.synchronize();
                if (s >= warmup) ms[s - warmup] = (System.nanoTime() - t0) / 1e6;
            }
            Arrays.sort(ms);
            MemoryInfo mem = b.context().driver().memGetInfo();
            long gpuState = made.gpuStateBytes().getAsLong(), hostState = made.hostStateBytes().getAsLong();
            return String.format(Locale.ROOT, "%-8s %-18s %,14d %10.3f %14.1f %15.1f %14.1f", set, optim, numel, ms[steps / 2],
                    gpuState / 1048576.0, hostState / 1048576.0, (mem.totalBytes() - mem.freeBytes()) / 1048576.0);
        } finally {
            made.close().run();
            b.context().allocator().emptyCache();
        }
    }

    /** An optimizer with its state-size readers and its close. */
    private record Made(Optimizer opt, LongSupplier gpuStateBytes, LongSupplier hostStateBytes, Runnable close) {
        static Made of(CudaAdamW a) { return new Made(a, a::deviceStateBytes, a::hostStateBytes, a::close); }

        static Made of(CudaAdamW8bit a) { return new Made(a, a::deviceStateBytes, a::hostStateBytes, a::close); }
    }

    private static Made create(CudaBackend b, List<Param> params, String optim) {
        double lr = 2e-4, wd = 0.0;
        return switch (optim) {
            case "adamw_torch" -> Made.of(CudaAdamW.of(b, params, new AdamWConfig(lr, 0.9, 0.999, 1e-8, wd, StateStorage.DEVICE)));
            case "paged_adamw_32bit" -> Made.of(CudaAdamW.of(b, params, new AdamWConfig(lr, 0.9, 0.999, 1e-8, wd, StateStorage.PAGED)));
            case "adamw_8bit" -> Made.of(CudaAdamW8bit.of(b, params, new AdamW8bitConfig(lr, 0.9, 0.999, 1e-8, wd, 4096, StateStorage.DEVICE)));
            case "paged_adamw_8bit" -> Made.of(CudaAdamW8bit.of(b, params, new AdamW8bitConfig(lr, 0.9, 0.999, 1e-8, wd, 4096, StateStorage.PAGED)));
            default -> throw new IllegalArgumentException("unknown optim " + optim
                    + "; use adamw_torch, adamw_8bit, paged_adamw_32bit or paged_adamw_8bit");
        };
    }

    /** [rows, cols] of each tensor of the set. */
    static List<int[]> shapes(String set) {
        List<int[]> out = new ArrayList<>();
        switch (set) {
            case "lora-7b" -> {
                int h = 4096, mlp = 11008, r = 16;
                for (int layer = 0; layer < 32; layer++) {
                    for (int i = 0; i < 4; i++) {   // q, k, v, o: A [r, h], B [h, r]
                        out.add(new int[] {r, h});
                        out.add(new int[] {h, r});
                    }
                    for (int i = 0; i < 2; i++) {   // gate, up: A [r, h], B [mlp, r]
                        out.add(new int[] {r, h});
                        out.add(new int[] {mlp, r});
                    }
                    out.add(new int[] {r, mlp});    // down: A [r, mlp], B [h, r]
                    out.add(new int[] {h, r});
                }
            }
            case "1b" -> {
                for (int i = 0; i < 256; i++) out.add(new int[] {1024, 4096});
            }
            default -> throw new IllegalArgumentException("unknown parameter set " + set + "; use lora-7b or 1b");
        }
        return out;
    }

    /** F32 values and gradients on the device (random values, shared host arrays per size). */
    private static List<Param> params(CudaBackend b, List<int[]> shapes) {
        Random r = new Random(3);
        List<Param> out = new ArrayList<>();
        java.util.Map<Integer, float[][]> host = new java.util.HashMap<>();
        for (int i = 0; i < shapes.size(); i++) {
            int[] s = shapes.get(i);
            int n = s[0] * s[1];
            float[][] vg = host.computeIfAbsent(n, k -> {
                float[] v = new float[k], g = new float[k];
                for (int j = 0; j < k; j++) {
                    v[j] = (float) (r.nextGaussian() * 0.02);
                    g[j] = (float) (r.nextGaussian() * 1e-3);
                }
                return new float[][] {v, g};
            });
            Tensor value = b.upload(Tensor.of(vg[0], s));
            Tensor grad = b.upload(Tensor.of(vg[1], s));
            out.add(new Param.TensorParam("p" + i, value, grad));
        }
        return out;
    }
}
