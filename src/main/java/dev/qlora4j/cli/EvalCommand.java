package dev.qlora4j.cli;

import com.fasterxml.jackson.databind.JsonNode;
import dev.qlora4j.CausalLM;
import dev.qlora4j.infer.LossEvaluator.LossSum;
import dev.qlora4j.infer.SamplingParams;
import dev.qlora4j.infer.metrics.GenerationDataset;
import dev.qlora4j.infer.metrics.GenerationEvaluation;
import dev.qlora4j.infer.metrics.GenerationEvaluator;
import dev.qlora4j.infer.metrics.GenerationExample;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;

/**
 * qlora4j eval: loss and perplexity of a JSONL file of {"text": ...} lines, each encoded on its
 * own (with BOS as the tokenizer adds it); the loss is averaged over all predicted tokens of the file.
 *
 * <p>With --generate: answers generated for {"prompt", "reference"} or {"messages"} lines (see
 * {@link GenerationDataset}), scored by exact match and sacreBLEU-compatible BLEU. Decoding is
 * greedy with no repetition penalty unless flags ask otherwise: generation_config.json's sampling
 * settings are not applied, so scores are reproducible and comparable between models.
 */
@Command(name = "eval", mixinStandardHelpOptions = true,
        description = {"Loss and perplexity on a JSONL file of {\"text\"} lines;",
                "with --generate, exact match and BLEU (sacreBLEU defaults) of generated answers."})
public final class EvalCommand implements Callable<Integer> {
    @Mixin ModelOptions modelOptions;
    @Mixin AdapterOptions adapterOptions;

    @Option(names = "--data", paramLabel = "FILE.jsonl", required = true,
            description = {"One {\"text\": ...} per line; with --generate {\"prompt\": ..., \"reference\": ...}",
                    "or {\"messages\": [...]} (the last, assistant, message is the reference)."})
    Path data;

    @Option(names = "--json", description = "Print one JSON object.") boolean json;

    @Option(names = "--generate", description = "Generate answers and report exact match and BLEU instead of the loss.")
    boolean generate;

    @Option(names = "--report", paramLabel = "FILE.jsonl",
            description = "With --generate: write prompt, reference, prediction, exact_match and sentence BLEU per example.")
    Path report;

    @Option(names = "--batch-size", paramLabel = "N", description = "With --generate: prompts generated together (default: 8).")
    Integer batchSize;

    @Option(names = "--max-new-tokens", paramLabel = "N",
            description = "With --generate: answer length limit (default: generation_config.json's max_new_tokens, else 128).")
    Integer maxNewTokens;

    @Option(names = "--min-new-tokens", paramLabel = "N", description = "With --generate: EOS is impossible before this many tokens.")
    Integer minNewTokens;

    @Option(names = "--temperature", description = "With --generate: sample at this temperature (default: greedy).") Double temperature;
    @Option(names = "--top-k", description = "With --generate: sample from the k most likely tokens.") Integer topK;
    @Option(names = "--top-p", description = "With --generate: nucleus sampling.") Double topP;
    @Option(names = "--repetition-penalty", description = "With --generate: default 1 (off).") Double repetitionPenalty;
    @Option(names = "--seed", description = "With --generate and sampling: example i uses seed + i (default: 0).") Long seed;
    @Option(names = "--stop", paramLabel = "TEXT", description = "With --generate: stop string; repeatable.") List<String> stops;

    @Override
    public Integer call() throws IOException {
        if (generate) return callGenerate();
        List<String> generateOnly = generateOnlyOptionsGiven();
        if (!generateOnly.isEmpty()) {
            throw new IllegalArgumentException(String.join(", ", generateOnly) + " only apply with --generate");
        }
        List<String> texts = readTexts(data);
        try (CausalLM lm = modelOptions.load()) {
            adapterOptions.apply(lm);
            LossSum total = new LossSum(0, 0);
            for (String t : texts) total = total.plus(lm.loss(lm.tokenizer().encode(t, true)));
            double loss = total.mean();
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("loss", loss);
            m.put("perplexity", Math.exp(loss));
            m.put("tokens", total.tokens());
            m.put("examples", texts.size());
            if (json) {
                System.out.println(Json.write(m));
            } else {
                System.out.printf("loss %.6f  perplexity %.4f  tokens %d  examples %d%n",
                        loss, Math.exp(loss), total.tokens(), texts.size());
            }
        }
        return 0;
    }

    private int callGenerate() throws IOException {
        List<GenerationExample> examples = GenerationDataset.read(data);
        int batch = batchSize != null ? batchSize : 8;
        if (batch < 1) throw new IllegalArgumentException("--batch-size must be >= 1, got " + batch);
        try (CausalLM lm = modelOptions.load()) {
            SamplingParams params = generationParams(lm.generationConfig().maxNewTokens());
            GenerationEvaluation ev = new GenerationEvaluator(lm, params, batch).evaluate(examples,
                    done -> System.err.printf("[eval] generated %d/%d%n", done, examples.size()));
            if (report != null) ev.writeReport(report);
            if (json) {
                Map<String, Object> m = ev.totalsJson();
                if (report != null) m.put("report", report.toString());
                System.out.println(Json.write(m));
            } else {
                System.out.printf(java.util.Locale.ROOT, "exact_match %.4f (%d/%d)%n", ev.exactMatch(), ev.exactMatches(),
                        ev.results().size());
                System.out.println(ev.bleu().format() + "  " + ev.bleuSignature());
                if (report != null) System.out.println("report: " + report);
            }
        }
        return 0;
    }

    /** Greedy, penalty-free decoding unless the flags ask for more; missing sampling values are transformers' defaults. */
    SamplingParams generationParams(Integer configMaxNewTokens) {
        int maxNew = maxNewTokens != null ? maxNewTokens : configMaxNewTokens != null ? configMaxNewTokens : 128;
        boolean sample = temperature != null || topK != null || topP != null;
        return new SamplingParams(maxNew, minNewTokens != null ? minNewTokens : 0, sample,
                temperature != null ? temperature : 1.0, topK != null ? topK : sample ? 50 : 0, topP != null ? topP : 1.0,
                repetitionPenalty != null ? repetitionPenalty : 1.0, seed != null ? seed : 0, stops);
    }

    private List<String> generateOnlyOptionsGiven() {
        List<String> given = new java.util.ArrayList<>();
        if (report != null) given.add("--report");
        if (batchSize != null) given.add("--batch-size");
        if (maxNewTokens != null) given.add("--max-new-tokens");
        if (minNewTokens != null) given.add("--min-new-tokens");
        if (temperature != null) given.add("--temperature");
        if (topK != null) given.add("--top-k");
        if (topP != null) given.add("--top-p");
        if (repetitionPenalty != null) given.add("--repetition-penalty");
        if (seed != null) given.add("--seed");
        if (stops != null) given.add("--stop");
        return given;
    }

    static List<String> readTexts(Path file) throws IOException {
        if (!Files.exists(file)) throw new IllegalArgumentException("data file " + file + " does not exist");
        List<String> lines = Files.readAllLines(file, StandardCharsets.UTF_8);
        java.util.ArrayList<String> texts = new java.util.ArrayList<>();
        for (int i = 0; i < lines.size(); i++) {
            String line = lines.get(i).strip();
            if (line.isEmpty()) continue;
            JsonNode n;
            try {
                n = Json.MAPPER.readTree(line);
            } catch (IOException e) {
                throw new IllegalArgumentException(file + " line " + (i + 1) + " is not valid JSON: " + e.getMessage().lines().findFirst().orElse(""));
            }
            if (n == null || !n.has("text") || !n.get("text").isTextual()) {
                boolean generationLine = n != null && (n.has("prompt") || n.has("messages"));
                throw new IllegalArgumentException(file + " line " + (i + 1) + " has no \"text\" string field"
                        + (generationLine ? ": prompt/reference and messages lines are scored with --generate" : ""));
            }
            texts.add(n.get("text").asText());
        }
        if (texts.isEmpty()) throw new IllegalArgumentException(file + " has no examples");
        return texts;
    }
}
