package dev.qlora4j.train;

import me.tongfei.progressbar.ConsoleProgressBarConsumer;
import me.tongfei.progressbar.ProgressBar;
import me.tongfei.progressbar.ProgressBarBuilder;
import me.tongfei.progressbar.ProgressBarStyle;

import java.io.PrintStream;
import java.time.Duration;
import java.util.Locale;
import java.util.Map;
import java.util.function.Supplier;

/**
 * A terminal progress bar (me.tongfei:progressbar) over optimizer steps: elapsed time and ETA from
 * the bar, and as its message the last step's loss, the learning rate, tokens/s and the memory
 * field. Logged entries (evaluations, summaries) are printed as lines above the bar.
 */
public final class TerminalProgress implements ProgressReporter {
    private final PrintStream out;
    private final Supplier<String> memory;
    private ProgressBar bar;
    private long maxSteps;

    public TerminalProgress(PrintStream out, Supplier<String> memory) {
        this.out = out;
        this.memory = memory;
    }

    @Override
    public void start(long step, long maxSteps) {
        this.maxSteps = maxSteps;
        bar = new ProgressBarBuilder()
                .setTaskName("train")
                .setInitialMax(maxSteps)
                .setStyle(ProgressBarStyle.ASCII)
                .setConsumer(new ConsoleProgressBarConsumer(out))
                .setUpdateIntervalMillis(500)
                .startsFrom(step, Duration.ZERO)
                .build();
    }

    @Override
    public void step(long step, double loss, double learningRate, double tokensPerSecond) {
        if (bar == null) return;
        String mem = memory == null ? null : memory.get();
        bar.stepTo(step);
        bar.setExtraMessage(String.format(Locale.ROOT, "loss %.4f lr %.2e tok/s %s%s", loss, learningRate,
                ProgressReporter.rate(tokensPerSecond), mem == null || mem.isBlank() ? "" : " " + mem));
    }

    @Override
    public void log(Map<String, Object> entry) {
        // train logs are what the bar already shows; evaluations and the summary get their own line
        if (!entry.containsKey("eval_loss") && !entry.containsKey("train_runtime")) return;
        long step = entry.get("step") instanceof Number n ? n.longValue() : 0;
        message(ProgressReporter.formatLine(step, maxSteps, entry, null, memory == null ? null : memory.get()));
    }

    @Override
    public void message(String text) {
        // a newline first keeps the message off the bar's line (the bar redraws itself after)
        out.print("\r\n" + text + "\n");
        out.flush();
        if (bar != null) bar.refresh();
    }

    @Override
    public void close() {
        if (bar != null) bar.close();
        bar = null;
    }
}
