package dev.qlora4j.bench;

import dev.qlora4j.backend.cuda.CudaAdamW;
import dev.qlora4j.backend.cuda.CudaBackend;
import dev.qlora4j.backend.cuda.CudaGradClip;
import dev.qlora4j.backend.cuda.OpProfiler;
import dev.qlora4j.backend.cuda.SyntheticWeights;
import dev.qlora4j.cuda.CudaDriver;
import dev.qlora4j.model.QuantizedLinearFactory;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.optim.AdamWConfig;
import dev.qlora4j.optim.StateStorage;
import dev.qlora4j.peft.PeftModel;
import dev.qlora4j.peft.config.LoraConfig;
import dev.qlora4j.peft.config.ModuleSelector;
import dev.qlora4j.quant.QuantizationConfig;
import dev.qlora4j.tensor.DType;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.Random;

/**
 * QLoRA training throughput on the GPU, as one printed table: a synthetic model (NF4 + double quantization,
 * BF16 compute, BF16 activations), LoRA r=16 alpha=32 on every linear layer, full steps (forward, backward,
 * clip_grad_norm 1.0, AdamW) of batch x seq random tokens; warm-up steps, then timed steps (synchronize +
 * nanoTime around each); tokens/s from the median step and the peak GPU memory of the timed steps (allocator
 * peak, reset after warm-up). One row per checkpointing setting (and, with checkpointing on, per keep-attention setting).
 *
 * <p>Run: java --enable-native-access=ALL-UNNAMED --add-modules jdk.incubator.vector -cp bench/target/benchmarks.jar
 * dev.qlora4j.bench.CudaTrainBench [--shape llama-7b] [--seq 2048] [--batch 1] [--checkpointing on,off]
 * [--keep-attention auto] [--keep-residual auto] [--warmup 2] [--steps 5] [--offload-layers 0] [--offload-activations off] [--gpus 1].
 * --keep-attention on,off,auto: with checkpointing on, whether each layer's attention result (out + lse) is kept so the
 * backward's recompute skips the attention forward (TransformerLM.setCheckpointKeepAttention; auto, the default, keeps
 * it when all layers' results take at most 1 GiB; one row per value, auto shown as auto-on / auto-off; with
 * --offload-activations on the attention is recomputed either way). --keep-residual on,off,auto: the same for each
 * layer's attention block output (the recompute then skips the o projection; TransformerLM.setCheckpointKeepResidual). --gpus N splits the decoder
 * layers evenly over cuda:0..N-1 (embedding on the first, final norm + LM head on the last; each GPU's adapters,
 * AdamW state and gradients on it; clipping by the global norm) and adds a per-GPU peak memory line per setting.
 * --offload-layers N streams the last N
 * decoder layers' (NF4) weights from pinned host memory (weight offload); --host-embedding on keeps the token
 * embedding table in host memory read over the bus (TransformerLM.setEmbeddingInHostMemory); --offload-activations on keeps the
 * checkpointed layer inputs in pinned host memory (only with checkpointing on). Compare with python3 .gpu-pack/hf-peer-bench.py --shape llama7b --train.
 * With -Dqlora4j.cuda.profile=true a per-op GPU time table (OpProfiler) follows each setting's timed steps;
 * the events it records add some host time per op, so compare step times without it.
 */
public final class CudaTrainBench {
    private CudaTrainBench() {}

    static boolean onOff(String v, String option) {
        return switch (v.trim().toLowerCase(Locale.ROOT)) {
            case "on", "true" -> true;
            case "off", "false" -> false;
            default -> throw new IllegalArgumentException(option + " takes on or off, got " + v);
        };
    }

    public static void main(String[] args) {
        String shape = "llama-7b", ckpt = "on,off", keepAttention = "auto", keepResidual = "auto";
        int seq = 2048, batch = 1, warmup = 2, steps = 5, offloadLayers = 0, gpus = 1;
        boolean offloadActivations = false, hostEmbedding = false;
        for (int i = 0; i + 1 < args.length; i += 2) {
            String v = args[i + 1];
            switch (args[i]) {
                case "--shape" -> shape = v;
                case "--seq" -> seq = Integer.parseInt(v);
                case "--batch" -> batch = Integer.parseInt(v);
                case "--checkpointing" -> ckpt = v;
                case "--keep-attention" -> keepAttention = v;
                case "--keep-residual" -> keepResidual = v;
                case "--warmup" -> warmup = Integer.parseInt(v);
                case "--steps" -> steps = Integer.parseInt(v);
                case "--offload-layers" -> offloadLayers = Integer.parseInt(v);
                case "--offload-activations" -> offloadActivations = onOff(v, "--offload-activations");
                case "--host-embedding" -> hostEmbedding = onOff(v, "--host-embedding");
                case "--gpus" -> gpus = Integer.parseInt(v);
                default -> throw new IllegalArgumentException("unknown option " + args[i]
                        + "; use --shape --seq --batch --checkpointing on,off --keep-attention on,off --keep-residual on,off --warmup --steps --offload-layers N --offload-activations on|off --gpus N");
            }
        }
        if (!CudaDriver.isAvailable()) {
            System.err.println("no GPU: " + CudaDriver.unavailableReason());
            System.exit(2);
        }
        if (gpus > 1) {
            if (offloadLayers > 0) throw new IllegalArgumentException("--gpus N with --offload-layers is not measured here: pick one");
            multiGpu(shape, seq, batch, settings(ckpt, keepAttention, keepResidual), warmup, steps, gpus, offloadActivations);
            return;
        }
        List<String[]> rows = new ArrayList<>();
        List<String> boards = new ArrayList<>();   // the board's power state during each setting's timed steps
        try (CudaBackend b = CudaBackend.create(0, DType.BF16, false)) {
            long t0 = System.nanoTime();
            TransformerLM model;
            if (offloadLayers == 0) {
                model = SyntheticWeights.model(shape, b, 1234, new QuantizedLinearFactory(QuantizationConfig.qlora()));
            } else {
                var c = SyntheticWeights.config(shape);
                model = dev.qlora4j.model.TransformerLM.load(c, SyntheticWeights.onDevice(c, b, 1234), b,
                        new QuantizedLinearFactory(QuantizationConfig.qlora()),
                        dev.qlora4j.placement.Offloading.lastLayersOnCpu(c, DType.BF16, QuantizationConfig.qlora(), b, offloadLayers));
            }
            if (offloadActivations) model.setActivationStore(dev.qlora4j.placement.Offloading.activationStore(b));
            if (hostEmbedding) model.setEmbeddingInHostMemory(true);
            System.out.printf(Locale.ROOT, "offload: %d of %d layers streamed from pinned host memory; activations %s; embedding %s; "
                            + "weights on the GPU %.2f GiB%n",
                    offloadLayers, model.numLayers(), offloadActivations ? "offloaded (with checkpointing)" : "on the GPU",
                    hostEmbedding ? "in host memory" : "on the GPU", b.context().allocator().stats().allocatedBytes() / (double) (1L << 30));
            LoraConfig cfg = LoraConfig.builder().r(16).loraAlpha(32).loraDropout(0.0)
                    .targetModules(new ModuleSelector.AllLinear()).build();
            PeftModel peft = PeftModel.wrap(model, "synthetic-" + shape, cfg, PeftModel.DEFAULT_ADAPTER, 42);
            peft.train(true);
            System.out.printf(Locale.ROOT, "%s on %s: model ready in %.1f s; %s%n", shape, b.context().properties().name(),
                    (System.nanoTime() - t0) / 1e9, peft.printTrainableParameters());
            CudaAdamW opt = CudaAdamW.of(b, peft.trainableParameters(),
                    new AdamWConfig(2e-4, 0.9, 0.999, 1e-8, 0.0, StateStorage.DEVICE));
            CudaGradClip clip = new CudaGradClip(b);
            OpProfiler prof = b.profiler(); // -Dqlora4j.cuda.profile=true: a per-op table after each setting's timed steps
            int vocab = model.config().vocabSize();
            int n = batch * seq, batchRows = batch;  // the lambda below needs an effectively final copy
            int[][] tokens = syntheticTokens(vocab, batch, seq);
            int[] ids = tokens[0], pos = tokens[1], targets = tokens[2];
            for (Setting setting : settings(ckpt, keepAttention, keepResidual)) {
                boolean on = setting.checkpointing();
                setting.apply(model);
                BoardPower[] power = {null};   // sampled over the timed steps only
                Timed t = timeSteps(warmup, steps, b::synchronize, () -> {
                    b.context().allocator().resetPeak();
                    if (prof != null) prof.reset();
                    power[0] = BoardPower.start(BoardPower.nvmlIndex(0), 20);
                }, () -> {
                    peft.zeroGrad();
                    double loss = model.trainStep(ids, pos, null, targets, batchRows, on, 1f / (n - batchRows)).meanLoss();
                    int mark = prof == null ? -1 : prof.begin();
                    clip.clipAsync(peft.trainableParameters(), 1.0); // no host sync: the norm stays on the device
                    if (mark >= 0) prof.end("clip_grad_norm (CudaGradClip, not a Backend op)", mark);
                    mark = prof == null ? -1 : prof.begin();
                    opt.step();
                    if (mark >= 0) prof.end("AdamW step (CudaAdamW, not a Backend op)", mark);
                    return loss;
                });
                if (power[0] != null) boards.add("checkpointing " + setting.label() + ": " + power[0].stop().describe());
                double median = t.median(), loss = t.loss();
                if (prof != null) {
                    double mean = Arrays.stream(t.ms()).average().orElse(Double.NaN);
                    System.out.printf(Locale.ROOT, "%nper-op GPU time, checkpointing %s, mean of %d timed steps (%.1f ms/step):%n%s",
                            setting.label(), steps, mean, prof.table(steps, mean));
                }
                long peak = b.context().allocator().stats().peakAllocatedBytes();
                rows.add(new String[] {shape, Integer.toString(seq), Integer.toString(batch), on ? "on" : "off", setting.keepColumn(model, batch, seq),
                        String.format(Locale.ROOT, "%.1f", median), String.format(Locale.ROOT, "%.0f", n / (median / 1e3)),
                        String.format(Locale.ROOT, "%.2f", peak / (double) (1L << 30)),
                        String.format(Locale.ROOT, "%.4f", loss)});
            }
            opt.close();
        }
        System.out.printf(Locale.ROOT, "%-10s %5s %5s %5s %8s %10s %9s %9s %8s%n", "shape", "seq", "batch", "ckpt", "keep a/r",
                "step ms", "tokens/s", "peak GiB", "loss");
        for (String[] row : rows) {
            System.out.printf(Locale.ROOT, "%-10s %5s %5s %5s %8s %10s %9s %9s %8s%n", (Object[]) row);
        }
        boards.forEach(System.out::println);
        System.out.println("HF peer (transformers + bitsandbytes + peft, measured once on the H200): 6,130 tokens/s, 14.7 GiB peak");
    }

    /**
     * The same steps with the model split over cuda:0..gpus-1 (sequential model parallelism: one GPU works at a
     * time). The clip waits for the global norm (one host sync per step); AdamW runs per GPU.
     */
    private static void multiGpu(String shape, int seq, int batch, List<Setting> settings, int warmup, int steps, int gpus,
                                 boolean offloadActivations) {
        List<CudaBackend> bs = MultiGpuBench.backends(gpus, DType.BF16, false);
        try {
            long t0 = System.nanoTime();
            var c = dev.qlora4j.backend.cuda.SyntheticWeights.config(shape);
            dev.qlora4j.model.ModelDevices devices = MultiGpuBench.balanced(bs, c.numHiddenLayers());
            TransformerLM model = TransformerLM.load(c, MultiGpuBench.weights(c, devices, 1234), devices,
                    new QuantizedLinearFactory(QuantizationConfig.qlora()), dev.qlora4j.model.LayerResidency.NONE);
            if (offloadActivations) model.setActivationStores(dev.qlora4j.placement.Offloading.activationStores(devices));
            LoraConfig cfg = LoraConfig.builder().r(16).loraAlpha(32).loraDropout(0.0)
                    .targetModules(new ModuleSelector.AllLinear()).build();
            PeftModel peft = PeftModel.wrap(model, "synthetic-" + shape, cfg, PeftModel.DEFAULT_ADAPTER, 42);
            peft.train(true);
            System.out.printf(Locale.ROOT, "%s over %d GPUs (%s): model ready in %.1f s; %s%n", shape, gpus, devices.describe(),
                    (System.nanoTime() - t0) / 1e9, peft.printTrainableParameters());
            var args = dev.qlora4j.train.TrainingArguments.defaults(java.nio.file.Path.of("unused")).with(java.util.Map.of(
                    "optim", "adamw_torch", "learning_rate", 2e-4, "weight_decay", 0.0));
            var opt = dev.qlora4j.train.DeviceTraining.optimizerFactory(devices).create(args, peft.trainableParameters());
            var clip = dev.qlora4j.train.DeviceTraining.gradClipper(devices);
            int vocab = model.config().vocabSize();
            int n = batch * seq;
            int[][] tokens = syntheticTokens(vocab, batch, seq);
            int[] ids = tokens[0], pos = tokens[1], targets = tokens[2];
            List<String[]> rows = new ArrayList<>();
            List<String> memory = new ArrayList<>();
            for (Setting setting : settings) {
                boolean on = setting.checkpointing();
                setting.apply(model);
                Timed t = timeSteps(warmup, steps, () -> MultiGpuBench.synchronize(bs), () -> MultiGpuBench.resetPeaks(bs),
                        () -> {
                            peft.zeroGrad();
                            double loss = model.trainStep(ids, pos, null, targets, batch, on, 1f / (n - batch)).meanLoss();
                            clip.clip(peft.trainableParameters(), 1.0);
                            opt.step();
                            return loss;
                        });
                double median = t.median(), loss = t.loss();
                rows.add(new String[] {shape, Integer.toString(seq), Integer.toString(batch), on ? "on" : "off", setting.keepColumn(model, batch, seq),
                        String.format(Locale.ROOT, "%.1f", median), String.format(Locale.ROOT, "%.0f", n / (median / 1e3)),
                        String.format(Locale.ROOT, "%.4f", loss)});
                memory.add("checkpointing " + setting.label() + ": " + MultiGpuBench.peaks(bs));
            }
            peft.close();
            System.out.printf(Locale.ROOT, "%-10s %5s %5s %5s %8s %10s %9s %8s%n", "shape", "seq", "batch", "ckpt", "keep a/r",
                    "step ms", "tokens/s", "loss");
            for (String[] row : rows) System.out.printf(Locale.ROOT, "%-10s %5s %5s %5s %8s %10s %9s %8s%n", (Object[]) row);
            for (String m : memory) System.out.println("peak GPU memory per device, " + m);
        } finally {
            for (CudaBackend b : bs) b.close();
        }
    }

    /** The wall times (ms) of the timed steps and the loss of the last step. */
    record Timed(double[] ms, double loss) {
        double median() {
            double[] sorted = ms.clone();
            Arrays.sort(sorted);
            return sorted[sorted.length / 2];
        }
    }

    /**
     * warmup + steps calls of step (returning its loss), each timed from a synchronized start to a synchronized end;
     * afterWarmup runs once, synchronized, before the first timed step (peak-memory and profiler resets).
     */
    static Timed timeSteps(int warmup, int steps, Runnable synchronize, Runnable afterWarmup,
                           java.util.function.DoubleSupplier step) {
        double[] ms = new double[steps];
        double loss = 0;
        for (int s = 0; s < warmup + steps; s++) {
            if (s == warmup) {
                synchronize.run();
                afterWarmup.run();
            }
            synchronize.run();
            long a = System.nanoTime();
            loss = step.getAsDouble();
            synchronize.run();
            if (s >= warmup) ms[s - warmup] = (System.nanoTime() - a) / 1e6;
        }
        return new Timed(ms, loss);
    }

    /**
     * One measured setting: checkpointing, and (only meaningful with it) whether the attention result and the attention
     * block output are kept (null: auto).
     */
    record Setting(boolean checkpointing, Boolean keepAttention, Boolean keepResidual) {
        /** Applies the keep settings to m. */
        void apply(TransformerLM m) {
            m.setCheckpointKeepAttention(keepAttention);
            m.setCheckpointKeepResidual(keepResidual);
        }

        private static String word(Boolean keep) { return keep == null ? "auto" : keep ? "on" : "off"; }

        String keepColumn() { return checkpointing ? word(keepAttention) + "/" + word(keepResidual) : "-"; }

        /** The keep column (attention/residual) with what auto chose for this model and batch (m set to this setting). */
        String keepColumn(TransformerLM m, int batch, int seq) {
            if (!checkpointing) return keepColumn();
            String a = keepAttention != null ? word(keepAttention) : m.keepsAttention(batch, seq) ? "auto-on" : "auto-off";
            String r = keepResidual != null ? word(keepResidual) : m.keepsResidual(batch, seq) ? "auto-on" : "auto-off";
            return a + "/" + r;
        }

        String label() { return checkpointing ? "on (keep attention/residual " + keepColumn() + ")" : "off"; }
    }

    /**
     * --checkpointing values x --keep-attention values x --keep-residual values (the last two only for checkpointing
     * on), in the order given.
     */
    static List<Setting> settings(String checkpointing, String keepAttention, String keepResidual) {
        List<Setting> out = new ArrayList<>();
        for (String c : checkpointing.split(",")) {
            if (!onOff(c, "--checkpointing")) {
                out.add(new Setting(false, false, false));
                continue;
            }
            for (String k : keepAttention.split(",")) {
                for (String r : keepResidual.split(",")) {
                    out.add(new Setting(true, k.trim().equals("auto") ? null : onOff(k, "--keep-attention"),
                            r.trim().equals("auto") ? null : onOff(r, "--keep-residual")));
                }
            }
        }
        return out;
    }

    /** Random ids, positions 0..seq-1 per row and next-token targets (-100 at each row's end): {ids, positions, targets}. */
    static int[][] syntheticTokens(int vocab, int batch, int seq) {
        int n = batch * seq;
        Random r = new Random(5);
        int[] ids = new int[n], pos = new int[n], targets = new int[n];
        for (int i = 0; i < n; i++) {
            ids[i] = r.nextInt(vocab);
            pos[i] = i % seq;
        }
        for (int i = 0; i < n; i++) targets[i] = i % seq == seq - 1 ? -100 : ids[i + 1];
        return new int[][] {ids, pos, targets};
    }
}
