package dev.qlora4j.train;

import java.io.BufferedWriter;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.List;
import java.util.Map;

/**
 * output_dir/metrics.jsonl: one JSON object per log_history entry (train logs, evaluations, the
 * final summary), written and flushed line by line so that a crash loses at most the line being
 * written. On resume the file is rewritten from the checkpoint's log_history, dropping lines of
 * steps that the resumed run will redo.
 */
final class MetricsLog implements AutoCloseable {
    static final String FILE = "metrics.jsonl";

    private final Path file;
    private BufferedWriter out;

    /** Starts the file with {@code history} (empty for a fresh run), replacing what was there. */
    MetricsLog(Path outputDir, List<Map<String, Object>> history) {
        this.file = outputDir.resolve(FILE);
        StringBuilder sb = new StringBuilder();
        for (Map<String, Object> e : history) sb.append(TrainJson.line(e)).append('\n');
        TrainJson.writeAtomically(file, sb.toString().getBytes(StandardCharsets.UTF_8));
        try {
            out = Files.newBufferedWriter(file, StandardCharsets.UTF_8, StandardOpenOption.APPEND);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot open " + file + " for appending: " + e.getMessage(), e);
        }
    }

    Path file() { return file; }

    void append(Map<String, Object> entry) {
        try {
            out.write(TrainJson.line(entry));
            out.write('\n');
            out.flush();
        } catch (IOException e) {
            throw new UncheckedIOException("cannot append to " + file + " (" + e + "); check free disk space", e);
        }
    }

    @Override
    public void close() {
        try {
            if (out != null) out.close();
        } catch (IOException ignored) {
            // every line was flushed when written
        }
        out = null;
    }
}
