package dev.qlora4j.infer.metrics;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.ObjectMapper;

import java.io.IOException;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The result of a generation eval: per-example results and the corpus totals.
 *
 * @param results       one per example, in file order
 * @param exactMatch    fraction of examples whose prediction matches a reference exactly (after strip)
 * @param bleu          corpus BLEU (sacreBLEU defaults) of all predictions
 * @param bleuSignature sacreBLEU's signature of that BLEU, without the version
 */
public record GenerationEvaluation(List<ExampleResult> results, double exactMatch, BleuScore bleu, String bleuSignature) {
    private static final ObjectMapper LINE = new ObjectMapper();

    public GenerationEvaluation {
        results = List.copyOf(results);
    }

    public int exactMatches() {
        int n = 0;
        for (ExampleResult r : results) if (r.exactMatch()) n++;
        return n;
    }

    /** examples, exact_match, exact_matches, bleu, counts, totals, precisions, bp, sys_len, ref_len, ratio, bleu_signature. */
    public Map<String, Object> totalsJson() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("examples", results.size());
        m.put("exact_match", exactMatch);
        m.put("exact_matches", exactMatches());
        m.putAll(bleu.toJson());
        m.put("bleu_signature", bleuSignature);
        return m;
    }

    /** Writes one JSON object per example (see {@link ExampleResult#toJson}) to file, atomically. */
    public void writeReport(Path file) throws IOException {
        Path abs = file.toAbsolutePath();
        if (abs.getParent() != null) Files.createDirectories(abs.getParent());
        Path tmp = Files.createTempFile(abs.getParent(), abs.getFileName().toString(), ".tmp");
        try {
            try (Writer w = Files.newBufferedWriter(tmp, StandardCharsets.UTF_8)) {
                for (ExampleResult r : results) {
                    w.write(line(r.toJson()));
                    w.write('\n');
                }
            }
            Files.move(tmp, abs, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        } finally {
            Files.deleteIfExists(tmp);
        }
    }

    private static String line(Object o) {
        try {
            return LINE.writeValueAsString(o);
        } catch (JsonProcessingException e) {
            throw new IllegalStateException(e);
        }
    }
}
