package dev.qlora4j.bench;

import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.backend.cuda.CudaContext;
import dev.qlora4j.backend.cuda.CudaQuantOps;
import dev.qlora4j.cuda.CaptureMode;
import dev.qlora4j.cuda.Cublas;
import dev.qlora4j.cuda.CudaDriver;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;

/**
 * One benchmark case on the GPU: random BF16 weights [out, in] quantized to NF4 on the GPU (blocksize 64,
 * compute BF16, with or without double quantization), the same weights in BF16 for cuBLAS, and x BF16
 * [rows, in]. Several copies of each weight are rotated so repeated launches do not run from the 50 MB L2.
 * Work is timed as CUDA graphs of {@link #LAUNCHES} back-to-back launches, replayed between CUDA events.
 */
final class CudaNf4BenchWorkload implements AutoCloseable {
    static final int LAUNCHES = 100;
    /**
     * At least this much weight data in rotation (default 200 MiB: 4x L2). -Dqlora4j.bench.rotateMiB=0 keeps one copy
     * of each weight, so that a weight smaller than L2 runs from L2: how fast the kernel is when DRAM is not the limit.
     */
    static final long ROTATE_BYTES = Long.getLong("qlora4j.bench.rotateMiB", 200) << 20;

    final CudaContext ctx;
    final int out, in;
    final boolean doubleQuant;
    final List<QuantizedWeight> nf4 = new ArrayList<>();
    final List<Tensor> bf16 = new ArrayList<>();
    private final SplittableRandom rnd = new SplittableRandom(42);
    private int rows;
    private Tensor x;            // BF16 [rows, in]
    private long nf4Graph, cublasGraph;
    private final List<Long> graphs = new ArrayList<>();

    CudaNf4BenchWorkload(CudaContext ctx, int out, int in, int rows, boolean doubleQuant) {
        this.ctx = ctx;
        this.out = out;
        this.in = in;
        this.doubleQuant = doubleQuant;
        long nf4Bytes = (long) out * in / 2;
        int minCopies = ROTATE_BYTES == 0 ? 1 : 2;
        int nf4Copies = (int) Math.max(minCopies, Math.min(16, (ROTATE_BYTES + nf4Bytes - 1) / nf4Bytes));
        int bf16Copies = (int) Math.max(minCopies, Math.min(16, (ROTATE_BYTES + 2L * out * in - 1) / (2L * out * in)));
        for (int c = 0; c < Math.max(nf4Copies, bf16Copies); c++) {
            // Generated on the GPU (hash-based normal, std 0.02): host generation of 8192 x 28672
            // weights took minutes of the lease.
            Tensor w = dev.qlora4j.backend.cuda.RandomKernels.normal(ctx, DType.BF16, 1000L + c, 0f, 0.02f, out, in);
            // in the layout the backend gives its weights (-Dqlora4j.nf4.layout=rows|tiles, and the GEMV variant)
            if (c < nf4Copies) {
                nf4.add(CudaQuantOps.arranged(ctx, CudaQuantOps.quantize4bit(ctx, w, QuantType.NF4, 64, doubleQuant, DType.BF16)));
            }
            if (c < bf16Copies) bf16.add(w);
            else w.close();
        }
        setRows(rows);
    }

    int rows() { return rows; }

    /** A new x with this many rows; the captured graphs of the previous x are dropped. */
    void setRows(int rows) {
        ctx.synchronize();
        dropGraphs();
        if (x != null) x.close();
        this.rows = rows;
        x = ctx.upload(randomBf16(rnd, rows, in));
        ctx.synchronize();
    }

    private void dropGraphs() {
        for (long g : graphs) ctx.driver().graphExecDestroy(g);
        graphs.clear();
        nf4Graph = 0;
        cublasGraph = 0;
    }

    /** Packed codes + absmax (+ nested statistics and tables): the bytes one 4-bit matmul must read. */
    long quantizedBytes() { return nf4.get(0).deviceBytes(); }

    /** Random BF16 weights: sign, exponents around 2^-6, random mantissas (no zeros). */
    static Tensor randomBf16(SplittableRandom rnd, int r, int c) {
        short[] bits = new short[Math.toIntExact((long) r * c)];
        for (int i = 0; i < bits.length; i++) {
            int v = rnd.nextInt();
            int sign = v & 0x8000;
            int exp = 117 + ((v >>> 16) & 7);        // 2^-10 .. 2^-3
            bits[i] = (short) (sign | (exp << 7) | ((v >>> 8) & 0x7F));
        }
        return new Tensor(new dev.qlora4j.tensor.HostStorage(MemorySegment.ofArray(bits), null), DType.BF16, true, r, c);
    }

    /** System property of the decode GEMV variant (Quant4bitKernels.GEMV_VARIANT_PROPERTY): v2, v2reg, hybrid, stream or mma. */
    static final String GEMV_PROPERTY = "qlora4j.nf4.gemv";
    /** System property of the hybrid variant's register-decode period (Quant4bitKernels.HYBRID_PERIOD_PROPERTY). */
    static final String HYBRID_PERIOD_PROPERTY = "qlora4j.nf4.hybridPeriod";

    /** Captures LAUNCHES 4-bit linears (rotating the weight copies) into a graph, with the default GEMV variant. */
    long nf4Graph() {
        if (nf4Graph == 0) nf4Graph = capture(i -> CudaQuantOps.linear(ctx, x, nf4.get(i % nf4.size()), null).close());
        return nf4Graph;
    }

    /**
     * As {@link #nf4Graph()} with the decode GEMV variant chosen for the capture: "v2code", "v2", "v2reg", "hybrid", "hybrid:P" (every P-th
     * chunk decoded in registers), "stream" or "mma". The launcher reads the properties at each call, so the
     * captured kernels are that variant's. Not cached.
     */
    long nf4Graph(String variant) {
        int colon = variant.indexOf(':');
        String name = colon < 0 ? variant : variant.substring(0, colon);
        String period = colon < 0 ? null : variant.substring(colon + 1);
        String before = System.getProperty(GEMV_PROPERTY);
        String beforePeriod = System.getProperty(HYBRID_PERIOD_PROPERTY);
        System.setProperty(GEMV_PROPERTY, name);
        if (period != null) System.setProperty(HYBRID_PERIOD_PROPERTY, period);
        try {
            return capture(i -> CudaQuantOps.linear(ctx, x, nf4.get(i % nf4.size()), null).close());
        } finally {
            restore(GEMV_PROPERTY, before);
            restore(HYBRID_PERIOD_PROPERTY, beforePeriod);
        }
    }

    private static void restore(String key, String value) {
        if (value == null) System.clearProperty(key);
        else System.setProperty(key, value);
    }

    /** Captures LAUNCHES cuBLAS BF16 linears of the same shape into a graph. */
    long cublasGraph() {
        if (cublasGraph == 0) {
            cublasGraph = capture(i -> {
                try (Tensor y = ctx.empty(DType.BF16, rows, out)) {
                    ctx.cublas().linear(rows, out, in, CudaContext.ptr(x), CudaContext.ptr(bf16.get(i % bf16.size())),
                            Cublas.DataType.BF16, CudaContext.ptr(y), Cublas.DataType.BF16);
                }
            });
        }
        return cublasGraph;
    }

    private long capture(java.util.function.IntConsumer op) {
        for (int i = 0; i < 3; i++) op.accept(i);  // warm: modules, cuBLAS handle, allocator blocks, GEMV scratch
        ctx.synchronize();
        CudaDriver d = ctx.driver();
        d.streamBeginCapture(ctx.stream(), CaptureMode.RELAXED);
        long graph;
        try {
            for (int i = 0; i < LAUNCHES; i++) op.accept(i);
        } finally {
            graph = d.streamEndCapture(ctx.stream());  // ends the capture even when an op failed
        }
        long exec = d.graphInstantiate(graph);
        d.graphDestroy(graph);
        graphs.add(exec);
        return exec;
    }

    /** Replays the graph once (LAUNCHES ops) and waits. */
    void replay(long graphExec) {
        ctx.driver().graphLaunch(graphExec, ctx.stream());
        ctx.synchronize();
    }

    /** Median microseconds per op over `reps` timed replays (after two warm-up replays). */
    double microsPerOp(long graphExec, int reps) {
        CudaDriver d = ctx.driver();
        long start = d.eventCreate(true), end = d.eventCreate(true);
        try {
            replay(graphExec);
            replay(graphExec);
            double[] t = new double[reps];
            for (int r = 0; r < reps; r++) {
                d.eventRecord(start, ctx.stream());
                d.graphLaunch(graphExec, ctx.stream());
                d.eventRecord(end, ctx.stream());
                d.eventSynchronize(end);
                t[r] = d.eventElapsedMillis(start, end) * 1000.0 / LAUNCHES;
            }
            Arrays.sort(t);
            return t[reps / 2];
        } finally {
            d.eventDestroy(start);
            d.eventDestroy(end);
        }
    }

    @Override
    public void close() {
        ctx.synchronize();
        dropGraphs();
        for (QuantizedWeight w : nf4) w.close();
        for (Tensor t : bf16) t.close();
        x.close();
    }

    /** "4096x11008" -> {in, out}: the shape strings name in_features x out_features, as the issue does. */
    static int[] parseShape(String s) {
        String[] p = s.toLowerCase().split("x");
        if (p.length != 2) throw new IllegalArgumentException("shape must be IN x OUT like 4096x11008, got " + s);
        return new int[] {Integer.parseInt(p[0].trim()), Integer.parseInt(p[1].trim())};
    }

    /** The device-to-device copy bandwidth (bytes read + written per second) of a 1 GiB copy, median of 5. */
    static double copyBandwidth(CudaContext ctx) {
        long bytes = 1L << 30;
        CudaDriver d = ctx.driver();
        try (Tensor a = ctx.empty(DType.U8, (int) bytes); Tensor b = ctx.empty(DType.U8, (int) bytes)) {
            d.memsetD8Async(CudaContext.ptr(a), (byte) 0x5A, bytes, ctx.stream());
            long start = d.eventCreate(true), end = d.eventCreate(true);
            double[] t = new double[5];
            for (int r = 0; r < 5; r++) {
                d.eventRecord(start, ctx.stream());
                d.memcpyDtoDAsync(CudaContext.ptr(b), CudaContext.ptr(a), bytes, ctx.stream());
                d.eventRecord(end, ctx.stream());
                d.eventSynchronize(end);
                t[r] = d.eventElapsedMillis(start, end) / 1000.0;
            }
            d.eventDestroy(start);
            d.eventDestroy(end);
            Arrays.sort(t);
            return 2.0 * bytes / t[2];
        }
    }

}
