package dev.qlora4j.train;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.qlora4j.io.tokenizer.ChatMessage;
import dev.qlora4j.io.tokenizer.Tokenizer;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.function.Consumer;

/**
 * A JSONL dataset in one of TRL's formats (one JSON object per line, blank lines skipped; the
 * first line decides the format and every line must follow it):
 * <pre>
 * {"text": "..."}
 * {"prompt": "...", "completion": "..."}
 * {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}
 * </pre>
 * Encoding is {@link ExampleEncoder}'s; examples longer than max_seq_length keep their first
 * max_seq_length tokens. An example left with no trained token (a prompt filling the whole
 * length, a chat without an assistant turn) is an error naming its line.
 */
public final class JsonlDataset {
    public enum Format {
        TEXT("{\"text\": ...}"), PROMPT_COMPLETION("{\"prompt\": ..., \"completion\": ...}"), MESSAGES("{\"messages\": [{\"role\": ..., \"content\": ...}, ...]}");

        private final String shape;

        Format(String shape) { this.shape = shape; }

        public String shape() { return shape; }
    }

    private static final ObjectMapper MAPPER = new ObjectMapper();

    private final String source;
    private final Format format;
    private final List<Example> examples;
    private final int truncated;

    private JsonlDataset(String source, Format format, List<Example> examples, int truncated) {
        this.source = source;
        this.format = format;
        this.examples = List.copyOf(examples);
        this.truncated = truncated;
    }

    /** Reads and encodes {@code file}; notes (how many examples were truncated) go to {@code notes}. */
    public static JsonlDataset load(Path file, Tokenizer tokenizer, int maxSeqLength, boolean completionOnlyLoss,
                                    boolean assistantOnlyLoss, Consumer<String> notes) {
        if (!Files.isRegularFile(file)) {
            throw new IllegalArgumentException("data file " + file + " does not exist: pass a JSONL file with one example per line");
        }
        List<String> lines;
        try {
            lines = Files.readAllLines(file, StandardCharsets.UTF_8);
        } catch (java.nio.charset.MalformedInputException e) {
            throw new IllegalArgumentException(file + " is not UTF-8 text: save it as UTF-8 JSONL");
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read " + file + ": " + e.getMessage(), e);
        }
        return fromLines(file.toString(), lines, new ExampleEncoder(tokenizer, completionOnlyLoss, assistantOnlyLoss), maxSeqLength, notes);
    }

    /** As {@link #load} from lines already read; {@code source} names them in messages. */
    public static JsonlDataset fromLines(String source, List<String> lines, ExampleEncoder encoder, int maxSeqLength,
                                         Consumer<String> notes) {
        Format format = null;
        int formatLine = 0;
        List<Example> out = new ArrayList<>();
        List<Integer> untrainable = new ArrayList<>();
        int truncated = 0;
        for (int i = 0; i < lines.size(); i++) {
            String line = lines.get(i).strip();
            if (line.isEmpty()) continue;
            int no = i + 1;
            JsonNode n;
            try {
                n = MAPPER.readTree(line);
            } catch (IOException e) {
                throw new IllegalArgumentException(where(source, no) + " is not valid JSON ("
                        + e.getMessage().lines().findFirst().orElse("") + "); each line must be one JSON object such as "
                        + Format.TEXT.shape());
            }
            if (n == null || !n.isObject()) {
                throw new IllegalArgumentException(where(source, no) + " is not a JSON object; each line must be one of "
                        + Format.TEXT.shape() + ", " + Format.PROMPT_COMPLETION.shape() + ", " + Format.MESSAGES.shape());
            }
            Format f = detect(n, source, no);
            if (format == null) {
                format = f;
                formatLine = no;
            } else if (f != format) {
                throw new IllegalArgumentException(where(source, no) + " is " + f.shape() + " but line " + formatLine + " is "
                        + format.shape() + ": one file holds one format; split it or convert the lines");
            }
            Example e;
            try {
                e = switch (f) {
                    case TEXT -> encoder.text(string(n, "text", source, no), no);
                    case PROMPT_COMPLETION -> encoder.promptCompletion(string(n, "prompt", source, no), string(n, "completion", source, no), no);
                    case MESSAGES -> encoder.messages(messages(n, source, no), no);
                };
            } catch (IllegalArgumentException | IllegalStateException ex) {
                throw new IllegalArgumentException(where(source, no) + ": " + ex.getMessage(), ex);
            }
            if (e.length() > maxSeqLength) {
                e = e.truncate(maxSeqLength);
                truncated++;
            }
            if (e.trainedTokens() == 0) {
                untrainable.add(no);
                continue;
            }
            out.add(e);
        }
        if (format == null) {
            throw new IllegalArgumentException(source + " has no examples: write one JSON object per line, e.g. " + Format.TEXT.shape());
        }
        if (!untrainable.isEmpty()) {
            throw new IllegalArgumentException(source + ": " + untrainable.size() + " example(s) have no token to train on, at line(s) "
                    + untrainable.subList(0, Math.min(10, untrainable.size())) + (untrainable.size() > 10 ? " ..." : "") + ": "
                    + switch (format) {
                        case TEXT -> "the text is empty; remove these lines";
                        case PROMPT_COMPLETION -> "the prompt fills max_seq_length (" + maxSeqLength
                                + " tokens) so no completion token is left; raise max_seq_length or shorten the prompts";
                        case MESSAGES -> "no assistant turn lies within the first max_seq_length (" + maxSeqLength
                                + ") tokens; add an assistant message, raise max_seq_length, or set assistant_only_loss false";
                    });
        }
        if (truncated > 0 && notes != null) {
            notes.accept(source + ": " + truncated + " of " + out.size() + " examples were longer than max_seq_length "
                    + maxSeqLength + " and keep only their first " + maxSeqLength + " tokens");
        }
        return new JsonlDataset(source, format, out, truncated);
    }

    private static String where(String source, int line) {
        return source + " line " + line;
    }

    private static Format detect(JsonNode n, String source, int no) {
        if (n.has("messages")) return Format.MESSAGES;
        if (n.has("prompt") || n.has("completion")) {
            if (!n.has("prompt") || !n.has("completion")) {
                throw new IllegalArgumentException(where(source, no) + " has \"" + (n.has("prompt") ? "prompt" : "completion")
                        + "\" without \"" + (n.has("prompt") ? "completion" : "prompt") + "\": the format is " + Format.PROMPT_COMPLETION.shape());
            }
            return Format.PROMPT_COMPLETION;
        }
        if (n.has("text")) return Format.TEXT;
        List<String> keys = new ArrayList<>();
        n.fieldNames().forEachRemaining(keys::add);
        throw new IllegalArgumentException(where(source, no) + " has keys " + keys + " but needs one of " + Format.TEXT.shape()
                + ", " + Format.PROMPT_COMPLETION.shape() + ", " + Format.MESSAGES.shape() + ": rename the fields");
    }

    private static String string(JsonNode n, String key, String source, int no) {
        JsonNode v = n.get(key);
        if (v == null || !v.isTextual()) {
            throw new IllegalArgumentException(where(source, no) + ": \"" + key + "\" must be a string, got "
                    + (v == null ? "nothing" : v.getNodeType().toString().toLowerCase(java.util.Locale.ROOT)));
        }
        return v.asText();
    }

    private static List<ChatMessage> messages(JsonNode n, String source, int no) {
        JsonNode arr = n.get("messages");
        if (arr == null || !arr.isArray() || arr.isEmpty()) {
            throw new IllegalArgumentException(where(source, no) + ": \"messages\" must be a non-empty array of {\"role\": ..., \"content\": ...}");
        }
        List<ChatMessage> out = new ArrayList<>();
        Iterator<JsonNode> it = arr.elements();
        for (int k = 0; it.hasNext(); k++) {
            JsonNode m = it.next();
            JsonNode role = m.get("role"), content = m.get("content");
            if (!m.isObject() || role == null || !role.isTextual() || content == null || !content.isTextual()) {
                throw new IllegalArgumentException(where(source, no) + ": messages[" + k
                        + "] must be {\"role\": \"user\"|\"assistant\"|\"system\", \"content\": \"...\"} with string values, got " + m);
            }
            out.add(new ChatMessage(role.asText(), content.asText()));
        }
        return out;
    }

    public String source() { return source; }

    public Format format() { return format; }

    public List<Example> examples() { return examples; }

    public int size() { return examples.size(); }

    /** Examples cut to max_seq_length. */
    public int truncated() { return truncated; }

    /** Tokens the loss counts, over all examples. */
    public long trainedTokens() {
        long n = 0;
        for (Example e : examples) n += e.trainedTokens();
        return n;
    }
}
