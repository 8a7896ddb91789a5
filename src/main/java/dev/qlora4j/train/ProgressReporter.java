package dev.qlora4j.train;

import java.io.PrintStream;
import java.util.Map;
import java.util.function.Supplier;

/**
 * Where the trainer reports progress: a terminal progress bar ({@link TerminalProgress}) or
 * plain log lines ({@link PlainProgress}) when output is not a terminal (CI logs, files).
 */
public interface ProgressReporter extends AutoCloseable {
    /** Training (re)starts at {@code step} of {@code maxSteps}. */
    void start(long step, long maxSteps);

    /** After every optimizer step: the step's own mean loss, its learning rate, tokens/s so far. */
    void step(long step, double loss, double learningRate, double tokensPerSecond);

    /** A log_history entry (train log, evaluation, final summary) as it is written to metrics.jsonl. */
    void log(Map<String, Object> entry);

    /** A notice for the user (checkpoint written, data warnings ...). */
    void message(String text);

    @Override
    void close();

    /** Reports nothing. */
    ProgressReporter NONE = new ProgressReporter() {
        @Override public void start(long step, long maxSteps) { }
        @Override public void step(long step, double loss, double learningRate, double tokensPerSecond) { }
        @Override public void log(Map<String, Object> entry) { }
        @Override public void message(String text) { }
        @Override public void close() { }
    };

    /**
     * A progress bar when standard output is an interactive terminal, else plain lines on
     * {@code out}. {@code memory} (may be null) adds a field such as "mem 3.1/4.0 GiB".
     */
    static ProgressReporter auto(PrintStream out, Supplier<String> memory) {
        java.io.Console c = System.console();
        boolean terminal = c != null && c.isTerminal();
        return terminal ? new TerminalProgress(out, memory) : new PlainProgress(out, memory);
    }

    /** "1.23e-04"-style learning rate, "2.3456" loss, "12.3k" tokens/s: shared by both reporters. */
    static String formatLine(long step, long maxSteps, Map<String, Object> e, String eta, String mem) {
        StringBuilder sb = new StringBuilder();
        sb.append("step ").append(step).append('/').append(maxSteps);
        if (e.get("loss") instanceof Number n) sb.append(" | loss ").append(String.format(java.util.Locale.ROOT, "%.4f", n.doubleValue()));
        if (e.get("eval_loss") instanceof Number n) sb.append(" | eval_loss ").append(String.format(java.util.Locale.ROOT, "%.4f", n.doubleValue()));
        if (e.get("learning_rate") instanceof Number n) sb.append(" | lr ").append(String.format(java.util.Locale.ROOT, "%.3e", n.doubleValue()));
        if (e.get("grad_norm") instanceof Number n) sb.append(" | grad_norm ").append(String.format(java.util.Locale.ROOT, "%.4f", n.doubleValue()));
        if (e.get("tokens_per_second") instanceof Number n) sb.append(" | tok/s ").append(rate(n.doubleValue()));
        if (e.get("epoch") instanceof Number n) sb.append(" | epoch ").append(String.format(java.util.Locale.ROOT, "%.2f", n.doubleValue()));
        if (e.get("train_loss") instanceof Number n) sb.append(" | train_loss ").append(String.format(java.util.Locale.ROOT, "%.4f", n.doubleValue()));
        if (e.get("train_runtime") instanceof Number n) sb.append(" | runtime ").append(duration((long) n.doubleValue()));
        if (eta != null) sb.append(" | eta ").append(eta);
        if (mem != null && !mem.isBlank()) sb.append(" | ").append(mem);
        return sb.toString();
    }

    static String rate(double perSecond) {
        if (!(perSecond >= 0) || Double.isInfinite(perSecond)) return "-";
        if (perSecond >= 1e6) return String.format(java.util.Locale.ROOT, "%.2fM", perSecond / 1e6);
        if (perSecond >= 1e4) return String.format(java.util.Locale.ROOT, "%.1fk", perSecond / 1e3);
        return String.format(java.util.Locale.ROOT, "%.0f", perSecond);
    }

    static String duration(long seconds) {
        return String.format(java.util.Locale.ROOT, "%d:%02d:%02d", seconds / 3600, (seconds / 60) % 60, seconds % 60);
    }
}
