package dev.qlora4j.bench;

import dev.qlora4j.backend.cuda.CudaContext;
import dev.qlora4j.cuda.CudaDriver;
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
 * NF4 linear on the GPU (CudaQuantOps.linear: fused GEMV for rows <= 16, dequantize + cuBLAS above) against
 * cuBLAS BF16 of the same shape. One invocation replays a CUDA graph of 100 launches and synchronizes, so
 * the score is the time per op including the GPU's gaps between kernels but not the Java launch overhead.
 * Shapes are in_features x out_features. CudaNf4Report prints the same cases as a table with GB/s and ratios.
 */
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MICROSECONDS)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector", "-Xmx16g"})
@Warmup(iterations = 2, time = 1)
@Measurement(iterations = 5, time = 1)
@State(Scope.Benchmark)
public class CudaNf4Bench {
    @Param({"4096x11008", "11008x4096", "8192x28672"})
    public String shape;

    @Param({"1", "2", "4", "8", "16", "4096"})
    public int rows;

    @Param({"false", "true"})
    public boolean doubleQuant;

    /** Decode GEMV variant (rows <= 16): v2code (default; rows 9..16 as v2), v2 (the exact decode), v2reg, hybrid, hybrid:P, stream or mma; ignored above 16 rows. */
    @Param({"v2code", "v2", "hybrid", "stream", "mma"})
    public String gemv;

    private CudaContext ctx;
    private CudaNf4BenchWorkload work;
    private long nf4Graph, cublasGraph;

    @Setup
    public void setup() {
        if (!CudaDriver.isAvailable()) throw new IllegalStateException("no GPU: " + CudaDriver.unavailableReason());
        ctx = new CudaContext(CudaDriver.get(), 0);
        int[] s = CudaNf4BenchWorkload.parseShape(shape);
        work = new CudaNf4BenchWorkload(ctx, s[1], s[0], rows, doubleQuant);
        nf4Graph = work.nf4Graph(gemv);
        cublasGraph = work.cublasGraph();
    }

    @TearDown
    public void tearDown() {
        work.close();
        ctx.close();
    }

    @Benchmark
    @OperationsPerInvocation(CudaNf4BenchWorkload.LAUNCHES)
    public void nf4() { work.replay(nf4Graph); }

    @Benchmark
    @OperationsPerInvocation(CudaNf4BenchWorkload.LAUNCHES)
    public void cublasBf16() { work.replay(cublasGraph); }
}
