package dev.qlora4j.cuda;

import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Locale;
import java.util.concurrent.TimeUnit;

/**
 * The host-side cost of one kernel launch and one cuBLAS GEMM through qlora4j's FFM bindings, in ns per call,
 * without a GPU: the real {@link FfmCudaDriver} and {@link Cublas} code against fake libraries whose entry
 * points return at once (fake_libcuda.c beside this file; a fake libcublas compiled here), so what is timed is
 * exactly the Java side (argument marshalling, arenas, lookups, messages) plus one native downcall.
 *
 * <p>Not a unit test (no assertions on time): run by hand, e.g.
 * <pre>
 *   ./mvnw -q -o test-compile
 *   java --enable-native-access=ALL-UNNAMED -cp target/classes:target/test-classes dev.qlora4j.cuda.HostLaunchCostBench
 * </pre>
 * Needs cc on the PATH (it compiles the fakes into a temp folder).
 */
public final class HostLaunchCostBench {
    private HostLaunchCostBench() {}

    private static final String FAKE_CUBLAS = """
            int cublasCreate_v2(void**h){static int x;*h=&x;return 0;}
            int cublasDestroy_v2(void*h){return 0;}
            int cublasSetStream_v2(void*h,void*s){return 0;}
            int cublasSetMathMode(void*h,int m){return 0;}
            const char* cublasGetStatusName(int s){return "CUBLAS_STATUS_FAKE";}
            int cublasGemmEx(void*h,int ta,int tb,int m,int n,int k,const void*al,const void*a,int at,int lda,
                             const void*b,int bt,int ldb,const void*be,void*c,int ct,int ldc,int cp,int algo){return 0;}
            int cublasGemmStridedBatchedEx(void){return 0;}
            """;

    public static void main(String[] args) throws Exception {
        Path dir = Files.createTempDirectory("qlora4j-fake-cuda");
        compile(dir, Path.of("src/test/java/dev/qlora4j/cuda/fake_libcuda.c"), "libcuda.so.1");
        Files.writeString(dir.resolve("fake_cublas.c"), FAKE_CUBLAS);
        Files.writeString(dir.resolve("lt.c"), "int cublasLtFake(void){return 0;}\n");
        compile(dir, dir.resolve("fake_cublas.c"), "libcublas.so.13");
        compile(dir, dir.resolve("lt.c"), "libcublasLt.so.13");
        System.setProperty("java.library.path", dir.toString());   // CublasLocator searches it for libcublas
        FfmCudaDriver d = new FfmCudaDriver(dir.resolve("libcuda.so.1").toString());
        d.usePrimaryContext(0);
        PtxModules m = PtxModules.forCurrentContext(d);
        long stream = d.streamCreate(false);
        long buf = d.memAlloc(64);
        String suffix = args.length > 0 ? args[0] : "f32";   // a runtime string, as KernelTypes.act(...) is
        int iters = 1_000_000;

        // What the launchers do per call: name the kernel, look its handle up, pack the arguments, launch.
        // fill_f32 with n = 0 on one thread: the fake runs nothing, so only the binding's own work is timed.
        Runnable launch = () -> d.launchKernel(m.function("cast", "fill_" + suffix), Dim3.of(1), Dim3.of(1), 0,
                stream, KernelArgs.of().ptr(buf).f32(1f).i64(0).i32(3).i32(4).f32(0.5f).ptr(buf));
        long fill = m.function("cast", "fill_f32");
        Runnable launchOnly = () -> d.launchKernel(fill, Dim3.of(1), Dim3.of(1), 0, stream,
                KernelArgs.of().ptr(buf).f32(1f).i64(0).i32(3).i32(4).f32(0.5f).ptr(buf));
        Runnable lookup = () -> sink ^= m.function("cast", "fill_" + suffix);

        Cublas cublas = Cublas.create();
        cublas.setStream(stream);
        Runnable gemm = () -> cublas.gemmRowMajor(false, true, 2048, 16, 4096, 1f, buf, buf, Cublas.DataType.BF16, 0f,
                buf, Cublas.DataType.BF16);

        for (int round = 0; round < 3; round++) {   // the last round is the steady state (JIT done)
            System.out.printf(Locale.ROOT, "round %d: launch (lookup + args + cuLaunchKernel) %6.0f ns | launch, handle"
                            + " known %6.0f ns | function lookup %5.0f ns | cuBLAS gemmRowMajor %6.0f ns%n", round,
                    time(launch, iters), time(launchOnly, iters), time(lookup, iters), time(gemm, iters));
        }
        cublas.close();
        d.memFree(buf);
        d.streamDestroy(stream);
        if (sink == 42) System.out.println(MemorySegment.NULL);
    }

    private static long sink;

    private static double time(Runnable r, int iters) {
        for (int i = 0; i < iters / 10; i++) r.run();
        long t0 = System.nanoTime();
        for (int i = 0; i < iters; i++) r.run();
        return (System.nanoTime() - t0) / (double) iters;
    }

    private static void compile(Path dir, Path src, String lib) throws Exception {
        Process p = new ProcessBuilder("cc", "-O2", "-shared", "-fPIC", "-o", dir.resolve(lib).toString(), src.toString())
                .inheritIO().start();
        if (!p.waitFor(120, TimeUnit.SECONDS) || p.exitValue() != 0) throw new IllegalStateException("cc failed for " + src);
    }
}
