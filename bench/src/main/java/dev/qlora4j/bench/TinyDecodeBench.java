package dev.qlora4j.bench;

import dev.qlora4j.CausalLM;
import dev.qlora4j.LoadOptions;
import dev.qlora4j.infer.GenerationResult;
import dev.qlora4j.infer.SamplingParams;
import dev.qlora4j.infer.TokenListener;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.quant.QuantizationConfig;
import dev.qlora4j.tensor.DType;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
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
 * Greedy decode of the embedded model (models/default, 11M-parameter Llama, bf16 weights) on the
 * CPU backend: batch 1, an 8-token prompt, 64 new tokens per call. Score = generated tokens per
 * second (prefill included, as a user sees it). Run from the repository root (or set
 * -Dqlora4j.bench.model=DIR).
 */
@BenchmarkMode(Mode.Throughput)
@OutputTimeUnit(TimeUnit.SECONDS)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector", "-Xmx3g"})
@Warmup(iterations = 3, time = 3)
@Measurement(iterations = 5, time = 3)
public class TinyDecodeBench {
    static final int NEW_TOKENS = 64;

    @State(Scope.Benchmark)
    public static class Model {
        /** bf16 = the checkpoint as stored; nf4 = loaded in 4-bit (double-quant, f32 compute). */
        @Param({"bf16", "nf4"})
        public String weights;

        CausalLM lm;
        int[][] prompt;

        @Setup
        public void setup() {
            LoadOptions o = LoadOptions.cpu();
            if (weights.equals("nf4")) {
                o = o.withQuantization(new QuantizationConfig(false, true, 6.0, null, false, false, DType.F32,
                        QuantType.NF4, true, DType.U8, 64));
            }
            lm = CausalLM.fromPretrained(Path.of(System.getProperty("qlora4j.bench.model", "models/default")), o);
            prompt = new int[][] {lm.tokenizer().encode("And the LORD said unto Moses", true)};
        }

        @TearDown
        public void close() { lm.close(); }
    }

    @Benchmark
    @OperationsPerInvocation(NEW_TOKENS)
    public GenerationResult decode(Model m) {
        return m.lm.generateIds(m.prompt, SamplingParams.greedy(NEW_TOKENS).withMinNewTokens(NEW_TOKENS), TokenListener.NONE);
    }
}
