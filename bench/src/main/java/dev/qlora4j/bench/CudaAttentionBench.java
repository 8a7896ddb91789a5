package dev.qlora4j.bench;

import dev.qlora4j.backend.KvCache;
import dev.qlora4j.backend.cuda.CudaBackend;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

/**
 * Causal prefill attention (CudaBackend.attention, flash kernel of native/attention.cu) at seq 2048,
 * batch 1, 32 heads of 128 (kvHeads 32 or 8), synchronized after each call.
 *
 * <p>Score: milliseconds per call (AverageTime). FLOPs of a causal call: 4 * B * H * D * T(T+1)/2
 * (q.k and p.v, 2 FLOPs per multiply-add) = 68.7 GFLOP at T = 2048, H = 32, D = 128, so
 * TFLOP/s = 68.7 / ms. The ceilings to compare with on an H200: ~990 TFLOP/s dense BF16 tensor cores
 * (flash-attention class kernels reach 50-70% of it) and ~67 TFLOP/s float32 FMA (this kernel computes
 * in float32 on the CUDA cores, with 4 shared-memory loads per 16 FMA at best, so expect well under the
 * latter: its gap is the missing tensor-core path). The call also writes K/V into the cache (2 * T * KVH
 * * D elements, negligible).
 *
 * <pre>java -jar bench/target/benchmarks.jar CudaAttentionBench -p act=bf16,f32 -p kvHeads=32,8</pre>
 */
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector",
        "-Xmx4g"})
@Warmup(iterations = 3, time = 2)
@Measurement(iterations = 5, time = 2)
@State(Scope.Benchmark)
public class CudaAttentionBench {
    static final int HEADS = 32, HEAD_DIM = 128;

    @Param({"bf16"})
    public String act;

    @Param({"2048"})
    public int seq;

    @Param({"32"})
    public int kvHeads;

    CudaBackend backend;
    KvCache cache;
    Tensor q, k, v, pads;

    @Setup(Level.Trial)
    public void setup() {
        if (!CudaBackend.isAvailable()) throw new IllegalStateException("CudaAttentionBench needs a GPU");
        DType a = act.equals("f32") ? DType.F32 : DType.BF16;
        backend = CudaBackend.create(0, a, false);
        Random r = new Random(3);
        q = backend.upload(random(r, a, seq, HEADS * HEAD_DIM));
        k = backend.upload(random(r, a, seq, kvHeads * HEAD_DIM));
        v = backend.upload(random(r, a, seq, kvHeads * HEAD_DIM));
        pads = backend.upload(Tensor.ofInts(new int[] {0}, 1));
        cache = backend.newKvCache(1, 1, kvHeads, seq, HEAD_DIM);
        double gflop = 4.0 * HEADS * HEAD_DIM * seq * (seq + 1.0) / 2 / 1e9;
        System.out.printf("%nattention prefill %s T=%d H=%d/%d D=%d: %.1f GFLOP per call (TFLOP/s = %.1f / ms)%n",
                act, seq, HEADS, kvHeads, HEAD_DIM, gflop, gflop);
    }

    private static Tensor random(Random r, DType dt, int rows, int cols) {
        float[] x = new float[rows * cols];
        for (int i = 0; i < x.length; i++) x[i] = (float) r.nextGaussian();
        return Tensor.fromFloats(x, dt, rows, cols);
    }

    @Benchmark
    public void prefill() {
        try (Tensor out = backend.attention(q, k, v, cache, 0, 0, pads, HEADS, kvHeads, HEAD_DIM,
                (float) (1 / Math.sqrt(HEAD_DIM)), 0)) {
            backend.synchronize();
        }
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        for (Tensor t : new Tensor[] {q, k, v, pads}) if (t != null) t.close();
        if (cache != null) cache.close();
        if (backend != null) backend.close();
    }
}
