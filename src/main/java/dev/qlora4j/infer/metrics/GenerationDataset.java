package dev.qlora4j.infer.metrics;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.qlora4j.io.tokenizer.ChatMessage;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * Reads a generation-eval JSONL file, one example per line (blank lines skipped), each line in
 * one of these shapes:
 * <pre>
 * {"prompt": "...", "reference": "..."}            (reference: a string, or a list for several references)
 * {"prompt": "...", "completion": "..."}           (TRL's prompt-completion data: completion is the reference)
 * {"messages": [{"role": ..., "content": ...}, ..., {"role": "assistant", "content": "..."}]}
 * </pre>
 * For messages, the last message must be the assistant's: it is the reference, and the messages
 * before it are the prompt.
 */
public final class GenerationDataset {
    private static final ObjectMapper MAPPER = new ObjectMapper();
    private static final String SHAPES = "{\"prompt\": ..., \"reference\": ...} or {\"messages\": [..., {\"role\": \"assistant\", \"content\": ...}]}";

    private GenerationDataset() {}

    public static List<GenerationExample> read(Path file) throws IOException {
        if (!Files.isRegularFile(file)) {
            throw new IllegalArgumentException("data file " + file + " does not exist: pass a JSONL file of " + SHAPES);
        }
        List<String> lines = Files.readAllLines(file, StandardCharsets.UTF_8);
        List<GenerationExample> out = new ArrayList<>();
        for (int i = 0; i < lines.size(); i++) {
            String line = lines.get(i).strip();
            if (line.isEmpty()) continue;
            out.add(parse(line, file + " line " + (i + 1), i + 1));
        }
        if (out.isEmpty()) throw new IllegalArgumentException(file + " has no examples: add lines of " + SHAPES);
        return out;
    }

    /** One line; where names it in messages ("data.jsonl line 3"). */
    static GenerationExample parse(String json, String where, int line) {
        JsonNode n;
        try {
            n = MAPPER.readTree(json);
        } catch (IOException e) {
            throw new IllegalArgumentException(where + " is not valid JSON: " + e.getMessage().lines().findFirst().orElse(""));
        }
        if (n == null || !n.isObject()) throw new IllegalArgumentException(where + " is not a JSON object: expected " + SHAPES);
        if (n.has("messages")) return chat(n.get("messages"), where, line);
        if (n.has("prompt")) {
            JsonNode p = n.get("prompt");
            if (!p.isTextual()) throw new IllegalArgumentException(where + ": \"prompt\" must be a string");
            if (p.asText().isEmpty()) throw new IllegalArgumentException(where + ": \"prompt\" is empty");
            return GenerationExample.text(line, p.asText(), references(n, where));
        }
        List<String> keys = new ArrayList<>();
        n.fieldNames().forEachRemaining(keys::add);
        throw new IllegalArgumentException(where + " has keys " + keys + " but needs " + SHAPES
                + " (loss-only {\"text\"} files are for eval without --generate)");
    }

    private static List<String> references(JsonNode n, String where) {
        JsonNode r = n.has("reference") ? n.get("reference") : n.get("completion");
        if (r == null) {
            throw new IllegalArgumentException(where + " has a \"prompt\" but no \"reference\" (or \"completion\"): add the expected answer");
        }
        List<String> refs = new ArrayList<>();
        if (r.isTextual()) {
            refs.add(r.asText());
        } else if (r.isArray()) {
            for (JsonNode x : r) {
                if (!x.isTextual()) throw new IllegalArgumentException(where + ": \"reference\" list must hold strings, got " + x);
                refs.add(x.asText());
            }
        } else {
            throw new IllegalArgumentException(where + ": \"reference\" must be a string or a list of strings, got " + r);
        }
        // sacreBLEU drops empty references and refuses a segment left with none
        refs.removeIf(String::isEmpty);
        if (refs.isEmpty()) throw new IllegalArgumentException(where + ": the reference is empty; BLEU needs a non-empty one");
        return refs;
    }

    private static GenerationExample chat(JsonNode arr, String where, int line) {
        if (!arr.isArray() || arr.size() < 2) {
            throw new IllegalArgumentException(where + ": \"messages\" must be an array of at least two {\"role\", \"content\"}"
                    + " objects, ending with the assistant's reference answer");
        }
        List<ChatMessage> msgs = new ArrayList<>();
        for (int k = 0; k < arr.size(); k++) {
            JsonNode m = arr.get(k);
            JsonNode role = m.get("role"), content = m.get("content");
            if (!m.isObject() || role == null || !role.isTextual() || content == null || !content.isTextual()) {
                throw new IllegalArgumentException(where + ": messages[" + k
                        + "] must be {\"role\": \"user\"|\"assistant\"|\"system\", \"content\": \"...\"} with string values, got " + m);
            }
            msgs.add(new ChatMessage(role.asText(), content.asText()));
        }
        ChatMessage last = msgs.getLast();
        if (!last.role().equals("assistant")) {
            throw new IllegalArgumentException(where + ": the last message is \"" + last.role()
                    + "\", but it must be the assistant's reference answer");
        }
        if (last.content().isEmpty()) {
            throw new IllegalArgumentException(where + ": the last assistant message is empty; BLEU needs a non-empty reference");
        }
        return GenerationExample.chat(line, msgs.subList(0, msgs.size() - 1), last.content());
    }
}
