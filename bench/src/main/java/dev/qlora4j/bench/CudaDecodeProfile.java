package dev.qlora4j.bench;

import dev.qlora4j.backend.cuda.CudaBackend;
import dev.qlora4j.backend.cuda.OpProfiler;
import dev.qlora4j.backend.cuda.SyntheticWeights;
import dev.qlora4j.infer.GenerationResult;
import dev.qlora4j.infer.Generator;
import dev.qlora4j.infer.SamplingParams;
import dev.qlora4j.infer.TokenListener;
import dev.qlora4j.model.QuantizedLinearFactory;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.quant.QuantizationConfig;
import dev.qlora4j.tensor.DType;

import java.util.Locale;
import java.util.Random;

/**
 * Where a decode step's time goes, as one printed report: a random-weight model of a named shape on cuda:0,
 * batch 1, a 32-token prompt and N new greedy tokens. First the decode loop's tokens/s with CUDA-graph replay
 * (what users get; median of 3 generate() calls), then, when -Dqlora4j.cuda.profile=true, one more generate()
 * with direct launches and a per-op GPU-time table per decode step (events cannot be recorded inside a graph,
 * so that table shows the ops' kernel time, not the graph's launch gaps; the difference between the two step
 * times is the launch overhead the graph still pays).
 *
 * <p>Run: bash .gpu-pack/run main dev.qlora4j.bench.CudaDecodeProfile [--shape llama-7b] [--quant nf4|nf4-nodq|bf16]
 * [--new-tokens 128] [--offload-layers N] [--graphs on|off] [--gpus N] [--sample T,K,P[,R]]. --sample decodes with
 * sampling (temperature T, top_k K, top_p P, repetition penalty R; seed 0; T = 0: greedy with the penalty) instead of
 * greedy tokens. --gpus N splits the decoder layers evenly
 * over cuda:0..N-1 (each layer's KV cache on its GPU; decode graphs are off over several GPUs, so the loop runs
 * direct launches) and prints each GPU's peak memory.
 */
public final class CudaDecodeProfile {
    private CudaDecodeProfile() {}

    /** nf4: QLoRA's config (NF4, double quantization); nf4-nodq: the same with float32 absmax; bf16: no quantization. */
    static QuantizationConfig quantConfig(String quant) {
        return switch (quant) {
            case "nf4" -> QuantizationConfig.qlora();
            case "nf4-nodq" -> {
                QuantizationConfig q = QuantizationConfig.qlora();
                yield new QuantizationConfig(q.loadIn8bit(), q.loadIn4bit(), q.llmInt8Threshold(), q.llmInt8SkipModules(),
                        q.llmInt8EnableFp32CpuOffload(), q.llmInt8HasFp16Weight(), q.bnb4bitComputeDType(),
                        q.bnb4bitQuantType(), false, q.bnb4bitQuantStorage(), q.blocksize());
            }
            case "bf16" -> null;
            default -> throw new IllegalArgumentException("--quant " + quant + ": use nf4, nf4-nodq or bf16");
        };
    }

    public static void main(String[] args) {
        String shape = "llama-7b", quant = "nf4";
        int newTokens = 128, offloadLayers = 0, gpus = 1;
        boolean graphs = true;
        String sample = null;
        for (int i = 0; i + 1 < args.length; i += 2) {
            switch (args[i]) {
                case "--shape" -> shape = args[i + 1];
                case "--quant" -> quant = args[i + 1];
                case "--new-tokens" -> newTokens = Integer.parseInt(args[i + 1]);
                case "--offload-layers" -> offloadLayers = Integer.parseInt(args[i + 1]);
                case "--graphs" -> graphs = args[i + 1].equalsIgnoreCase("on") || args[i + 1].equalsIgnoreCase("true");
                case "--gpus" -> gpus = Integer.parseInt(args[i + 1]);
                case "--sample" -> sample = args[i + 1];
                default -> throw new IllegalArgumentException("unknown option " + args[i]
                        + "; use --shape NAME --quant nf4|nf4-nodq|bf16 --new-tokens N --offload-layers N --graphs on|off --gpus N"
                        + " --sample T,K,P");
            }
        }
        if (!CudaBackend.isAvailable()) {
            System.err.println("CudaDecodeProfile needs a GPU");
            System.exit(2);
        }
        boolean profiling = Boolean.getBoolean(OpProfiler.PROPERTY);
        if (gpus > 1) {
            if (offloadLayers > 0) throw new IllegalArgumentException("--gpus N with --offload-layers is not measured here: pick one");
            multiGpu(shape, quant, newTokens, gpus, sample);
            return;
        }
        // Graph replay is only possible without the profiler; with it, the graph figure is skipped.
        try (CudaBackend b = CudaBackend.create(0, DType.BF16, graphs)) {
            QuantizationConfig q = quantConfig(quant);
            var c = SyntheticWeights.config(shape);
            // --offload-layers N: the last N layers' weights stream from pinned host memory (graphs turn off then).
            TransformerLM model = TransformerLM.load(c, SyntheticWeights.onDevice(c, b, 42), b,
                    q == null ? dev.qlora4j.model.LinearFactory.DENSE : new QuantizedLinearFactory(q),
                    offloadLayers == 0 ? dev.qlora4j.model.LayerResidency.NONE
                            : dev.qlora4j.placement.Offloading.lastLayersOnCpu(c, DType.BF16, q, b, offloadLayers));
            int vocab = model.config().vocabSize();
            int[][] prompt = {new Random(1).ints(32, 3, vocab).toArray()};
            SamplingParams params = params(newTokens, sample);
            int[] eos = model.config().eosTokenIds();
            Generator gen = new Generator(model, eos, eos.length > 0 ? eos[0] : 0, ids -> "");
            System.out.printf(Locale.ROOT, "%s %s: %.2f GB of weights; %d of %d layers streamed from host; graphs %s; %s%n",
                    shape, quant, model.weightBytes() / 1e9, offloadLayers, c.numHiddenLayers(),
                    b.decodeGraphsEnabled() && offloadLayers == 0 ? "on" : "off",
                    sample == null ? "greedy" : "sampling T,k,p " + sample);
            gen.generate(prompt, params, TokenListener.NONE); // warm-up: kernels loaded, graph captured
            double[] tps = new double[3];
            int[] tokens = null;
            for (int i = 0; i < tps.length; i++) {
                GenerationResult r = gen.generate(prompt, params, TokenListener.NONE);
                tps[i] = r.decodeTokensPerSecond();
                tokens = r.outputIds()[0];
            }
            java.util.Arrays.sort(tps);
            System.out.printf(Locale.ROOT, "decode loop: %.1f tokens/s (%.3f ms/token), %d new tokens, median of 3%n",
                    tps[1], 1e3 / tps[1], newTokens);
            // the tokens' fingerprint: equal between two builds when their kernels give the same bits (or near enough
            // that no greedy pick flips), for A/B runs of a change meant to keep the numerics
            System.out.printf(Locale.ROOT, "tokens: %08x (first %s)%n", java.util.Arrays.hashCode(tokens),
                    java.util.Arrays.toString(java.util.Arrays.copyOf(tokens, Math.min(8, tokens.length))));
            OpProfiler prof = b.profiler();
            if (prof != null) {
                prof.reset();
                GenerationResult r = gen.generate(prompt, params, TokenListener.NONE);
                b.synchronize();
                double stepMs = r.decodeNanos() / 1e6 / r.decodeSteps();
                System.out.printf(Locale.ROOT, "%nper-op GPU time per decode step (direct launches, prefill included in"
                        + " the totals; %.3f ms/step host-timed):%n%s", stepMs, prof.table(r.decodeSteps(), stepMs));
            }
            model.close();
        }
    }

    /**
     * Greedy, or sampling with "T,K,P[,R]" (R: repetition penalty; T 0: greedy with the penalty; seed 0); every token
     * generated (EOS suppressed until the last).
     */
    private static SamplingParams params(int newTokens, String sample) {
        if (sample == null) return SamplingParams.greedy(newTokens).withMinNewTokens(newTokens);
        String[] f = sample.split(",");
        if (f.length != 3 && f.length != 4) {
            throw new IllegalArgumentException("--sample takes T,K,P[,R] (e.g. 0.8,50,0.9 or 0.8,50,0.9,1.1), got " + sample);
        }
        double t = Double.parseDouble(f[0]);
        return new SamplingParams(newTokens, newTokens, t > 0, t > 0 ? t : 1.0, Integer.parseInt(f[1]),
                Double.parseDouble(f[2]), f.length == 4 ? Double.parseDouble(f[3]) : 1.0, 0, java.util.List.of());
    }

    /** The decode loop with the model split over cuda:0..gpus-1 (direct launches; tokens/s and per-GPU peaks). */
    private static void multiGpu(String shape, String quant, int newTokens, int gpus, String sample) {
        java.util.List<CudaBackend> bs = MultiGpuBench.backends(gpus, DType.BF16, false);
        try {
            QuantizationConfig q = quantConfig(quant);
            var c = SyntheticWeights.config(shape);
            dev.qlora4j.model.ModelDevices devices = MultiGpuBench.balanced(bs, c.numHiddenLayers());
            TransformerLM model = TransformerLM.load(c, MultiGpuBench.weights(c, devices, 42), devices,
                    q == null ? dev.qlora4j.model.LinearFactory.DENSE : new QuantizedLinearFactory(q), dev.qlora4j.model.LayerResidency.NONE);
            int vocab = model.config().vocabSize();
            int[][] prompt = {new Random(1).ints(32, 3, vocab).toArray()};
            SamplingParams params = params(newTokens, sample);
            int[] eos = model.config().eosTokenIds();
            Generator gen = new Generator(model, eos, eos.length > 0 ? eos[0] : 0, ids -> "");
            System.out.printf(Locale.ROOT, "%s %s over %d GPUs (%s): %.2f GB of weights; graphs off (several devices)%n", shape, quant,
                    gpus, devices.describe(), model.weightBytes() / 1e9);
            gen.generate(prompt, params, TokenListener.NONE); // warm-up
            MultiGpuBench.synchronize(bs);
            MultiGpuBench.resetPeaks(bs);
            double[] tps = new double[3];
            for (int i = 0; i < tps.length; i++) tps[i] = gen.generate(prompt, params, TokenListener.NONE).decodeTokensPerSecond();
            java.util.Arrays.sort(tps);
            System.out.printf(Locale.ROOT, "decode loop: %.1f tokens/s (%.3f ms/token), %d new tokens, median of 3%n",
                    tps[1], 1e3 / tps[1], newTokens);
            System.out.println("peak GPU memory per device: " + MultiGpuBench.peaks(bs));
            model.close();
        } finally {
            for (CudaBackend b : bs) b.close();
        }
    }
}
