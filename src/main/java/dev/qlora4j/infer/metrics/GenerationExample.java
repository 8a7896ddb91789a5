package dev.qlora4j.infer.metrics;

import dev.qlora4j.io.tokenizer.ChatMessage;
import dev.qlora4j.io.tokenizer.Tokenizer;

import java.util.List;

/**
 * One line of a generation-eval file: a prompt (plain text, or a chat history the model answers)
 * and the reference answer(s).
 *
 * @param line       1-based line in the file, for messages and the report
 * @param prompt     plain-text prompt, encoded as tokenizer(prompt) (BOS as the tokenizer adds it); null for chat
 * @param history    chat turns before the reference answer; null for a plain prompt
 * @param references one or more non-empty reference answers
 */
public record GenerationExample(int line, String prompt, List<ChatMessage> history, List<String> references) {
    public GenerationExample {
        if ((prompt == null) == (history == null)) {
            throw new IllegalArgumentException("line " + line + ": give either a prompt or a chat history");
        }
        history = history == null ? null : List.copyOf(history);
        references = List.copyOf(references);
        if (references.isEmpty()) throw new IllegalArgumentException("line " + line + ": no reference answer");
    }

    public static GenerationExample text(int line, String prompt, List<String> references) {
        return new GenerationExample(line, prompt, null, references);
    }

    public static GenerationExample chat(int line, List<ChatMessage> history, String reference) {
        return new GenerationExample(line, null, history, List.of(reference));
    }

    public boolean isChat() {
        return history != null;
    }

    /** The text the model continues: the prompt, or the chat template over the history with the generation prompt. */
    public String promptText(Tokenizer tokenizer) {
        return isChat() ? tokenizer.chatTemplate().render(history, true) : prompt;
    }

    /**
     * The prompt's token ids. A chat is tokenized without adding special tokens, as
     * apply_chat_template does (the template writes them), and as training encodes chats.
     */
    public int[] promptIds(Tokenizer tokenizer) {
        return tokenizer.encode(promptText(tokenizer), !isChat());
    }
}
