package dev.qlora4j.io.tokenizer;

import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Objects;

/** One chat turn as chat templates see it: {"role": ..., "content": ...}. */
public record ChatMessage(String role, String content) {
    public ChatMessage {
        Objects.requireNonNull(role, "role");
        Objects.requireNonNull(content, "content");
    }

    public static ChatMessage system(String content) { return new ChatMessage("system", content); }

    public static ChatMessage user(String content) { return new ChatMessage("user", content); }

    public static ChatMessage assistant(String content) { return new ChatMessage("assistant", content); }

    /** The dict a template indexes (message['role'], message.content). */
    Map<String, Object> toTemplateMap() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("role", role);
        m.put("content", content);
        return m;
    }
}
