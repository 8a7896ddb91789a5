package dev.qlora4j.io.tokenizer;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The parts of tokenizer_config.json (plus chat_template.jinja / additional_chat_templates/,
 * transformers 5's layout) that encoding, decoding and chat formatting depend on.
 *
 * @param bosToken                   nullable; written as a string or an AddedToken object {"content": ...}
 * @param eosToken                   nullable
 * @param padToken                   nullable
 * @param unkToken                   nullable
 * @param addBosToken                null when the file does not say (then tokenizer.json's post-processor decides)
 * @param addEosToken                null when the file does not say
 * @param cleanUpTokenizationSpaces  transformers' clean_up_tokenization_spaces (default false)
 * @param modelMaxLength             nullable; transformers writes a huge sentinel (1e30) when unbounded
 * @param chatTemplates              name -> Jinja source; the unnamed template is "default"
 */
public record TokenizerConfig(String bosToken, String eosToken, String padToken, String unkToken,
                              Boolean addBosToken, Boolean addEosToken, boolean cleanUpTokenizationSpaces,
                              Long modelMaxLength, Map<String, String> chatTemplates) {

    public static final String DEFAULT_TEMPLATE = "default";
    private static final ObjectMapper JSON = new ObjectMapper();

    public TokenizerConfig {
        chatTemplates = Map.copyOf(chatTemplates);
    }

    /** No tokenizer_config.json: nothing special, no chat template. */
    public static TokenizerConfig empty() {
        return new TokenizerConfig(null, null, null, null, null, null, false, null, Map.of());
    }

    /**
     * Reads dir/tokenizer_config.json (optional), then dir/chat_template.jinja (wins over the
     * config's default template) and dir/additional_chat_templates/NAME.jinja.
     */
    public static TokenizerConfig load(Path dir) throws IOException {
        Path file = dir.resolve("tokenizer_config.json");
        TokenizerConfig c = Files.exists(file)
                ? parse(Files.readString(file, StandardCharsets.UTF_8), file.toString()) : empty();
        Map<String, String> templates = new LinkedHashMap<>(c.chatTemplates);
        Path jinja = dir.resolve("chat_template.jinja");
        if (Files.exists(jinja)) templates.put(DEFAULT_TEMPLATE, Files.readString(jinja, StandardCharsets.UTF_8));
        Path extra = dir.resolve("additional_chat_templates");
        if (Files.isDirectory(extra)) {
            try (var files = Files.list(extra)) {
                for (Path p : files.sorted().toList()) {
                    String name = p.getFileName().toString();
                    if (name.endsWith(".jinja")) {
                        templates.put(name.substring(0, name.length() - ".jinja".length()),
                                Files.readString(p, StandardCharsets.UTF_8));
                    }
                }
            }
        }
        return new TokenizerConfig(c.bosToken, c.eosToken, c.padToken, c.unkToken, c.addBosToken, c.addEosToken,
                c.cleanUpTokenizationSpaces, c.modelMaxLength, templates);
    }

    /** Parses tokenizer_config.json text; source names the file in error messages. */
    public static TokenizerConfig parse(String json, String source) {
        JsonNode n;
        try {
            n = JSON.readTree(json);
        } catch (JsonProcessingException e) {
            throw new IllegalArgumentException(source + " is not valid JSON: " + e.getOriginalMessage(), e);
        }
        if (n == null || !n.isObject()) throw new IllegalArgumentException(source + " must hold a JSON object");
        Map<String, String> templates = new LinkedHashMap<>();
        JsonNode t = n.get("chat_template");
        if (t != null && !t.isNull()) {
            if (t.isTextual()) {
                templates.put(DEFAULT_TEMPLATE, t.asText());
            } else if (t.isArray()) {
                for (JsonNode e : t) {
                    if (!e.hasNonNull("name") || !e.hasNonNull("template")) {
                        throw new IllegalArgumentException(source + ": every chat_template list entry needs"
                                + " \"name\" and \"template\", got " + e);
                    }
                    templates.put(e.get("name").asText(), e.get("template").asText());
                }
            } else {
                throw new IllegalArgumentException(source + ": chat_template must be a string or a list of"
                        + " {\"name\", \"template\"}, got " + t.getNodeType());
            }
        }
        Long maxLen = null;
        JsonNode m = n.get("model_max_length");
        if (m != null && m.isNumber()) maxLen = m.asDouble() >= Long.MAX_VALUE ? Long.MAX_VALUE : m.asLong();
        return new TokenizerConfig(token(n, "bos_token", source), token(n, "eos_token", source),
                token(n, "pad_token", source), token(n, "unk_token", source),
                optBool(n, "add_bos_token"), optBool(n, "add_eos_token"),
                n.path("clean_up_tokenization_spaces").asBoolean(false), maxLen, templates);
    }

    /** A special token written as "<s>" or as {"content": "<s>", "lstrip": false, ...}. */
    private static String token(JsonNode n, String key, String source) {
        JsonNode v = n.get(key);
        if (v == null || v.isNull()) return null;
        if (v.isTextual()) return v.asText();
        if (v.isObject() && v.hasNonNull("content")) return v.get("content").asText();
        throw new IllegalArgumentException(source + ": " + key + " must be a string or {\"content\": ...}, got " + v);
    }

    private static Boolean optBool(JsonNode n, String key) {
        JsonNode v = n.get(key);
        return v == null || v.isNull() ? null : v.asBoolean();
    }
}
