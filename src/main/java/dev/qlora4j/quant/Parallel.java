package dev.qlora4j.quant;

import java.util.stream.IntStream;

/** Splits an index range over the common fork-join pool; small ranges run on the calling thread. */
final class Parallel {
    private Parallel() {}

    interface RangeBody {
        void run(int from, int to);
    }

    /**
     * Runs body over [0, n) in contiguous chunks of at least {@code grain} indices. The chunking never
     * changes results: every index is processed by exactly one call and bodies write disjoint outputs.
     */
    static void forRange(int n, int grain, RangeBody body) {
        if (n <= 0) return;
        int threads = Runtime.getRuntime().availableProcessors();
        int chunks = (int) Math.min((long) threads * 4, Math.max(1, n / Math.max(1, grain)));
        if (chunks <= 1) {
            body.run(0, n);
            return;
        }
        int per = (n + chunks - 1) / chunks;
        int realChunks = (n + per - 1) / per;
        IntStream.range(0, realChunks).parallel().forEach(c -> body.run(c * per, Math.min(n, (c + 1) * per)));
    }
}
