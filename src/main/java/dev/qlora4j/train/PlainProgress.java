package dev.qlora4j.train;

import java.io.PrintStream;
import java.util.Map;
import java.util.function.Supplier;

/**
 * Progress as plain lines, one per log_history entry ("step 50/200 | loss 2.1034 | lr 1.000e-04 |
 * ... | eta 0:03:10 | mem 3.1/4.0 GiB"), for output that is not a terminal.
 */
public final class PlainProgress implements ProgressReporter {
    private final PrintStream out;
    private final Supplier<String> memory;
    private long startStep, maxSteps, lastStep;
    private long startNanos;

    public PlainProgress(PrintStream out, Supplier<String> memory) {
        this.out = out;
        this.memory = memory;
    }

    @Override
    public void start(long step, long maxSteps) {
        this.startStep = step;
        this.lastStep = step;
        this.maxSteps = maxSteps;
        this.startNanos = System.nanoTime();
        out.println("training: step " + step + " of " + maxSteps);
    }

    @Override
    public void step(long step, double loss, double learningRate, double tokensPerSecond) {
        lastStep = step;
    }

    @Override
    public void log(Map<String, Object> entry) {
        long step = entry.get("step") instanceof Number n ? n.longValue() : lastStep;
        out.println(ProgressReporter.formatLine(step, maxSteps, entry, entry.containsKey("train_runtime") ? null : eta(step),
                memory == null ? null : memory.get()));
    }

    /** Remaining steps at the mean pace of this run's steps so far. */
    private String eta(long step) {
        long done = step - startStep;
        if (done <= 0) return null;
        double perStep = (System.nanoTime() - startNanos) / 1e9 / done;
        return ProgressReporter.duration((long) Math.ceil(perStep * Math.max(0, maxSteps - step)));
    }

    @Override
    public void message(String text) {
        out.println(text);
    }

    @Override
    public void close() {
        out.flush();
    }
}
