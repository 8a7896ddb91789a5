package dev.qlora4j.bench;

import dev.qlora4j.backend.cuda.CudaContext;
import dev.qlora4j.cuda.CudaDriver;
import java.util.Locale;

/**
 * The NF4 benchmark as one table: for each shape (in x out), rows of x and double quantization, the NF4
 * linear's time per op, its effective bandwidth (bytes of packed codes + statistics per op / time) as GB/s
 * and as a share of the measured device-to-device copy bandwidth, cuBLAS BF16's time on the same shape,
 * and the speedup over cuBLAS; rows <= 16 get one line per decode GEMV variant (column gemv: hybrid, the
 * default: native/nf4_gemv.cu; v2reg, the same kernel decoding in registers; hybrid and hybrid:P, every P-th chunk
 * decoded in registers; stream, pair-table decode only; mma, the stream-K kernel), larger rows one line ("-": dequantize + cuBLAS). Run: java --enable-native-access=ALL-UNNAMED -cp
 * bench/target/benchmarks.jar dev.qlora4j.bench.CudaNf4Report [shapes comma-separated] [rows comma-separated]
 * [variants comma-separated, default v2,v2reg,hybrid,stream,mma] [absmax forms: n (float32), y (double quantization)
 * or ny, the default].
 */
public final class CudaNf4Report {
    /** The decode GEMV variants compared on rows <= 16 (system properties qlora4j.nf4.gemv, qlora4j.nf4.hybridPeriod). */
    private static final String DEFAULT_VARIANTS = "v2,v2reg,hybrid,stream,mma";

    private CudaNf4Report() {}

    public static void main(String[] args) {
        String[] shapes = (args.length > 0 ? args[0] : "4096x11008,11008x4096,8192x28672").split(",");
        String[] rowList = (args.length > 1 ? args[1] : "1,2,4,8,16,4096").split(",");
        String[] decodeVariants = (args.length > 2 ? args[2] : DEFAULT_VARIANTS).split(",");
        // which absmax forms: n (float32), y (double quantization) or both (the default), e.g. to profile one
        String dqForms = args.length > 3 ? args[3] : "ny";
        if (!CudaDriver.isAvailable()) {
            System.err.println("no GPU: " + CudaDriver.unavailableReason());
            System.exit(2);
        }
        try (CudaContext ctx = new CudaContext(CudaDriver.get(), 0)) {
            double copy = CudaNf4BenchWorkload.copyBandwidth(ctx);
            System.out.printf(Locale.ROOT, "%s, %d SMs; device-to-device copy %.0f GB/s (read + write)%n",
                    ctx.properties().name(), ctx.properties().multiprocessorCount(), copy / 1e9);
            System.out.printf(Locale.ROOT, "%-12s %5s %3s %8s %10s %9s %7s %11s %9s %8s%n",
                    "in x out", "rows", "dq", "gemv", "nf4 us", "GB/s", "%copy", "cublas us", "cub GB/s", "speedup");
            for (String shape : shapes) {
                int[] s = CudaNf4BenchWorkload.parseShape(shape);
                for (boolean dq : new boolean[] {false, true}) {
                    if (dqForms.indexOf(dq ? 'y' : 'n') < 0) continue;
                    try (CudaNf4BenchWorkload w = new CudaNf4BenchWorkload(ctx, s[1], s[0], 1, dq)) {
                        for (String r : rowList) {
                            int rows = Integer.parseInt(r.trim());
                            w.setRows(rows);
                            double tc = w.microsPerOp(w.cublasGraph(), 21);
                            // bytes that must move: the weight, plus x and y (negligible for decode)
                            double io = 2.0 * rows * ((double) s[0] + s[1]);
                            double gbc = (2.0 * s[0] * s[1] + io) / (tc * 1e3);
                            // decode rows: each GEMV variant; prefill: the cuBLAS path
                            String[] variants = rows <= 16 ? decodeVariants : new String[] {"-"};
                            for (String v : variants) {
                                double tq = w.microsPerOp(v.equals("-") ? w.nf4Graph() : w.nf4Graph(v.trim()), 21);
                                double gbq = (w.quantizedBytes() + io) / (tq * 1e3);
                                System.out.printf(Locale.ROOT, "%-12s %5d %3s %8s %10.2f %9.0f %6.1f%% %11.2f %9.0f %7.2fx%n",
                                        shape, rows, dq ? "y" : "n", v, tq, gbq, 100 * gbq * 1e9 / copy, tc, gbc, tc / tq);
                            }
                        }
                    }
                }
            }
        }
    }
}
