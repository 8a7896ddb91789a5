package dev.qlora4j.bench;

import dev.qlora4j.quant.QuantBench;
import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.quant.QuantType;
import java.util.concurrent.TimeUnit;
import java.util.stream.IntStream;
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
import org.openjdk.jmh.annotations.Warmup;

/**
 * CPU 4-bit kernels on a 4096 x 4096 weight (bitsandbytes NF4, blocksize 64):
 * <ul>
 *   <li>dequantize: score = weights per second; GB/s written = score * 4 (float32 out), read =
 *       score * (0.5 + 4/64 or 1/64 + ...) bytes;</li>
 *   <li>nf4Matvec: fused dequant-matvec, score = FLOP/s (2 * 4096 * 4096 per call);</li>
 *   <li>f32Matvec: the same matvec over a dense float32 weight (plain Vector API loop), for the ratio.</li>
 * </ul>
 */
@BenchmarkMode(Mode.Throughput)
@OutputTimeUnit(TimeUnit.SECONDS)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector", "-Xmx3g"})
@Warmup(iterations = 4, time = 2)
@Measurement(iterations = 5, time = 2)
public class CpuNf4Bench {
    static final int N = 4096;

    @State(Scope.Benchmark)
    public static class Weights {
        @Param({"false", "true"})
        public boolean doubleQuant;

        QuantState4bit nf4;
        float[] dense;
        float[] x, y, deq;

        @Setup
        public void setup() {
            nf4 = QuantBench.randomWeight(N, N, QuantType.NF4, 64, doubleQuant, 7);
            dense = new float[N * N];
            QuantBench.dequantize(nf4, dense);
            x = QuantBench.randomInput(1, N, 11);
            y = new float[N];
            deq = new float[N * N];
        }
    }

    @Benchmark
    @OperationsPerInvocation(N * N)
    public float[] dequantize(Weights w) {
        QuantBench.dequantize(w.nf4, w.deq);
        return w.deq;
    }

    @Benchmark
    @OperationsPerInvocation(2 * N * N)
    public float[] nf4Matvec(Weights w) {
        QuantBench.matvec(w.nf4, w.x, w.y);
        return w.y;
    }

    /** Dense float32 matvec on all processors: the baseline the fused 4-bit kernel is compared with. */
    @Benchmark
    @OperationsPerInvocation(2 * N * N)
    public float[] f32Matvec(Weights w) {
        float[] d = w.dense, x = w.x, y = w.y;
        IntStream.range(0, N).parallel().forEach(r -> {
            var sp = jdk.incubator.vector.FloatVector.SPECIES_PREFERRED;
            var acc = jdk.incubator.vector.FloatVector.zero(sp);
            int base = r * N;
            for (int i = 0; i < N; i += sp.length()) {
                acc = jdk.incubator.vector.FloatVector.fromArray(sp, d, base + i)
                        .fma(jdk.incubator.vector.FloatVector.fromArray(sp, x, i), acc);
            }
            y[r] = dev.qlora4j.tensor.Lanes.sum(acc);
        });
        return y;
    }

}
