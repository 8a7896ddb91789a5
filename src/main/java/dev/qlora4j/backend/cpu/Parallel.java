package dev.qlora4j.backend.cpu;

import java.util.concurrent.ForkJoinPool;
import java.util.concurrent.ForkJoinTask;

/**
 * The CPU backend's worker threads: splits a range of independent work units (rows, weight
 * blocks, attention heads) into contiguous chunks and runs them on a private ForkJoinPool.
 * Small jobs run on the calling thread, because forking costs microseconds that tiny models
 * (the CI workload) would otherwise pay on every op.
 */
final class Parallel implements AutoCloseable {
    /** Chunks per thread: a few, so that uneven chunks (the last one, a slow core) balance out. */
    private static final int CHUNKS_PER_THREAD = 4;

    /** Below this many estimated floating-point operations a job runs inline. */
    static final long INLINE_WORK = 1L << 15;

    /** A body over the units [lo, hi). */
    @FunctionalInterface
    interface RangeBody {
        void run(int lo, int hi);
    }

    private final int threads;
    private final ForkJoinPool pool;

    Parallel(int threads) {
        if (threads < 1) {
            throw new IllegalArgumentException("thread count must be at least 1, got " + threads);
        }
        this.threads = threads;
        this.pool = threads == 1 ? null : new ForkJoinPool(threads);
    }

    int threads() { return threads; }

    /**
     * Runs body over [0, units) split into contiguous chunks. workPerUnit estimates the flops of
     * one unit; it decides whether forking pays off and how many chunks to make.
     */
    void forRange(int units, long workPerUnit, RangeBody body) {
        if (units <= 0) return;
        long total = (long) units * Math.max(1, workPerUnit);
        int chunks = (int) Math.min(Math.min(units, (long) threads * CHUNKS_PER_THREAD),
                Math.max(1, total / INLINE_WORK));
        if (pool == null || chunks <= 1) {
            body.run(0, units);
            return;
        }
        @SuppressWarnings("unchecked")
        ForkJoinTask<Void>[] tasks = new ForkJoinTask[chunks];
        for (int c = 0; c < chunks; c++) {
            int lo = (int) ((long) units * c / chunks);
            int hi = (int) ((long) units * (c + 1) / chunks);
            tasks[c] = ForkJoinTask.adapt(() -> body.run(lo, hi), null);
        }
        if (ForkJoinTask.inForkJoinPool() && ForkJoinTask.getPool() == pool) {
            ForkJoinTask.invokeAll(tasks);
        } else {
            pool.invoke(ForkJoinTask.adapt(() -> ForkJoinTask.invokeAll(tasks)));
        }
    }

    @Override
    public void close() {
        if (pool != null) pool.shutdown();
    }
}
