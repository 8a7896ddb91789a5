package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.CudaDriver;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.function.LongSupplier;

/**
 * Per-op GPU time of the CUDA backend, opt in with {@code -Dqlora4j.cuda.profile=true}: a timing event is
 * recorded on the stream before and after each op ({@link #begin} / {@link #end}), nothing waits per op, and
 * the pairs are resolved ({@link #resolve}: one wait on the last event) when the backend synchronizes.
 *
 * <p>What a row means: the stream time from the op's first launch to its last. When the GPU is ahead of the
 * host (launch-bound), that includes the idle time while the host enqueues the op's kernels, so the host
 * column (System.nanoTime around the enqueue) is printed beside it; GPU ms close to host ms means the op is
 * host-bound. Time between ops (host work in the model, the optimizer outside the backend) is in no row.
 *
 * <p>Names with a '/' ("linearQuantizedBackwardInput/dequantize") are parts of an op timed inside it: listed,
 * but not added to the total. Events are created once and reused after each resolve. Not thread-safe, like
 * the backend.
 */
public final class OpProfiler implements AutoCloseable {
    public static final String PROPERTY = "qlora4j.cuda.profile";
    /** Pending pairs before a resolve is forced (a wait mid-step; a Llama-7B step records a few thousand). */
    static final int MAX_PENDING = 1 << 15;

    private final CudaDriver driver;
    private final long stream;
    private long[] events = new long[256];   // timing events, created lazily, reused after each resolve
    private int created;                     // events[0, created) exist
    private int used;                        // events[0, used) are recorded since the last resolve
    private String[] pendingOp = new String[128];
    private int[] pendingStart = new int[128];
    private int[] pendingEnd = new int[128];
    private long[] pendingHostNanos = new long[128];
    private int pending;
    private int open;                        // ops begun and not ended: their start events must not be reused
    private long[] startNanos = new long[256];   // System.nanoTime at begin, by start event
    private final Map<String, Stat> stats = new LinkedHashMap<>();
    private final LongSupplier allocatorPeak;  // the allocator's peak bytes (host bookkeeping: reading it never waits)
    private long peakSeen;                   // the allocator peak at the last op end
    private String peakOp;                   // the op during which the allocator peak last rose, null when none did

    /** Calls, GPU ms and host ms summed over the calls of one op name. */
    public record Stat(long calls, double gpuMillis, double hostMillis) {}

    /** allocatorPeak: the device allocator's peak allocated bytes, read at each op end to name the op that set it. */
    public OpProfiler(CudaDriver driver, long stream, LongSupplier allocatorPeak) {
        this.driver = driver;
        this.stream = stream;
        this.allocatorPeak = allocatorPeak;
        this.peakSeen = allocatorPeak.getAsLong();
    }

    /** A profiler when -Dqlora4j.cuda.profile=true, else null (the backend then only null-checks). */
    static OpProfiler fromProperty(CudaDriver driver, long stream, LongSupplier allocatorPeak) {
        return Boolean.parseBoolean(System.getProperty(PROPERTY, "false").trim())
                ? new OpProfiler(driver, stream, allocatorPeak) : null;
    }

    /**
     * Records a start event; pass the returned mark to {@link #end}, or to {@link #cancel} when the op turns out to
     * record nothing. A mark neither ended nor cancelled holds {@link #resolve} off until {@link #reset}.
     */
    public int begin() {
        if (pending >= MAX_PENDING) resolve();
        open++;
        int i = record();
        startNanos[i] = System.nanoTime();
        return i;
    }

    /** Closes the op begun at mark without recording it (e.g. a path that declined before doing any work). */
    public void cancel(int mark) {
        open = Math.max(0, open - 1);
    }

    /** Records the end event of the op begun at mark and queues the pair under op's name. */
    public void end(String op, int mark) {
        long host = System.nanoTime() - startNanos[mark];
        open = Math.max(0, open - 1);
        int e = record();
        if (pending == pendingOp.length) {
            int n = pending * 2;
            pendingOp = Arrays.copyOf(pendingOp, n);
            pendingStart = Arrays.copyOf(pendingStart, n);
            pendingEnd = Arrays.copyOf(pendingEnd, n);
            pendingHostNanos = Arrays.copyOf(pendingHostNanos, n);
        }
        pendingOp[pending] = op;
        pendingStart[pending] = mark;
        pendingEnd[pending] = e;
        pendingHostNanos[pending] = host;
        pending++;
        long peak = allocatorPeak.getAsLong();
        if (peak > peakSeen) peakOp = op;   // the peak rose inside this op (an allocation between ops is seen here too)
        peakSeen = peak;
    }

    private int record() {
        if (used == events.length) {
            events = Arrays.copyOf(events, used * 2);
            startNanos = Arrays.copyOf(startNanos, used * 2);
        }
        if (used == created) events[created++] = driver.eventCreate(true);
        driver.eventRecord(events[used], stream);
        return used++;
    }

    /**
     * Waits for the last recorded event, adds every queued pair's elapsed time to its op, frees the events.
     * Does nothing while an op is open (a synchronize inside a timed region): its start event stays recorded.
     */
    public void resolve() {
        if (used == 0 || open > 0) return;
        driver.eventSynchronize(events[used - 1]);
        for (int p = 0; p < pending; p++) {
            float ms = driver.eventElapsedMillis(events[pendingStart[p]], events[pendingEnd[p]]);
            Stat s = stats.get(pendingOp[p]);
            double host = pendingHostNanos[p] / 1e6;
            stats.put(pendingOp[p], s == null ? new Stat(1, ms, host)
                    : new Stat(s.calls + 1, s.gpuMillis + ms, s.hostMillis + host));
        }
        pending = 0;
        used = 0;
    }

    /** Forgets the accumulated times (call after warm-up); events already queued are resolved and dropped. */
    public void reset() {
        open = 0;   // drops the marks of ops an exception left open
        resolve();
        stats.clear();
        peakSeen = allocatorPeak.getAsLong();
        peakOp = null;
    }

    /**
     * The op during which the allocator's peak last rose since {@link #reset} (call reset after resetting the
     * allocator's peak), or null: where to look when a step's peak memory is too high.
     */
    public String peakOp() { return peakOp; }

    /** The accumulated stats by op name, in first-seen order (resolves pending pairs first). */
    public Map<String, Stat> stats() {
        resolve();
        return new LinkedHashMap<>(stats);
    }

    /**
     * A table of the ops sorted by GPU time: op, calls per step, GPU ms per step, % of stepMillis, host ms per
     * step; then the ops' total and the part of the step no op covers.
     */
    public String table(int steps, double stepMillis) {
        Map<String, Stat> all = stats();
        List<Map.Entry<String, Stat>> rows = new ArrayList<>(all.entrySet());
        rows.sort((a, b) -> Double.compare(b.getValue().gpuMillis, a.getValue().gpuMillis));
        StringBuilder sb = new StringBuilder();
        sb.append(String.format(Locale.ROOT, "%-44s %9s %11s %7s %12s%n", "op", "calls/step", "GPU ms/step", "% step",
                "host ms/step"));
        double total = 0, totalHost = 0;
        for (Map.Entry<String, Stat> r : rows) {
            Stat s = r.getValue();
            double ms = s.gpuMillis / steps;
            boolean part = r.getKey().contains("/");
            if (!part) {
                total += ms;
                totalHost += s.hostMillis / steps;
            }
            sb.append(String.format(Locale.ROOT, "%-44s %9.1f %11.2f %7.1f %12.2f%n", (part ? "  " : "") + r.getKey(),
                    s.calls / (double) steps, ms, 100 * ms / stepMillis, s.hostMillis / steps));
        }
        sb.append(String.format(Locale.ROOT, "%-44s %9s %11.2f %7.1f %12.2f%n", "all ops (parts '/' not added)", "", total,
                100 * total / stepMillis, totalHost));
        sb.append(String.format(Locale.ROOT, "%-44s %9s %11.2f %7.1f%n", "step time in no op", "", stepMillis - total,
                100 * (stepMillis - total) / stepMillis));
        if (peakOp != null) {
            sb.append(String.format(Locale.ROOT, "allocator peak %.3f GiB, last raised in %s%n", peakSeen / (double) (1L << 30), peakOp));
        }
        return sb.toString();
    }

    @Override
    public void close() {
        for (int i = 0; i < created; i++) driver.eventDestroy(events[i]);
        created = 0;
        used = 0;
        pending = 0;
    }
}
