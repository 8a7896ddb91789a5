package dev.qlora4j.bench;

import dev.qlora4j.backend.cpu.CpuBackend;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Random;
import java.util.concurrent.ForkJoinPool;
import java.util.concurrent.TimeUnit;
import java.util.stream.IntStream;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;
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
 * CpuBackend.linear throughput. Scores are operations per second where one "operation" is
 * declared with @OperationsPerInvocation:
 * <ul>
 *   <li>matvec4096, matmul64: FLOPs, 2 * n * m * k per call, so score / 1e9 = GFLOP/s;</li>
 *   <li>copyBaseline, readBaseline: bytes of the 64 MiB source array, so score / 1e9 = GB/s.</li>
 * </ul>
 * A decode matvec reads each weight once, so its weight bandwidth is
 * score / 2 * bytesPerWeight (4 for F32, 2 for BF16) bytes/s, to compare with readBaseline.
 */
@BenchmarkMode(Mode.Throughput)
@OutputTimeUnit(TimeUnit.SECONDS)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector",
        "-Xmx3g"})
@Warmup(iterations = 3, time = 2)
@Measurement(iterations = 5, time = 2)
public class CpuMatmulBench {
    static final int MATVEC = 4096;
    static final int MM_ROWS = 64, MM_SIZE = 1024;
    static final int BASELINE_FLOATS = 16 << 20; // 64 MiB, as large as the F32 4096x4096 weight

    /** Weights of one dtype, on the heap (Tensor.fromFloats) or in native memory like a mapped file. */
    @State(Scope.Benchmark)
    public static class Linear {
        @Param({"F32", "BF16", "F16"})
        public String dtype;

        @Param({"heap", "native"})
        public String storage;

        /** Worker threads; 0 = one per available processor. */
        @Param({"0"})
        public int threads;

        CpuBackend cpu;
        Arena arena;
        Tensor xMatvec;   // [1, 4096]
        Tensor wMatvec;   // [4096, 4096]
        Tensor xMatmul;   // [64, 1024]
        Tensor wMatmul;   // [1024, 1024]

        @Setup(Level.Trial)
        public void setup() {
            cpu = threads == 0 ? new CpuBackend() : new CpuBackend(threads);
            arena = Arena.ofShared();
            Random r = new Random(42);
            DType dt = DType.valueOf(dtype);
            xMatvec = Tensor.of(gaussian(r, MATVEC), 1, MATVEC);
            wMatvec = place(Tensor.fromFloats(gaussian(r, MATVEC * MATVEC), dt, MATVEC, MATVEC));
            xMatmul = Tensor.of(gaussian(r, MM_ROWS * MM_SIZE), MM_ROWS, MM_SIZE);
            wMatmul = place(Tensor.fromFloats(gaussian(r, MM_SIZE * MM_SIZE), dt, MM_SIZE, MM_SIZE));
        }

        private Tensor place(Tensor heap) {
            if (storage.equals("heap")) return heap;
            MemorySegment seg = arena.allocate(heap.byteSize(), 64);
            MemorySegment.copy(heap.segment(), 0, seg, 0, heap.byteSize());
            return Tensor.view(seg, heap.dtype(), heap.shape());
        }

        @TearDown(Level.Trial)
        public void tearDown() {
            cpu.close();
            arena.close();
        }
    }

    /** Arrays for the memory-bandwidth baselines. */
    @State(Scope.Benchmark)
    public static class Memory {
        float[] src;
        float[] dst;
        ForkJoinPool pool;
        int threads;

        @Setup(Level.Trial)
        public void setup() {
            src = gaussian(new Random(7), BASELINE_FLOATS);
            dst = new float[BASELINE_FLOATS];
            threads = Runtime.getRuntime().availableProcessors();
            pool = new ForkJoinPool(threads);
        }

        @TearDown(Level.Trial)
        public void tearDown() {
            pool.shutdown();
        }
    }

    static float[] gaussian(Random r, int n) {
        float[] a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float) r.nextGaussian();
        return a;
    }

    @Benchmark
    @OperationsPerInvocation(2 * MATVEC * MATVEC)
    public Tensor matvec4096(Linear s) {
        return s.cpu.linear(s.xMatvec, s.wMatvec, null);
    }

    @Benchmark
    @OperationsPerInvocation(2 * MM_ROWS * MM_SIZE * MM_SIZE)
    public Tensor matmul64(Linear s) {
        return s.cpu.linear(s.xMatmul, s.wMatmul, null);
    }

    /** Single-threaded System.arraycopy of 64 MiB: bytes copied per second (each read once, written once). */
    @Benchmark
    @OperationsPerInvocation(4 * BASELINE_FLOATS)
    public float[] copyBaseline(Memory m) {
        System.arraycopy(m.src, 0, m.dst, 0, BASELINE_FLOATS);
        return m.dst;
    }

    /** Vector sum of 64 MiB split over all processors: the read bandwidth a decode matvec can reach. */
    @Benchmark
    @OperationsPerInvocation(4 * BASELINE_FLOATS)
    public double readBaseline(Memory m) {
        int parts = m.threads;
        return m.pool.submit(() -> IntStream.range(0, parts).parallel()
                .mapToDouble(p -> sum(m.src, BASELINE_FLOATS / parts * p, BASELINE_FLOATS / parts * (p + 1)))
                .sum()).join();
    }

    private static final VectorSpecies<Float> F = FloatVector.SPECIES_PREFERRED;

    private static double sum(float[] a, int lo, int hi) {
        FloatVector acc0 = FloatVector.zero(F), acc1 = acc0;
        int step = 2 * F.length();
        int i = lo;
        for (; i + step <= hi; i += step) {
            acc0 = acc0.add(FloatVector.fromArray(F, a, i));
            acc1 = acc1.add(FloatVector.fromArray(F, a, i + F.length()));
        }
        double s = acc0.add(acc1).reduceLanes(VectorOperators.ADD);
        for (; i < hi; i++) s += a[i];
        return s;
    }
}
