package dev.qlora4j.bench;

import dev.qlora4j.backend.AttentionResult;
import dev.qlora4j.backend.cuda.CudaBackend;
import dev.qlora4j.cuda.CudaDriver;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Locale;
import java.util.Random;

/**
 * Training attention (CudaBackend.attentionTrain / attentionBackward, causal, BF16 activations) timed for each
 * kernel family: tc (native/attention_tc.cu, tensor cores) and simt (native/attention_train.cu, float32 CUDA
 * cores), chosen with the system property qlora4j.attention.train. One line per family and direction: ms per
 * call (mean over the timed calls, synchronized before and after the loop) and effective TFLOP/s.
 *
 * <p>FLOPs (the flash-attention convention, causal: only the T(T+1)/2 visible pairs of each head count):
 * forward 4 B H D T(T+1)/2 (S = QK^T and PV, 2 FLOPs per multiply-add); backward 2.5 times that (the five
 * matmuls S, dP, dV, dK, dQ). At T 2048, H 32, D 128, B 1: 68.7 GFLOP forward, 171.9 backward. The tc backward
 * actually runs seven (its dQ kernel recomputes S and dP to avoid atomics), so its tensor-core rate is 1.4 times
 * the effective one. Targets on an H200: >= 150 TFLOP/s forward, >= 100 backward.
 *
 * <p>Run: java --enable-native-access=ALL-UNNAMED --add-modules jdk.incubator.vector -cp bench/target/benchmarks.jar
 * dev.qlora4j.bench.CudaAttentionTcReport [--seq 2048] [--batch 1] [--heads 32] [--kv-heads 32] [--dim 128]
 * [--window 0] [--iters 20] [--modes tc,simt]
 */
public final class CudaAttentionTcReport {
    private static final String MODE_PROPERTY = "qlora4j.attention.train";

    private CudaAttentionTcReport() {}

    public static void main(String[] args) {
        int seq = 2048, batch = 1, heads = 32, kvHeads = 32, dim = 128, window = 0, iters = 20;
        String modes = "tc,simt";
        for (int i = 0; i + 1 < args.length; i += 2) {
            String v = args[i + 1];
            switch (args[i]) {
                case "--seq" -> seq = Integer.parseInt(v);
                case "--batch" -> batch = Integer.parseInt(v);
                case "--heads" -> heads = Integer.parseInt(v);
                case "--kv-heads" -> kvHeads = Integer.parseInt(v);
                case "--dim" -> dim = Integer.parseInt(v);
                case "--window" -> window = Integer.parseInt(v);
                case "--iters" -> iters = Integer.parseInt(v);
                case "--modes" -> modes = v;
                default -> throw new IllegalArgumentException("unknown option " + args[i]
                        + "; use --seq --batch --heads --kv-heads --dim --window --iters --modes tc,simt");
            }
        }
        report(seq, batch, heads, kvHeads, dim, window, iters, modes);
    }

    private static void report(int seq, int batch, int heads, int kvHeads, int dim, int window, int iters, String modes) {
        if (!CudaDriver.isAvailable()) {
            System.err.println("no GPU: " + CudaDriver.unavailableReason());
            System.exit(2);
        }
        double pairs = window > 0 ? visiblePairs(seq, window) : seq * (seq + 1.0) / 2;
        double fwdFlop = 4.0 * batch * heads * dim * pairs, bwdFlop = 2.5 * fwdFlop;
        float scale = (float) (1 / Math.sqrt(dim));
        try (CudaBackend b = CudaBackend.create(0, DType.BF16, false)) {
            System.out.printf(Locale.ROOT, "%s: training attention BF16, B=%d T=%d H=%d/%d D=%d window=%d, causal;"
                            + " %.1f GFLOP forward, %.1f backward (effective)%n", b.context().properties().name(), batch,
                    seq, heads, kvHeads, dim, window, fwdFlop / 1e9, bwdFlop / 1e9);
            Random r = new Random(7);
            int n = batch * seq;
            Tensor q = b.upload(random(r, n, heads * dim)), k = b.upload(random(r, n, kvHeads * dim));
            Tensor v = b.upload(random(r, n, kvHeads * dim)), g = b.upload(random(r, n, heads * dim));
            String saved = System.getProperty(MODE_PROPERTY);
            try {
                for (String mode : modes.split(",")) {
                    System.setProperty(MODE_PROPERTY, mode.trim());
                    try (AttentionResult fwd = b.attentionTrain(q, k, v, null, batch, heads, kvHeads, dim, scale, window)) {
                        double fwdMs = time(b, iters,   // closed at once: the next call reuses the same blocks
                                () -> b.attentionTrain(q, k, v, null, batch, heads, kvHeads, dim, scale, window).close());
                        double bwdMs = time(b, iters, () -> {
                            for (Tensor t : b.attentionBackward(q, k, v, null, fwd, g, batch, heads, kvHeads, dim, scale,
                                    window)) t.close();
                        });
                        System.out.printf(Locale.ROOT, "%-5s forward  %8.3f ms  %7.1f TFLOP/s%n", mode, fwdMs,
                                fwdFlop / (fwdMs * 1e9));
                        System.out.printf(Locale.ROOT, "%-5s backward %8.3f ms  %7.1f TFLOP/s%n", mode, bwdMs,
                                bwdFlop / (bwdMs * 1e9));
                    }
                }
            } finally {
                if (saved == null) System.clearProperty(MODE_PROPERTY);
                else System.setProperty(MODE_PROPERTY, saved);
                for (Tensor t : new Tensor[] {q, k, v, g}) t.close();
            }
        }
    }

    /** Mean ms per call over iters calls after 3 warm-up calls. */
    private static double time(CudaBackend b, int iters, Runnable call) {
        for (int i = 0; i < 3; i++) call.run();
        b.synchronize();
        long t0 = System.nanoTime();
        for (int i = 0; i < iters; i++) call.run();
        b.synchronize();
        return (System.nanoTime() - t0) / 1e6 / iters;
    }

    /** Pairs (t, s) with t - window < s <= t, t < seq. */
    private static double visiblePairs(int seq, int window) {
        double p = 0;
        for (int t = 0; t < seq; t++) p += Math.min(t + 1, window);
        return p;
    }

    private static Tensor random(Random r, int rows, int cols) {
        float[] x = new float[rows * cols];
        for (int i = 0; i < x.length; i++) x[i] = (float) r.nextGaussian();
        return Tensor.fromFloats(x, DType.BF16, rows, cols);
    }
}
