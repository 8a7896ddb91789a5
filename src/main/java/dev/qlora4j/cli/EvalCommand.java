package dev.qlora4j.cli;

import com.fasterxml.jackson.databind.JsonNode;
import dev.qlora4j.CausalLM;
import dev.qlora4j.infer.LossEvaluator.LossSum;
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
 */
@Command(name = "eval", mixinStandardHelpOptions = true, description = "Loss and perplexity on a JSONL file.")
public final class EvalCommand implements Callable<Integer> {
    @Mixin ModelOptions modelOptions;
    @Mixin AdapterOptions adapterOptions;

    @Option(names = "--data", paramLabel = "FILE.jsonl", required = true, description = "One {\"text\": ...} per line.")
    Path data;

    @Option(names = "--json", description = "Print one JSON object.") boolean json;

    @Override
    public Integer call() throws IOException {
        List<String> texts = readTexts(data);
        try (CausalLM lm = CausalLM.fromPretrained(modelOptions.modelDir(), modelOptions.loadOptions())) {
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
                throw new IllegalArgumentException(file + " line " + (i + 1) + " has no \"text\" string field");
            }
            texts.add(n.get("text").asText());
        }
        if (texts.isEmpty()) throw new IllegalArgumentException(file + " has no examples");
        return texts;
    }
}
