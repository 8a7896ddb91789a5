package dev.qlora4j.bench;

import dev.qlora4j.backend.cuda.CudaBackend;
import dev.qlora4j.backend.cuda.SyntheticWeights;
import dev.qlora4j.infer.GenerationResult;
import dev.qlora4j.infer.Generator;
import dev.qlora4j.infer.SamplingParams;
import dev.qlora4j.infer.TokenListener;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.tensor.DType;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import org.openjdk.jmh.annotations.AuxCounters;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OperationsPerInvocation;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

/**
 * Decode throughput of a random-weight Llama of a named shape on cuda:0: batch 1, a 32-token prompt, 128
 * new tokens (EOS suppressed, greedy), BF16 weights and BF16 activations.
 *
 * <p>Score: new tokens per second of the whole generate() call (prefill included), from
 * {@code @OperationsPerInvocation(128)}. The secondary results decodeSteps and decodeSeconds (sums per
 * iteration) give the decode loop alone: decodeSteps / decodeSeconds tokens/s.
 *
 * <p>Ceiling: a decode step reads every weight once, so tokens/s <= HBM bandwidth / weight bytes (H200,
 * ~4.8 TB/s datasheet: llama-1b 2.2 GB -> ~2200 tok/s; llama-7b 13.5 GB -> ~350 tok/s).
 *
 * <p>Parameters: shape (SyntheticWeights.SHAPES), quant "bf16" (only: a QuantizationConfig-based
 * LinearFactory for nf4 does not exist yet; "nf4" fails with that message), graphs true/false (CUDA-graph
 * decode vs direct launches).
 *
 * offloadLayers N (default 0) streams the last N layers' weights from pinned host memory (weight offload).
 *
 * <pre>java -jar bench/target/benchmarks.jar CudaDecodeBench -p shape=llama-1b,llama-7b -p graphs=true,false</pre>
 */
@BenchmarkMode(Mode.Throughput)
@OutputTimeUnit(TimeUnit.SECONDS)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector",
        "-Xmx8g"})
@Warmup(iterations = 2, time = 5)
@Measurement(iterations = 5, time = 5)
@State(Scope.Benchmark)
public class CudaDecodeBench {
    static final int PROMPT = 32;
    static final int NEW_TOKENS = 128;

    @Param({"llama-1b"})
    public String shape;

    @Param({"bf16", "nf4"})
    public String quant;

    @Param({"true"})
    public boolean graphs;

    /** The last N decoder layers streamed from pinned host memory (weight offload; turns decode graphs off). 0: all on the GPU. */
    @Param({"0"})
    public int offloadLayers;

    CudaBackend backend;
    TransformerLM model;
    Generator generator;
    int[][] prompt;
    SamplingParams params;

    @Setup(Level.Trial)
    public void setup() {
        if (!quant.equals("bf16") && !quant.equals("nf4")) {
            throw new IllegalArgumentException("quant=" + quant + ": use bf16 or nf4");
        }
        if (!CudaBackend.isAvailable()) throw new IllegalStateException("CudaDecodeBench needs a GPU");
        backend = CudaBackend.create(0, DType.BF16, graphs);
        // nf4: QLoRA's setup (NF4, double quantization, bf16 compute), quantized on the GPU layer by layer.
        if (offloadLayers == 0) {
            model = quant.equals("nf4")
                    ? SyntheticWeights.model(shape, backend, 42,
                            new dev.qlora4j.model.QuantizedLinearFactory(dev.qlora4j.quant.QuantizationConfig.qlora()))
                    : SyntheticWeights.model(shape, backend, 42);
        } else {
            var c = SyntheticWeights.config(shape);
            var q = quant.equals("nf4") ? dev.qlora4j.quant.QuantizationConfig.qlora() : null;
            model = TransformerLM.load(c, SyntheticWeights.onDevice(c, backend, 42), backend,
                    q == null ? dev.qlora4j.model.LinearFactory.DENSE : new dev.qlora4j.model.QuantizedLinearFactory(q),
                    dev.qlora4j.placement.Offloading.lastLayersOnCpu(c, DType.BF16, q, backend, offloadLayers));
            System.out.printf("%noffload: the last %d of %d layers stream from pinned host memory%n", offloadLayers, c.numHiddenLayers());
        }
        int vocab = model.config().vocabSize();
        Random r = new Random(1);
        prompt = new int[][] {r.ints(PROMPT, 3, vocab).toArray()};
        params = SamplingParams.greedy(NEW_TOKENS).withMinNewTokens(NEW_TOKENS);
        int[] eos = model.config().eosTokenIds();
        generator = new Generator(model, eos, eos.length > 0 ? eos[0] : 0, ids -> "");
        System.out.printf("%n%s: %.2f GB of weights on %s%n", shape, model.weightBytes() / 1e9,
                backend.context().properties());
    }

    /**
     * Decode loop only, summed over an iteration (EVENTS counters are not divided by time): decode-only
     * tokens/s = decodeSteps / decodeSeconds (both printed by JMH next to the score).
     */
    @State(Scope.Thread)
    @AuxCounters(AuxCounters.Type.EVENTS)
    public static class DecodeLoop {
        public long decodeSteps;
        public double decodeSeconds;

        @Setup(Level.Iteration)
        public void reset() {
            decodeSteps = 0;
            decodeSeconds = 0;
        }
    }

    @Benchmark
    @OperationsPerInvocation(NEW_TOKENS)
    public int[] generate(DecodeLoop loop) {
        GenerationResult r = generator.generate(prompt, params, TokenListener.NONE);
        loop.decodeSteps += r.decodeSteps();
        loop.decodeSeconds += r.decodeNanos() / 1e9;
        return r.outputIds()[0];
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        if (model != null) model.close();
        if (backend != null) backend.close();
    }
}
